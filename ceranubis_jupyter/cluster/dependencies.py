"""Tasks that wait for other tasks: futures given as arguments.

::

    submit(g, f1, [f2])  ─ pickle: f1, f2 are TaskFutures ─► FutureInArguments
        └─ with_inputs: pickle again collecting them ─► args with input_ref(0), input_ref(1)
           record.inputs = Inputs([f1, f2]); fn ─► WithInputs(g)      (kernel thread)

    loop thread (Dependencies):
      hold(record)       each unfinished input gets a Held entry; the record waits there
      keep(input, result)   an input succeeded: its result bytes as they came (never
                            unpickled here); a dependent with no input missing is ready
      finished(input)    any end; failed or cancelled inputs (once their futures are set)
                         fail dependents with DependencyError / cancel them
      ready(record)      payload = (kind, its args, the inputs' raw results) for WithInputs;
                         sent to the host that made its largest input if it has a free
                         worker, else queued as any task

A Held entry lives while some dependent still waits for it: the last one to take its bytes
(or to fail or be cancelled) drops it, so nothing stays behind once the DAG is done.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ConfigError, DependencyError, TaskTooLarge
from ..wire import protocol as p
from ..wire.describe import unpicklable_arguments
from ..wire.inputs import RawResult, WithInputs, given, input_ref
from ..wire.serialize import OUT_OF_BAND_BYTES, PICKLE_PROTOCOL, FutureInArguments, dumps
from .link import NodeLink
from .tasks import Inputs, PendingQueue, TaskRecord

# An input at least this big sends its dependent to the host that made it (when that host
# has a free worker); below it, any host will do: the bytes cost less than waiting.
AFFINITY_BYTES = 1 << 16
# Bytes of a ready dependent's frame that are not its arguments and inputs.
FRAME_OVERHEAD = 4096

_collecting = threading.local()


# concurrent.futures' state of a future that has its result or exception.
_FINISHED = "FINISHED"
# Called by a future before ``result()`` waits: may read its outcome in, in the waiting
# thread (``inline_receive``); given the future and the timeout.
InlineWaiter = Callable[[Future[Any], "float | None"], None]


class TaskFuture(Future[Any]):
    """The future :meth:`~.executor.NodeExecutor.submit` returns.

    Given as an argument (anywhere inside the arguments) to ``submit`` or ``map`` of its
    executor, it makes that task wait for it and pass its result instead. Before
    :meth:`result` waits, the executor's ``wait_inline`` may read the outcome in.
    """

    # Set by the executor that made it: its token (see ``NodeExecutor.task_id_of``), the
    # id of the task behind it, and what reads its outcome in before result() waits.
    owner: object = None
    task_id: int = 0
    wait_inline: InlineWaiter | None = None

    def result(self, timeout: float | None = None) -> Any:
        """As :meth:`Future.result`; see the class docstring."""
        wait_inline = self.wait_inline
        if wait_inline is not None and self._state != _FINISHED:
            started = time.monotonic()
            wait_inline(self, timeout)
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - started))
        return super().result(timeout)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        collected: dict[TaskFuture, int] | None = getattr(_collecting, "inputs", None)
        if collected is None:
            raise FutureInArguments(
                "a future of a ceranubis executor cannot be pickled; pass it to submit() "
                "or map() of its executor, which fill in its result"
            )
        ours = _collecting.task_id_of(self) is not None  # another's is refused, done or not
        if ours and self not in collected and _succeeded(self):  # its value goes in
            return given, (self.result(),)
        return input_ref, (collected.setdefault(self, len(collected)),)


def _succeeded(future: Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


@dataclass(slots=True)
class Held:
    """One input task as its dependents see it."""

    wanted: int = 0  # dependents that have not taken it yet
    waiters: list[TaskRecord] = field(default_factory=list)
    raw: RawResult | None = None
    size: int = 0
    host: str | None = None


def with_inputs(
    record: TaskRecord,
    fn: Callable[..., Any],
    arguments: Any,
    first_call: int,
    task_id_of: Callable[[Future[Any]], int | None],
    wrapped: WrappedIds,
) -> None:
    """Serialize a task's arguments with its futures as placeholders, and make ``record``
    a call of ``WithInputs(fn)`` that waits for them (kernel thread). When that fails
    (arguments that will not pickle, a future of another executor) its outcome is failed
    instead, and the record must not be queued."""
    collected: dict[TaskFuture, int] = {}
    _collecting.inputs, _collecting.task_id_of = collected, task_id_of
    try:
        codec, payload, buffers = dumps(arguments)
    except Exception as error:
        calls = [arguments] if record.kind == p.CALL else [(args, {}) for args in arguments]
        why = unpicklable_arguments(calls, error, first_call=first_call, task_id=record.task_id)
        record.future.set_exception(why)
        return
    finally:
        _collecting.inputs = None
    task_ids = [i for future in collected if (i := task_id_of(future)) is not None]
    if len(task_ids) < len(collected):
        record.future.set_exception(
            ConfigError(
                f"task {record.task_id} was given a future of another executor; pass "
                "futures only to the executor that made them (or pass their result)"
            )
        )
        return
    record.codec, record.payload = codec, payload
    record.buffers = tuple(buffer.raw() for buffer in buffers)
    if not collected:  # every future was done: their values are in the arguments
        return
    record.inputs = Inputs(record.kind, list(collected), task_ids)
    record.kind, record.fn_id = p.CALL, wrapped.id_of(record.fn_id, fn)


class WrappedIds:
    """The function id of ``WithInputs(fn)`` for each function id (made once each)."""

    def __init__(self, register: Callable[[Callable[..., Any]], int]) -> None:
        self._register = register
        self._ids: dict[int, int] = {}

    def id_of(self, fn_id: int, fn: Callable[..., Any]) -> int:
        """The id of ``fn`` (whose own id is ``fn_id``) wrapped to take inputs."""
        wrapped = self._ids.get(fn_id)
        if wrapped is None:
            wrapped = self._ids[fn_id] = self._register(WithInputs(fn))
        return wrapped


class DependencyOwner(Protocol):
    """What :class:`Dependencies` needs of the scheduler."""

    pending: PendingQueue
    links: list[NodeLink]
    functions: dict[int, bytes]
    max_data_frame: int

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def dispatch(self) -> None: ...

    def fail(self, record: TaskRecord, error: BaseException) -> None: ...

    def cancel_waiting(self, record: TaskRecord) -> None: ...


class Dependencies:
    """The scheduler's waiting dependents and held inputs (loop thread only)."""

    def __init__(self, scheduler: DependencyOwner) -> None:
        self._scheduler = scheduler
        self.held: dict[int, Held] = {}  # input task id -> entry; empty when nothing waits
        self.waiting: dict[int, TaskRecord] = {}  # dependent task id -> its record
        self._ended: list[TaskRecord] = []
        self._settle_scheduled = False

    def hold(self, record: TaskRecord) -> None:
        """A dependent arrived: wait for its unfinished inputs, or run it now."""
        inputs = record.inputs
        assert inputs is not None
        for task_id, future in zip(inputs.task_ids, inputs.futures, strict=True):
            held = self.held.get(task_id)
            if held is None:
                held = self.held[task_id] = self._entry_for(future)
            held.wanted += 1
            if held.raw is None:
                held.waiters.append(record)
                inputs.missing += 1
        self.waiting[record.task_id] = record
        if inputs.missing == 0:
            self._ready(record)
            self._scheduler.dispatch()
        elif any(future.done() for future in inputs.futures):
            self._note_ended([future_record(f, i) for f, i in _ended_inputs(inputs)])

    def _entry_for(self, future: Future[Any]) -> Held:
        """An entry for an input not yet held: one that finished before its dependent
        reached the loop takes its value from its future (pickled again: rare)."""
        held = Held()
        if future.done() and not future.cancelled() and future.exception() is None:
            codec, payload, buffers = dumps(future.result())
            held.raw = (codec, payload, tuple(b.raw() for b in buffers))
        return held

    def keep(self, record: TaskRecord, result: p.Result) -> None:
        """An input succeeded: keep its bytes while dependents want them; run the ready."""
        held = self.held.get(record.task_id)
        if held is None:
            return
        held.raw = (result.codec, result.payload, result.buffers)
        held.size = len(result.payload) + sum(memoryview(b).nbytes for b in result.buffers)
        held.host = record.host
        waiters, held.waiters = held.waiters, []
        for waiter in waiters:
            inputs = waiter.inputs
            if inputs is not None:
                inputs.missing -= 1
                if inputs.missing == 0:
                    self._ready(waiter)

    def finished(self, record: TaskRecord) -> None:
        """Any task ended; a held input that did not succeed is settled once its future is
        set (just after this call, in the same loop turn)."""
        held = self.held.get(record.task_id)
        if held is not None and held.raw is None:
            self._note_ended([record])

    def _note_ended(self, records: list[TaskRecord]) -> None:
        self._ended += records
        if not self._settle_scheduled:
            self._settle_scheduled = True
            self._scheduler.loop.call_soon(self._settle)

    def _settle(self) -> None:
        self._settle_scheduled = False
        ended, self._ended = self._ended, []
        for record in ended:
            held = self.held.get(record.task_id)
            future = record.future
            if held is None or held.raw is not None or not future.done():
                continue
            for waiter in held.waiters:
                if waiter.inputs is not None:  # not failed by another input already
                    self._give_up(waiter, record.task_id, future)

    def _give_up(self, record: TaskRecord, input_id: int, input_future: Any) -> None:
        """Fail or cancel a dependent whose input did not succeed."""
        self._forget(record)
        if input_future.cancelled():
            self._scheduler.cancel_waiting(record)
            return
        cause = input_future.exception()
        if isinstance(cause, CancelledError):
            self._scheduler.cancel_waiting(record)
            return
        error = DependencyError(
            f"task {record.task_id} did not run: its input task {input_id} failed with "
            f"{type(cause).__name__}: {cause}",
            task_id=record.task_id,
            input_task_id=input_id,
        )
        error.__cause__ = cause
        self._scheduler.fail(record, error)

    def _forget(self, record: TaskRecord) -> None:
        """``record`` no longer waits: release its claim on each input."""
        inputs = record.inputs
        assert inputs is not None
        record.inputs = None
        del self.waiting[record.task_id]
        for task_id in inputs.task_ids:
            held = self.held[task_id]
            if record in held.waiters:
                held.waiters.remove(record)
            held.wanted -= 1
            if held.wanted == 0:
                del self.held[task_id]

    def _ready(self, record: TaskRecord) -> None:
        """Every input of ``record`` succeeded: build its call and send or queue it."""
        inputs = record.inputs
        assert inputs is not None
        entries = [self.held[task_id] for task_id in inputs.task_ids]
        raws = [entry.raw for entry in entries]
        largest = max(entries, key=lambda entry: entry.size)
        self._forget(record)
        call = (
            inputs.kind,
            record.codec,
            _travelling(record.payload),
            tuple(_travelling(b) for b in record.buffers),
            _raw_list(raws),
        )
        buffers: list[pickle.PickleBuffer] = []
        record.payload = pickle.dumps((call, {}), PICKLE_PROTOCOL, buffer_callback=buffers.append)
        record.codec, record.buffers = p.PICKLE, tuple(b.raw() for b in buffers)
        if not self._fits(record):
            return
        if largest.size >= AFFINITY_BYTES and self._send_near(record, largest.host):
            return
        self._scheduler.pending.push(record)

    def _fits(self, record: TaskRecord) -> bool:
        size = len(record.payload) + sum(memoryview(b).nbytes for b in record.buffers)
        cap = self._scheduler.max_data_frame
        if size + FRAME_OVERHEAD <= cap:
            return True
        self._scheduler.fail(
            record,
            TaskTooLarge(
                f"task {record.task_id} with its inputs takes {size:,} bytes, more than one "
                f"frame may carry ({cap:,} bytes); pass max_data_frame= to the executor",
                task_id=record.task_id,
            ),
        )
        return False

    def _send_near(self, record: TaskRecord, host: str | None) -> bool:
        """Send to ``host`` if it may run the task and has a worker free now."""
        for link in self._scheduler.links:
            if link.host != host or link.free <= 0 or link.load_with(1) > 1:
                continue
            if record.group is not None and link.group != record.group:
                return False
            if not record.future.set_running_or_notify_cancel():
                return False  # cancelled: the queue ends it as any cancelled task
            record.dispatched = True
            link.send_tasks([record], self._scheduler.functions)
            return True
        return False

    def cancel(self, task_ids: set[int] | None) -> None:
        """Cancel waiting dependents: these (``None``: all of them)."""
        chosen = [r for i, r in self.waiting.items() if task_ids is None or i in task_ids]
        for record in chosen:
            self._forget(record)
            self._scheduler.cancel_waiting(record)


def future_record(future: Future[Any], task_id: int) -> TaskRecord:
    """A stand-in record for an input that ended before its dependent was held."""
    return TaskRecord(task_id, future, 0, p.CALL, p.PICKLE, b"")


def _ended_inputs(inputs: Inputs) -> list[tuple[Future[Any], int]]:
    return [(f, i) for f, i in zip(inputs.futures, inputs.task_ids, strict=True) if f.done()]


def _travelling(buffer: p.Buffer) -> Any:
    """A buffer as it goes in a pickle: out-of-band when big, a copy when small."""
    if memoryview(buffer).nbytes >= OUT_OF_BAND_BYTES:
        return pickle.PickleBuffer(buffer)
    return bytes(buffer)


def _raw_list(raws: Sequence[RawResult | None]) -> list[tuple[int, Any, tuple[Any, ...]]]:
    out = []
    for raw in raws:
        assert raw is not None
        codec, payload, buffers = raw
        out.append((codec, _travelling(payload), tuple(_travelling(b) for b in buffers)))
    return out
