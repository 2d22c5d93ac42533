"""A task's inputs: other tasks' results, filled into its arguments on the node.

A task given futures as arguments travels as a call of :class:`WithInputs` (its function
wrapped) with the task's own arguments still pickled, each future a placeholder, and the
inputs' result pickles attached as they came from their nodes::

    client:  args ─ pickle, each future ─► input_ref(i)       (placeholders, no values)
             inputs' result bytes (never unpickled here) ─┐
    node:    WithInputs(fn)(kind, codec, payload, buffers, inputs)
             └─ loads each input, then the arguments: input_ref(i) ─► value i ─► fn(...)

Used on both sides; shipped in the node bundle: stdlib + dill only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import DependencyError
from .protocol import ARGS, CALL, Buffer
from .serialize import loads

# One input's result as it came from its node: (codec, payload, out-of-band buffers).
RawResult = tuple[int, Buffer, tuple[Buffer, ...]]

_filling = threading.local()


def input_ref(index: int) -> Any:
    """The value of input ``index`` while :class:`WithInputs` loads a task's arguments.

    A future in a task's arguments pickles as a call of this function (see
    ``cluster.dependencies.TaskFuture``), so unpickling the arguments fills them in.
    """
    values: list[Any] | None = getattr(_filling, "values", None)
    if values is None:
        raise RuntimeError("an input placeholder was unpickled outside of its task")
    return values[index]


def given(value: Any) -> Any:
    """``value`` itself: a future that was done when its task was submitted pickles as a
    call of this with its result (pickled in the submitting thread, not the loop's)."""
    return value


class WithInputs:
    """A task's function, called once its inputs are filled into its arguments."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(
        self,
        kind: int,
        codec: int,
        payload: Buffer,
        buffers: tuple[Buffer, ...],
        inputs: Sequence[RawResult],
    ) -> Any:
        """Load the inputs, then the arguments with them in place, then call."""
        _filling.values = [loads(*raw) for raw in inputs]
        try:
            arguments = loads(codec, payload, buffers)
        finally:
            _filling.values = None
        if kind == CALL:
            args, kwargs = arguments
            return self.fn(*args, **kwargs)
        if kind == ARGS:
            return self.fn(*arguments)
        return [self.fn(*args) for args in arguments]

    def __reduce__(self) -> tuple[Any, ...]:
        return WithInputs, (self.fn,)


def upstream_failed(reason: str) -> None:
    """Raise, as a stored argument whose referred result failed is unpickled on the node
    (``projects.refs``): that argument then fails with ``reason``."""
    raise DependencyError(reason)
