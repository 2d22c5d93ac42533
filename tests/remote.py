"""Helpers for tests whose task functions must travel by value, as a notebook's do.

Functions defined in a test module would otherwise be pickled by reference, which works
for local nodes (they can import ``tests``) but not for nodes on a bare SSH host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def by_value(fn: F) -> F:
    """Make ``fn`` look like it was defined in ``__main__`` so dill ships its code."""
    fn.__module__ = "__main__"
    return fn


@by_value
def plus_one(x: int) -> int:
    """The tiny task of sequential round trips: ``x + 1``."""
    return x + 1


@by_value
def nap_then_plus_one(x: int) -> int:
    """A task longer than an inline wait or a spin (50 ms), then ``x + 1``."""
    import time

    time.sleep(0.05)
    return x + 1
