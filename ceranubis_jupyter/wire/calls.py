"""Batches of calls as one task (the joblib backend's batches), run on the node.

Shipped in the node bundle, so a batch needs nothing but its own functions on the host
(not joblib): the client unpacks joblib's batch into calls before it travels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# One call: (args, kwargs).
Call = tuple[tuple[Any, ...], dict[str, Any]]


def call_each(
    items: Sequence[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
) -> list[Any]:
    """Run ``(fn, args, kwargs)`` calls in order; their results."""
    return [fn(*args, **kwargs) for fn, args, kwargs in items]


class EachCall:
    """One function over a batch of calls: the function travels once per node (as a task
    function), the calls as plain arguments."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``fn`` on each ``(args, kwargs)``; their results."""
        fn = self.fn
        return [fn(*args, **kwargs) for args, kwargs in calls]

    def __reduce__(self) -> tuple[Any, ...]:
        return EachCall, (self.fn,)
