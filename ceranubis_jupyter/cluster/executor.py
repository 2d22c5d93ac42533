"""``NodeExecutor``: a real ``concurrent.futures.Executor`` over local and SSH nodes.

The kernel thread serializes (functions once, arguments per task) and hands a
:class:`~ceranubis_jupyter.cluster.tasks.TaskRecord` to the scheduler's loop thread; futures
are plain :class:`concurrent.futures.Future` objects, so ``wait``, ``as_completed`` and
``asyncio.wrap_future`` work on them.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, TypeVar

from ..config import expand_host_groups
from ..errors import ConfigError, ConfigTypeError, TaskTooLarge
from ..exits import Stage, on_exit
from ..wire import protocol as p
from ..wire.describe import unpicklable_arguments
from ..wire.serialize import FutureInArguments, dumps
from .dependencies import TaskFuture, WrappedIds, with_inputs
from .fastpaths import FastPaths
from .framecap import data_frame_cap
from .functions import FunctionIds
from .hosts import Host, HostSpec, as_host
from .inline_receive import InlineReceiver
from .link import SILENCE_TIMEOUT, HostInfo
from .mapping import MapFeeder, MapRefill, MapSlot, MapWaiter, check_buffersize, results_in_order
from .reach import transports_for
from .scheduler import Scheduler
from .tasks import DEFAULT_RETRIES, ResultSlot, TaskRecord
from .travel import Travel

T = TypeVar("T")
# Bytes of a frame that are not the task's arguments (header, ids, options): a task whose
# arguments leave less than this under the cap is refused before it is queued.
FRAME_OVERHEAD = 4096
log = logging.getLogger("ceranubis")

_live_executors: weakref.WeakSet[NodeExecutor] = weakref.WeakSet()


@dataclass(frozen=True)
class TaskOptions:
    """Per-task options; see :meth:`NodeExecutor.options`."""

    timeout: float = 0.0
    priority: int = 0
    group: str | None = None
    retries: int = DEFAULT_RETRIES

    def validated(self) -> TaskOptions:
        """These options, once checked.

        Raises:
            ConfigTypeError: a number that is not one, a group that is not a string.
            ConfigError: a negative timeout or retry count.
        """
        _check_number("timeout", self.timeout)
        _check_int("priority", self.priority)
        _check_int("retries", self.retries)
        if self.group is not None and not isinstance(self.group, str):
            raise ConfigTypeError(f"group must be a string, got {self.group!r}")
        if self.timeout < 0:
            raise ConfigError(f"timeout must be >= 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        return self


def _check_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be an int, got {value!r}")


def _check_number(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be a number of seconds, got {value!r}")


class NodeExecutor(Travel, Executor):
    """Runs calls on every core of local and remote hosts (the public
    :class:`~ceranubis_jupyter.CeranubisExecutor` adds projects to it).

    Args:
        hosts: ``None`` for the embedded default (local node processes), or a list of host
            specs: ``"local"``, an ``~/.ssh/config`` alias, ``"user@host:port"`` or
            :class:`~ceranubis_jupyter.hosts.Host`.
        max_workers: worker processes for the embedded default (default: all cores).
        retries: times a task is re-run after its worker or node died under it.
        fast_paths: which fast paths to use (:class:`~.fastpaths.FastPaths`; default: all
            but those ``$CERANUBIS_FAST_PATHS_OFF`` names).
        heartbeat_timeout: seconds of silence after which a host counts as lost (its tasks
            are re-queued) and after which a node gives up on a silent client.
        max_data_frame: the largest frame of tasks or results, in bytes (a single task's
            arguments or result, :mod:`~.framecap`; default ``$CERANUBIS_MAX_DATA_FRAME``,
            else 4 GiB).
        modules: modules (names or module objects) whose source goes to every host and
            is imported there from it, user code or not (:mod:`~.modules`).
        auto_modules: also send the user's own modules that submitted functions refer to
            (default: on, unless ``$CERANUBIS_AUTO_MODULES`` is ``0``).
        files: data files and directories, relative to the working directory, that every
            remote host gets a copy of (synced by content) and runs tasks in; see
            :meth:`sync` and :meth:`fetch`. Local nodes use the originals.

    Raises:
        ConfigError: ``max_workers`` is not greater than 0 (a ``ValueError``, as
            ``ProcessPoolExecutor`` raises) or a host spec is bad.
        ConfigTypeError: ``max_workers`` is not an int (a ``TypeError``).

    Example::

        with CeranubisExecutor() as ex:
            squares = list(ex.map(lambda x: x * x, range(100)))
    """

    def __init__(
        self,
        hosts: Sequence[HostSpec] | HostSpec | None = None,
        *,
        max_workers: int | None = None,
        retries: int = DEFAULT_RETRIES,
        heartbeat_timeout: float = SILENCE_TIMEOUT,
        fast_paths: FastPaths | None = None,
        max_data_frame: int | None = None,
        modules: Sequence[str | ModuleType] = (),
        auto_modules: bool | None = None,
        files: Sequence[str] = (),
    ) -> None:
        if max_workers is not None:
            _check_int("max_workers", max_workers)
            if max_workers <= 0:
                raise ConfigError("max_workers must be greater than 0")  # as the stdlib's
        self._defaults = TaskOptions(retries=retries).validated()
        self._transports = transports_for(hosts, max_workers)
        _check_number("heartbeat_timeout", heartbeat_timeout)
        if heartbeat_timeout <= 0:
            raise ConfigError(f"heartbeat_timeout must be > 0 seconds, got {heartbeat_timeout}")
        self._max_workers = max_workers
        self._scheduler = Scheduler(
            self._transports,
            silence_timeout=heartbeat_timeout,
            fast_paths=fast_paths or FastPaths.from_env(),
            max_data_frame=data_frame_cap(max_data_frame),
        )
        self._functions = FunctionIds(self._scheduler.add_function_threadsafe)
        self._init_travel(modules, auto_modules, files)
        self._wrapped = WrappedIds(self.register_function)
        self._token = object()  # on submit()'s futures (TaskFuture.owner; see task_id_of)
        self._wait_inline = InlineReceiver.if_on(self._scheduler)  # on them too
        self._lock = threading.Lock()
        self._shutdown = False
        _live_executors.add(self)
        self._finalizer = weakref.finalize(self, self._scheduler.close_threadsafe)
        self._finalizer.atexit = False  # the exit path (exits.Stage.EXECUTORS) ends it

    # ------------------------------------------------------------------ Executor API

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns its future."""
        return self._submit(self._defaults, fn, p.CALL, (args, kwargs))

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like :func:`map`, in parallel; results come back in order, lazily.

        ``chunksize`` items travel as one message and run in one go on a worker.
        ``timeout`` bounds the whole iteration: ``TimeoutError`` when it is exceeded.
        ``buffersize`` (as Python 3.14's): at most that many tasks (chunks) queued whose
        results were not handed out yet, the iterables read lazily as results are taken;
        ``None`` reads and queues every call at once, so that each runs even if the
        results are never read.
        """
        return self._map(self._defaults, fn, iterables, timeout, chunksize, buffersize)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, stop_running: bool = False
    ) -> None:
        """Stop accepting work; optionally cancel what has not started; end every node.

        Args:
            wait: return only once every task still to run has finished and the nodes
                are gone (else at once: that happens in the background).
            cancel_futures: cancel the tasks that have not started, as
                ``ProcessPoolExecutor`` does; the running ones finish and keep their
                results.
            stop_running: also stop the running tasks (implies ``cancel_futures``): their
                workers are killed and replaced, their futures fail with
                ``CancelledError``, as with :meth:`cancel` of every future.
        """
        with self._lock:
            already = self._shutdown
            self._shutdown = True
        if (cancel_futures or stop_running) and not self._scheduler.loop.is_closed():
            self._scheduler.cancel_pending_threadsafe(stop_running=stop_running)
        if already and not wait:
            return
        if wait:
            self._scheduler.wait_idle_threadsafe()
            self._finalizer()
        else:
            threading.Thread(target=self._close_when_idle, daemon=True).start()

    # ------------------------------------------------------------------ extras

    def options(
        self,
        *,
        timeout: float | None = None,
        priority: int | None = None,
        group: str | None = None,
        retries: int | None = None,
    ) -> TaskOptionsView:
        """Submit with per-task options, keeping ``submit``'s signature::

        ex.options(timeout=5, priority=10).submit(fn, x)
        """
        changes: dict[str, Any] = {
            k: v
            for k, v in dict(
                timeout=timeout, priority=priority, group=group, retries=retries
            ).items()
            if v is not None
        }
        return TaskOptionsView(self, replace(self._defaults, **changes).validated())

    def hosts(self) -> list[HostInfo]:
        """The state of every host: workers, python, load, CPU, memory, tasks done."""
        return self._scheduler.hosts_threadsafe()

    def add_hosts(self, hosts: Sequence[HostSpec] | HostSpec) -> None:
        """Start nodes on more hosts; they take work as soon as they are up.

        A local host of another group is another host: its nodes are named
        ``local:<group>`` (:attr:`~.hosts.Host.name`).
        """
        self._check_open()
        self._scheduler.add_hosts_threadsafe(transports_for(hosts, self._max_workers))

    def remove_hosts(self, hosts: Sequence[HostSpec] | HostSpec, *, drain: bool = True) -> None:
        """Stop using hosts (by the spec they were given with, or their name in
        :meth:`hosts`: ``local:<group>`` for a local host of a group).

        With ``drain=True`` their running tasks finish there first; otherwise those tasks
        are re-queued to the other hosts at once. Returns when the nodes are gone.
        """
        self._check_open()
        specs = [hosts] if isinstance(hosts, (str, Host)) else list(hosts)
        names = [as_host(spec).name for spec in expand_host_groups(specs)]
        self._scheduler.remove_hosts_threadsafe(names, drain)

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("the executor is shut down")

    def cancel(self, futures: Iterable[Future[Any]]) -> None:
        """Stop these futures' tasks wherever they are, running ones included."""
        ids = [task_id for f in futures if (task_id := self.task_id_of(f)) is not None]
        if ids and not self._scheduler.loop.is_closed():
            self._scheduler.cancel_threadsafe(ids)

    def task_id_of(self, future: Future[Any]) -> int | None:
        """The id of the task behind a future that :meth:`submit` returned.

        It is the ``task_id`` of the task's errors, of the records scheduler listeners
        get and of :meth:`Scheduler.in_flight_threadsafe`; ``None`` for any other future.
        """
        if isinstance(future, TaskFuture) and future.owner is self._token:
            return future.task_id
        return None

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` was called: no new work is taken."""
        return self._shutdown

    @property
    def scheduler(self) -> Scheduler:
        """The scheduler (for projects and the progress widget)."""
        return self._scheduler

    # ------------------------------------------------------------------ internals

    def _close_when_idle(self) -> None:
        self._scheduler.wait_idle_threadsafe()
        self._finalizer()

    def _submit(
        self, options: TaskOptions, fn: Callable[..., Any], kind: int, arguments: Any
    ) -> Future[Any]:
        fn_id = self._check_submit(fn)
        future = TaskFuture()
        record, ready = self._record(options, fn, fn_id, kind, arguments, future)
        future.owner, future.task_id = self._token, record.task_id
        future.wait_inline = self._wait_inline
        if ready:  # else it failed already: its arguments would not pickle
            self._scheduler.submit_threadsafe(record)
        return future

    def _check_submit(self, fn: Callable[..., Any]) -> int:
        """``fn``'s id, once it is known this executor can take a call of it."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if not callable(fn):
            raise ConfigTypeError(f"{fn!r} is not callable")
        return self.register_function(fn)

    def _record(
        self,
        options: TaskOptions,
        fn: Callable[..., Any],
        fn_id: int,
        kind: int,
        arguments: Any,
        outcome: Future[Any] | ResultSlot,
        first_call: int = 1,
    ) -> tuple[TaskRecord, bool]:
        """A task's record, arguments serialized, and whether it may be queued: when they
        will not pickle, ``outcome`` is failed with the reason instead (``False``; told
        here, not asked of a future's lock). ``first_call`` numbers its first call in
        that message (a map's calls count on). Futures among the arguments make it wait
        for them (:mod:`~.dependencies`)."""
        record = self.prepared_task(options, fn_id, outcome, kind, p.PICKLE, b"")
        try:
            codec, payload, buffers = dumps(arguments)
        except FutureInArguments:
            with_inputs(record, fn, arguments, first_call, self.task_id_of, self._wrapped)
            return record, not outcome.done()
        except Exception as error:
            calls = [arguments] if kind == p.CALL else [(args, {}) for args in arguments]
            failure = unpicklable_arguments(
                calls, error, first_call=first_call, task_id=record.task_id
            )
            outcome.set_exception(failure)
            return record, False
        record.codec, record.payload = codec, payload
        if buffers:  # (most calls have none: no generator to make)
            record.buffers = tuple(buffer.raw() for buffer in buffers)
        too_large = self._too_large(record)
        if too_large is not None:
            outcome.set_exception(too_large)
        return record, too_large is None

    def _too_large(self, record: TaskRecord) -> TaskTooLarge | None:
        """Why a task cannot travel in one frame, or ``None`` when it fits."""
        size = len(record.payload)
        if record.buffers:
            size += sum(memoryview(b).nbytes for b in record.buffers)
        cap = self._scheduler.max_data_frame
        if size + FRAME_OVERHEAD <= cap:
            return None
        return TaskTooLarge(
            f"the arguments of task {record.task_id} take {size:,} bytes, more than one frame "
            f"may carry ({cap:,} bytes); pass max_data_frame= to the executor or set "
            "CERANUBIS_MAX_DATA_FRAME",
            task_id=record.task_id,
        )

    def prepared_task(
        self,
        options: TaskOptions,
        fn_id: int,
        outcome: Future[Any] | ResultSlot,
        kind: int,
        codec: int,
        payload: p.Buffer,
    ) -> TaskRecord:
        """A fresh task of ``fn_id`` with ``options``, its arguments already serialized
        (a call's here, a project's stored bytes in ``project_run``)."""
        return TaskRecord(
            self._scheduler.next_task_id(),
            outcome,
            fn_id,
            kind,
            codec,
            payload,
            (),
            options.priority,
            options.timeout,
            options.retries,
            options.group,
        )

    def submit_prepared(self, records: Sequence[TaskRecord]) -> None:
        """Queue ready-made tasks (a map's, a project's) in one go."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        self._scheduler.submit_many_threadsafe(records)

    def register_function(self, fn: Callable[..., Any]) -> int:
        """``fn``'s id for tasks (see :class:`~.functions.FunctionIds`: shipped once, and
        never kept alive by the executor).

        Raises:
            UnpicklableError: ``fn`` cannot be serialized.
        """
        fn_id = self._functions.id_of(fn)
        self._code.before_submit(fn_id, self._scheduler.functions.get(fn_id))
        return fn_id

    def _map(
        self,
        options: TaskOptions,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        check_buffersize(buffersize)
        end_time = None if timeout is None else timeout + time.monotonic()
        calls = zip(*iterables, strict=False)  # like map(): stop at the shortest
        arguments: Iterator[Any]
        if chunksize == 1:
            kind, arguments = p.CALL, ((args, {}) for args in calls)
        else:
            kind, arguments = p.CHUNK, _chunks(calls, chunksize)
        waiter = MapWaiter()
        fn_id = self._check_submit(fn)

        def make(call: Any, slot: MapSlot, first_call: int) -> TaskRecord | None:
            record, ready = self._record(options, fn, fn_id, kind, call, slot, first_call)
            return record if ready else None

        feeder = MapFeeder(arguments, kind == p.CHUNK, waiter, make, self.submit_prepared)
        # As Python 3.14: without a buffersize every call is read and queued now.
        slots = deque(feeder.feed(buffersize or sys.maxsize))
        refill = None if buffersize is None else MapRefill(feeder, buffersize)
        return results_in_order(slots, waiter, end_time, chunked=chunksize > 1, refill=refill)


class TaskOptionsView:
    """``submit``/``map`` with options bound; from :meth:`NodeExecutor.options`."""

    def __init__(self, executor: NodeExecutor, options: TaskOptions) -> None:
        self._executor = executor
        self.task_options = options

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Like :meth:`NodeExecutor.submit`, with these options."""
        return self._executor._submit(self.task_options, fn, p.CALL, (args, kwargs))

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like :meth:`NodeExecutor.map`, with these options."""
        return self._executor._map(self.task_options, fn, iterables, timeout, chunksize, buffersize)


def _chunks(calls: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(calls, size)):
        yield chunk


def _shutdown_all() -> None:
    """At exit: like the standard executors, every live one finishes the work it was
    given (a script need not call ``shutdown``), then its nodes stop."""
    for executor in list(_live_executors):
        try:
            executor.shutdown(wait=True)
        except Exception:  # at exit, best effort: nodes also die when our pipes close
            log.exception("shutting an executor down at exit failed")


on_exit(Stage.EXECUTORS, _shutdown_all)
