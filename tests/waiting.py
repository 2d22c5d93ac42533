"""Waiting on states, never on the clock: bounded polls, gates, the loop asleep.

A test that sleeps "long enough" fails on a slow machine and passes by luck on a fast one;
these helpers wait for the state itself, and their deadlines are generous: they only run
out when something is really wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tests.remote import by_value

# Seconds a gated task waits for its gate before it gives up (and says so in its result).
GATE_SECONDS = 60.0
# What a gated task returns when its gate never opened.
GATE_NEVER_OPENED = "the gate never opened"


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``predicate`` (bounded) until it is true; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


async def async_wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """:func:`wait_for` inside an event loop: the loop goes on between polls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.01)


def loop_asleep(executor: Any) -> bool:
    """Whether the executor's loop thread sleeps in ``epoll_wait`` right now (it holds its
    idle lock at all other times; see ``LoopThread``)."""
    return not executor.scheduler.loop_thread.idle_lock.locked()


@by_value
def gated(gate: str, value: Any = None) -> Any:
    """A task that waits until the file ``gate`` exists, then returns ``value``.

    Returns ``GATE_NEVER_OPENED`` if the gate stays shut for ``GATE_SECONDS`` (the
    constants are spelled out: the function travels by value, without this module)."""
    import os
    import time

    deadline = time.monotonic() + 60.0
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            return "the gate never opened"
        time.sleep(0.01)
    return value


@by_value
def marked_nap(marker: str, seconds: float, value: Any = None) -> Any:
    """A task that creates the file ``marker`` as it starts, then sleeps ``seconds``."""
    import pathlib
    import time

    pathlib.Path(marker).touch()
    time.sleep(seconds)
    return value
