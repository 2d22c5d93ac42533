"""The ``"ceranubis"`` joblib backend: ``Parallel`` calls run on an executor's hosts.

::

    with joblib.parallel_config(backend="ceranubis", hosts=["node1", "node2"]):
        results = Parallel(n_jobs=-1)(delayed(f)(x) for x in data)

joblib's batches (auto-sized: :class:`AutoBatchingMixin`) travel as one task each,
unpacked into their calls first, so hosts need the called functions but not joblib: a
batch of one function is a call of ``EachCall(fn)`` (the function shipped once per node,
the calls as plain pickles); a batch of several is a call of ``call_each``. Results come
back through futures with joblib's callback, so ``return_as="generator"`` streams.

This module imports joblib; :mod:`.joblib_hook` registers it without importing it.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

from ..errors import ConfigError
from ..wire.calls import EachCall, call_each
from .executor import NodeExecutor
from .hosts import HostSpec

# Seconds configure() waits for the hosts' handshakes, to learn how many workers they
# have (n_jobs=-1): long enough for a slow SSH start, bounded so a dead host cannot hang.
HOSTS_READY_TIMEOUT = 60.0
# How often that wait looks at the hosts again.
HOSTS_POLL_SECONDS = 0.02


class CeranubisBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib backend over a :class:`~.executor.NodeExecutor`.

    Args:
        hosts: as for the executor (``None``: the embedded default on this machine).
        executor: an executor to use instead (it is not shut down by the backend).
        max_workers: workers of the embedded default.
        **executor_options: more keyword arguments of the executor.
    """

    supports_retrieve_callback = True
    supports_timeout = True
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = -1

    def __init__(
        self,
        hosts: Sequence[HostSpec] | HostSpec | None = None,
        *,
        executor: NodeExecutor | None = None,
        max_workers: int | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **executor_options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=None)
        if inner_max_num_threads is not None:
            raise ConfigError("the ceranubis backend does not set inner_max_num_threads")
        self._hosts = hosts
        self._options = dict(executor_options, max_workers=max_workers)
        self._given = executor
        self._own: NodeExecutor | None = None
        self._lock = threading.Lock()
        self._futures: weakref.WeakSet[Future[Any]] = weakref.WeakSet()
        self._each: weakref.WeakKeyDictionary[Any, EachCall] = weakref.WeakKeyDictionary()

    @property
    def executor(self) -> NodeExecutor:
        """The executor tasks go to (made at first use, and ended with this backend)."""
        if self._given is not None:
            return self._given
        with self._lock:
            if self._own is None:
                self._own = NodeExecutor(self._hosts, **self._options)
                weakref.finalize(self, self._own.shutdown, wait=False)
            return self._own

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Start (or reuse) the executor; the number of workers joblib may use."""
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs``, with -1 (all) and other negatives counted from the hosts' workers."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = -1
        if n_jobs > 0:
            return n_jobs
        return max(self._workers() + 1 + n_jobs, 1)

    def _workers(self) -> int:
        """Workers over every host, once each host has answered or failed (bounded)."""
        executor = self.executor
        deadline = time.monotonic() + HOSTS_READY_TIMEOUT
        hosts = executor.hosts()
        while any(h.state == "starting" for h in hosts) and time.monotonic() < deadline:
            time.sleep(HOSTS_POLL_SECONDS)
            hosts = executor.hosts()
        return sum(h.workers for h in hosts) or os.cpu_count() or 1

    def submit(self, func: Any, callback: Callable[[Any], None] | None = None) -> Future[Any]:
        """Run a joblib batch as one task; ``callback`` hears of its end."""
        future = self._submit_batch(func)
        self._futures.add(future)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _submit_batch(self, batch: Any) -> Future[Any]:
        items = getattr(batch, "items", None)
        if items is None:  # not a BatchedCalls: a plain callable
            return self.executor.submit(batch)
        first = items[0][0] if items else None
        each = self._each_call(first) if all(item[0] is first for item in items) else None
        if each is None:
            return self.executor.submit(call_each, items)
        return self.executor.submit(each, [(args, kwargs) for _, args, kwargs in items])

    def _each_call(self, fn: Any) -> EachCall | None:
        """The one ``EachCall`` of ``fn`` (so it ships once), or ``None`` when ``fn`` cannot
        be weakly referenced (then each batch carries it)."""
        try:
            each = self._each.get(fn)
            if each is None:
                each = self._each[fn] = EachCall(fn)
        except TypeError:
            return None
        return each

    def retrieve_result_callback(self, future: Future[Any]) -> Any:
        """The batch's results (or its exception)."""
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the batches still out (an exception ended the ``Parallel`` call)."""
        futures = [f for f in list(self._futures) if not f.done()]
        if futures:
            self.executor.cancel(futures)

    def terminate(self) -> None:
        """End of a ``Parallel`` call: the executor stays for the next one."""
        self.parallel = None
        self._futures = weakref.WeakSet()


def make_backend(**options: Any) -> CeranubisBackend:
    """The factory joblib calls for ``backend="ceranubis"`` (``options`` as the backend's)."""
    return CeranubisBackend(**options)
