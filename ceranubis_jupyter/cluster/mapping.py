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

import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass
from typing import Any

from ..wire import protocol as p
from ..wire.serialize import loads
from .outcomes import unpickled_result_of
from .tasks import CANCELLED, FINISHED, ResultSlot, TaskRecord

# A map's calls queued at once: one lock and one wake-up each, and the first ones reach
# the nodes while the rest are still being serialized.
MAP_BATCH = 256
# With a buffersize, refill once 1/this of the buffer is free (batched submits; a smaller
# fraction keeps the buffer fuller at the cost of more, smaller submits).
REFILL_FRACTION = 4
# Bytes of a map's result, at most, kept as its pickle until taken (``lazy_results``):
# a chunk of small values is a fifth of its objects' size; a big pickle would be copied.
LAZY_RESULT_LIMIT = 1 << 16


@dataclass(frozen=True, slots=True)
class Pickled:
    """A result as it came: codec, its own copy of the pickle, and the error to raise
    instead when it does not unpickle here (given what unpickling raised)."""

    codec: int
    payload: bytes
    failure: Callable[[Exception], BaseException]


def pickled_result(result: p.Result, host: str, record: TaskRecord) -> Pickled | None:
    """A chunk's small in-band result as its own copy of its pickle (the ``lazy_results``
    fast path), or ``None`` for a result to unpickle now. Only a chunk's: a single call's
    small value takes no more room than its pickle would."""
    if record.kind != p.CHUNK or result.buffers or len(result.payload) > LAZY_RESULT_LIMIT:
        return None
    failure = functools.partial(unpickled_result_of, host, record.task_id)
    return Pickled(result.codec, bytes(result.payload), failure)


class MapWaiter:
    """Where a map's consumer sleeps, and the slot it waits for."""

    __slots__ = ("condition", "reading", "slot")

    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.slot: MapSlot | None = None
        self.reading = False  # the consumer reads the iterable and queues calls


class MapSlot(ResultSlot):
    """A :class:`ResultSlot` that wakes its map's consumer when it is the one awaited.

    A result may be set as its pickle (:meth:`set_pickled`): the consumer unpickles it
    when it takes it, so results that wait to be taken hold their compact bytes.
    """

    __slots__ = ("pickled", "waiter")

    def __init__(self, waiter: MapWaiter) -> None:
        super().__init__()
        self.waiter = waiter
        self.pickled: Pickled | None = None

    def unawaited(self) -> bool:
        """Whether the map's consumer is still reading its iterable and queueing calls
        (``map()`` without ``buffersize`` reads it all): results that come back meanwhile
        wait, so they are worth keeping as their compact pickle. Once it takes results,
        the loop thread unpickles them as before (measured: faster, as the consumer does
        not compete with the loop thread for the GIL)."""
        return self.waiter.reading

    def set_pickled(self, pickled: Pickled) -> None:
        """The call returned the value ``pickled`` holds (unpickled when taken)."""
        self.pickled = pickled
        self.state = FINISHED
        self._wake()

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
        if self.pickled is not None:
            pickled, self.pickled = self.pickled, None
            try:
                self.value = loads(pickled.codec, pickled.payload)
            except Exception as error:
                self.error = pickled.failure(error)
        if self.error is not None:
            raise self.error
        return self.value

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter.slot is self:
            with waiter.condition:
                waiter.condition.notify()


def results_in_order(
    slots: deque[MapSlot],
    waiter: MapWaiter,
    end_time: float | None,
    *,
    chunked: bool,
    refill: MapRefill | None = None,
) -> Iterator[Any]:
    """Yield each slot's value in order (a chunk's values one by one), waiting as needed.

    With ``refill``, the calls not read yet are read and queued as earlier ones are
    handed out (never more than its ``buffersize`` not handed out).

    Raises:
        TimeoutError: ``end_time`` (monotonic) passed before a value was there.
        Exception: a call's own error, at its place in the order, or the iterable's.
    On the way out (done, error, timeout or the iterator dropped) the calls not run yet
    are cancelled, as ``concurrent.futures`` does. A value handed out is no longer held
    here: it is freed when the caller drops it, as ``concurrent.futures`` frees it.
    """
    try:
        while True:
            if refill is not None:
                refill.top_up(slots)
            if not slots:
                return
            values = _take(slots.popleft(), waiter, end_time, chunked)
            if chunked:
                values.reverse()
                while values:
                    yield values.pop()
            else:
                yield values.pop()
    finally:
        for slot in slots:
            slot.cancel()


class MapFeeder:
    """Reads a map's calls from its iterable and queues them, ``MAP_BATCH`` at a time.

    Args:
        calls: the calls (argument tuples, or chunks of them), read only as needed.
        chunked: each call is a chunk (a list of calls).
        waiter: the map's waiter, which every slot wakes.
        make: a call's task record for ``slot`` (numbering its first call), or ``None``
            when its arguments would not travel (the slot then holds the reason).
        submit: queues records (one lock and one wake-up per batch).
    """

    def __init__(
        self,
        calls: Iterator[Any],
        chunked: bool,
        waiter: MapWaiter,
        make: Callable[[Any, MapSlot, int], TaskRecord | None],
        submit: Callable[[list[TaskRecord]], None],
    ) -> None:
        self.calls, self.chunked, self.waiter = calls, chunked, waiter
        self.make, self.submit = make, submit
        self.first_call = 1

    def feed(self, count: int) -> list[MapSlot]:
        """Read up to ``count`` calls, queue them; their slots (fewer once it runs out)."""
        slots: list[MapSlot] = []
        batch: list[TaskRecord] = []
        self.waiter.reading = True
        try:
            self._feed(count, slots, batch)
        finally:
            self.waiter.reading = False
        return slots

    def _feed(self, count: int, slots: list[MapSlot], batch: list[TaskRecord]) -> None:
        for call in itertools.islice(self.calls, count):
            slot = MapSlot(self.waiter)
            record = self.make(call, slot, self.first_call)
            self.first_call += len(call) if self.chunked else 1
            slots.append(slot)
            if record is not None:
                batch.append(record)
            if len(batch) == MAP_BATCH:
                self.submit(batch)
                batch = []
        if batch:
            self.submit(batch)


class MapRefill:
    """Keeps at most ``buffersize`` of a map's calls queued and not handed out
    (``Executor.map(buffersize=...)`` of Python 3.14), reading its iterable lazily."""

    __slots__ = ("exhausted", "feeder", "limit", "step")

    def __init__(self, feeder: MapFeeder, buffersize: int) -> None:
        self.feeder, self.limit, self.exhausted = feeder, buffersize, False
        # Top up once this many places are free: one submit per batch, not per call.
        self.step = max(1, min(MAP_BATCH, buffersize // REFILL_FRACTION))

    def top_up(self, slots: deque[MapSlot]) -> None:
        """Read and queue calls until ``slots`` holds ``buffersize`` (or the end)."""
        room = self.limit - len(slots)
        if self.exhausted or (room < self.step and slots):
            return
        fresh = self.feeder.feed(room)
        self.exhausted = len(fresh) < room
        slots.extend(fresh)


def check_buffersize(buffersize: int | None) -> None:
    """As Python 3.14's ``Executor.map`` checks it.

    Raises:
        TypeError: not an int or ``None``.
        ValueError: below 1.
    """
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


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


__all__ = [
    "MAP_BATCH",
    "MapFeeder",
    "MapRefill",
    "MapSlot",
    "MapWaiter",
    "Pickled",
    "check_buffersize",
    "pickled_result",
    "results_in_order",
]
