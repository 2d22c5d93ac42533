"""``map`` without a ``Future`` per call: its results in order, from slots and one condition.

``Executor.map`` hands out an iterator, never its futures, so a call needs no lock,
condition and callback list of its own (a ``Future`` costs ~4 µs of the ~30 µs a tiny call
costs the client). Each call carries a :class:`MapSlot`; the consumer sleeps on the map's
one :class:`MapWaiter`, and only the slot it waits for wakes it::

    kernel thread (the iterator)              loop thread (scheduler)
    ────────────────────────────              ───────────────────────
    slot done? yes ─► value                   slot.set_result(value)
               no ─► waiter.slot = slot ─────►   waiter.slot is slot? ─► notify
                     wait on the condition

The consumer names its slot and checks it under the condition's lock; the loop thread
sets the slot, then reads the name: under the GIL one of the two sees the other's write,
so a wake-up is never lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any

from .tasks import CANCELLED, FINISHED, ResultSlot


class MapWaiter:
    """Where a map's consumer sleeps, and the slot it waits for."""

    __slots__ = ("condition", "slot")

    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.slot: MapSlot | None = None


class MapSlot(ResultSlot):
    """A :class:`ResultSlot` that wakes its map's consumer when it is the one awaited."""

    __slots__ = ("waiter",)

    def __init__(self, waiter: MapWaiter) -> None:
        super().__init__()
        self.waiter = waiter

    def set_result(self, value: Any) -> None:
        """The call returned ``value``."""
        self.value = value
        self.state = FINISHED
        self._wake()

    def set_exception(self, error: BaseException) -> None:
        """The call failed with ``error``."""
        self.error = error
        self.state = FINISHED
        self._wake()

    def cancel(self) -> bool:
        """Cancel unless running or finished; ``True`` when cancelled."""
        cancelled = super().cancel()
        if cancelled:
            self._wake()
        return cancelled

    def outcome(self) -> Any:
        """The value, or raise the call's error (``CancelledError`` when cancelled)."""
        if self.state == CANCELLED:
            raise CancelledError()
        if self.error is not None:
            raise self.error
        return self.value

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter.slot is self:
            with waiter.condition:
                waiter.condition.notify()


def results_in_order(
    slots: list[MapSlot], waiter: MapWaiter, end_time: float | None, *, chunked: bool
) -> Iterator[Any]:
    """Yield each slot's value in order (a chunk's values one by one), waiting as needed.

    Raises:
        TimeoutError: ``end_time`` (monotonic) passed before a value was there.
        Exception: a call's own error, at its place in the order.
    On the way out (done, error, timeout or the iterator dropped) the calls not run yet
    are cancelled, as ``concurrent.futures`` does. A value handed out is no longer held
    here: it is freed when the caller drops it, as ``concurrent.futures`` frees it.
    """
    slots.reverse()
    try:
        while slots:
            values = _take(slots.pop(), waiter, end_time, chunked)
            if chunked:
                values.reverse()
                while values:
                    yield values.pop()
            else:
                yield values.pop()
    finally:
        for slot in slots:
            slot.cancel()


def _take(slot: MapSlot, waiter: MapWaiter, end_time: float | None, chunked: bool) -> list[Any]:
    """The slot's outcome once it is there, as a list (a chunk's values, or a call's value
    alone) that only the caller holds: the slot lets go of it."""
    if not slot.done():
        _wait(slot, waiter, end_time)
    outcome = slot.outcome()
    slot.value = None
    return outcome if chunked else [outcome]  # type: ignore[no-any-return]


def _wait(slot: MapSlot, waiter: MapWaiter, end_time: float | None) -> None:
    with waiter.condition:
        waiter.slot = slot
        try:
            while not slot.done():
                remaining = None if end_time is None else end_time - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise FuturesTimeoutError()
                waiter.condition.wait(remaining)
        finally:
            waiter.slot = None


__all__ = ["MapSlot", "MapWaiter", "results_in_order"]
