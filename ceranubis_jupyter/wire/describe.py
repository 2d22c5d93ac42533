"""How a message names a user's value, and which one will not pickle.

The client serializes user data on three paths: ``submit``, ``map`` (each call's
arguments, and the function) and a project's commit (its argument tuples and function).
When something there will not pickle, all three raise the same
:class:`~ceranubis_jupyter.errors.UnpicklableError` with the same words, built here: the
first argument that fails on its own, where it sits (``argument 2 of call 7``), a short
``repr`` of it and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import UnpicklableError
from .serialize import describe_failure, dumps

# Characters of a value's repr in a message or a table cell: enough to recognise it,
# short enough to keep the line readable.
REPR_LIMIT = 80
_ARGUMENT_ADVICE = "use plain data as arguments (or objects of classes defined at top level)"

# One call's arguments: (positional, keyword).
Call = tuple[tuple[Any, ...], Mapping[str, Any]]


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters (ending in ``...``); never raises."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def unpicklable_arguments(
    calls: Iterable[Call],
    error: BaseException,
    *,
    first_call: int = 1,
    task_id: int | None = None,
) -> UnpicklableError:
    """The error for calls whose arguments would not pickle together (``error``).

    Names the first argument that fails on its own, counting calls from ``first_call``;
    when none does alone, the whole of the first call that fails, else ``error`` itself.
    Slow (pickles each argument again): only for the path that already failed.
    """
    for number, (args, kwargs) in enumerate(calls, start=first_call):
        named = [(f"argument {i}", value) for i, value in enumerate(args, start=1)]
        named += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
        for label, value in named:
            reason = _pickling_error(value)
            if reason is not None:
                return UnpicklableError(
                    f"{label} of call {number} ({short_repr(value)}) cannot be pickled: "
                    f"{describe_failure(reason)}; {_ARGUMENT_ADVICE}",
                    task_id=task_id,
                )
        reason = _pickling_error((args, dict(kwargs)))
        if reason is not None:
            return UnpicklableError(
                f"the arguments of call {number} cannot be pickled: "
                f"{describe_failure(reason)}; {_ARGUMENT_ADVICE}",
                task_id=task_id,
            )
    return UnpicklableError(
        f"the arguments cannot be pickled: {describe_failure(error)}; {_ARGUMENT_ADVICE}",
        task_id=task_id,
    )


def unpicklable_function(fn: Callable[..., Any], error: BaseException) -> UnpicklableError:
    """The error for a function that dill could not serialize (``error``)."""
    name = getattr(fn, "__qualname__", None)
    shown = repr(name) if isinstance(name, str) else short_repr(fn)
    return UnpicklableError(
        f"the function {shown} cannot be serialized with dill: {describe_failure(error)}; "
        "define it at top level, using only globals that pickle"
    )


def _pickling_error(value: Any) -> Exception | None:
    try:
        dumps(value)
    except Exception as error:
        return error
    return None
