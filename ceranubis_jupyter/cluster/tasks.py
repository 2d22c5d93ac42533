"""The client's record of one task, from submit to result, and the queue of waiting ones."""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from ..wire import protocol as p
from ..wire.serialize import SCAN_LIMIT

# Default times a task is re-run after its worker or node died under it.
DEFAULT_RETRIES = 2

# A ResultSlot's states (as a Future's, minus the notified kinds).
PENDING, RUNNING, FINISHED, CANCELLED = "PENDING", "RUNNING", "FINISHED", "CANCELLED"


class ResultSlot:
    """A future's stand-in for a task nobody waits on in memory: a project's, whose outcome
    goes to the store.

    It has the five methods the scheduler calls on a future, without a future's lock,
    condition and callbacks (~4 µs of the ~30 µs a tiny task costs the client). The
    scheduler sets it in the loop thread right after it tells its listeners the task
    finished: a reader that finds it not done yet looks again later. It also keeps a
    result's bytes as they came (:attr:`blob`, in ``project_rows.encode`` form), so the
    store need not pickle the value again.
    """

    __slots__ = ("blob", "error", "state", "value")

    def __init__(self) -> None:
        self.state = PENDING
        self.value: Any = None
        self.error: BaseException | None = None
        self.blob: bytes | None = None

    def set_running_or_notify_cancel(self) -> bool:
        """``False`` when cancelled (do not run), else now running."""
        if self.state == CANCELLED:
            return False
        self.state = RUNNING
        return True

    def cancel(self) -> bool:
        """Cancel unless running or finished; ``True`` when cancelled."""
        if self.state == PENDING or self.state == CANCELLED:
            self.state = CANCELLED
            return True
        return False

    def done(self) -> bool:
        """Finished or cancelled."""
        return self.state == FINISHED or self.state == CANCELLED

    def set_result(self, value: Any) -> None:
        """The task returned ``value``."""
        self.value = value
        self.state = FINISHED

    def set_exception(self, error: BaseException) -> None:
        """The task failed with ``error``."""
        self.error = error
        self.state = FINISHED

    def keep_bytes(self, result: p.Result) -> None:
        """Keep the result's pickle, codec byte first, when it is one in-band payload the
        size the worker scanned for ``__main__`` (as ``project_rows.encode`` would make)."""
        if not result.buffers and len(result.payload) <= SCAN_LIMIT:
            self.blob = bytes((result.codec,)) + result.payload


def settle(future: Future[Any] | ResultSlot, value: Any) -> None:
    """Give ``future`` its result unless it is done (cancelled, or failed meanwhile: its
    first outcome stands). A future's lock is taken once: ``done()`` then ``set_result()``
    took it twice, on every result of the loop thread."""
    if isinstance(future, ResultSlot):
        if not future.done():  # a slot's set_result would overwrite
            future.set_result(value)
        return
    try:  # noqa: SIM105 - contextlib.suppress would make an object per result
        future.set_result(value)
    except InvalidStateError:
        pass


@dataclass(slots=True)
class Inputs:
    """What a dependent task waits for (``record.inputs`` until it is ready)."""

    kind: int
    futures: list[Future[Any]]
    task_ids: list[int]
    missing: int = 0


@dataclass(slots=True)
class TaskRecord:
    """A task as the client tracks it, from submit to result."""

    task_id: int
    future: Future[Any] | ResultSlot
    fn_id: int
    kind: int
    codec: int
    payload: p.Buffer
    buffers: tuple[p.Buffer, ...] = ()
    priority: int = 0
    timeout: float = 0.0
    retries: int = DEFAULT_RETRIES
    group: str | None = None
    attempts: int = 0
    dispatched: bool = False
    host: str | None = None
    started: float = 0.0
    finished: float = 0.0
    output: str = ""
    inputs: Inputs | None = None  # futures it waits for (see dependencies), until ready

    def __lt__(self, other: TaskRecord) -> bool:
        return self.task_id < other.task_id

    def as_task(self) -> p.Task:
        return p.Task(
            self.task_id,
            self.fn_id,
            self.kind,
            self.codec,
            self.payload,
            self.buffers,
            self.timeout,
        )


TaskListener = Callable[[TaskRecord], None]


@dataclass(frozen=True)
class InFlight:
    """A task on a node, as seen at one moment (see ``Scheduler.in_flight_threadsafe``)."""

    task_id: int
    host: str
    started: float  # time.monotonic() when it was sent to the node


# A queue entry: (-priority, task_id, record). Plain tuples compare in C; task ids are
# unique, so records themselves are never compared.
_Entry = tuple[int, int, TaskRecord]


class _Lane:
    """One group's waiting tasks, in pop order: a run of entries pushed in increasing order
    (a map's or a project's tasks come by rising task id at one priority: appended and
    popped in O(1), where a heap of 8,000 took ~0.4 µs more a task) and a heap for the
    others (re-queued, or of another priority)."""

    __slots__ = ("heap", "run")

    def __init__(self) -> None:
        self.run: collections.deque[_Entry] = collections.deque()
        self.heap: list[_Entry] = []

    def push(self, entry: _Entry) -> None:
        run = self.run
        if not run or run[-1] < entry:
            run.append(entry)
        else:
            heapq.heappush(self.heap, entry)

    def first(self) -> _Entry | None:
        """The lane's next entry (run or heap, whichever is first), or ``None``."""
        run, heap = self.run, self.heap
        if heap and (not run or heap[0] < run[0]):
            return heap[0]
        return run[0] if run else None

    def take(self, entry: _Entry) -> TaskRecord:
        """Pop ``entry``, which :meth:`first` just returned (no second comparison)."""
        if self.heap and self.heap[0] is entry:
            heapq.heappop(self.heap)
        else:
            self.run.popleft()
        return entry[2]

    def remove(self, predicate: Callable[[TaskRecord], bool]) -> list[TaskRecord]:
        """Take out every task for which ``predicate`` is true."""
        removed: list[TaskRecord] = []

        def kept(entry: _Entry) -> bool:
            if predicate(entry[2]):
                removed.append(entry[2])
                return False
            return True

        self.run = collections.deque(filter(kept, self.run))
        self.heap = list(filter(kept, self.heap))
        heapq.heapify(self.heap)
        return removed


class PendingQueue:
    """Tasks waiting for a node: highest priority first, then oldest; one lane per group.

    Keeping groups apart makes "the next task this host may run" a look at two lanes,
    however many tasks of other groups wait.
    """

    def __init__(self) -> None:
        self._lanes: dict[str | None, _Lane] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, record: TaskRecord) -> None:
        """Queue a task (again)."""
        lane = self._lanes.get(record.group)
        if lane is None:
            lane = self._lanes[record.group] = _Lane()
        lane.push((-record.priority, record.task_id, record))
        self._count += 1

    def pop_for(self, group: str | None) -> TaskRecord | None:
        """The next task a host of ``group`` may run, or ``None``."""
        lane = self._lanes.get(None)
        best = lane.first() if lane is not None else None
        if group is not None:
            own = self._lanes.get(group)
            head = own.first() if own is not None else None
            if head is not None and (best is None or head < best):
                lane, best = own, head
        if best is None or lane is None:
            return None
        self._count -= 1
        return lane.take(best)

    def remove(self, predicate: Callable[[TaskRecord], bool]) -> list[TaskRecord]:
        """Take out every task for which ``predicate`` is true."""
        removed: list[TaskRecord] = []
        for lane in self._lanes.values():
            removed += lane.remove(predicate)
        self._count -= len(removed)
        return removed
