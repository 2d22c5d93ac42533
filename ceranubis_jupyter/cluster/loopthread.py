"""An asyncio event loop in a daemon thread: where the scheduler and transports live.

The loop thread holds :attr:`LoopThread.idle_lock` at all times except while it sleeps in
``epoll_wait``. Another thread that takes the lock (without blocking) therefore knows the
loop is asleep and touches no loop state, and may do a small piece of the loop's work
itself: :meth:`LoopThread.run_if_asleep`. The scheduler uses this to send a task straight
to an idle node from the submitting thread, saving two thread wake-ups (the loop's
self-pipe and a GIL hand-off) per round trip.

The same lock lets a thread that waits for a result read the node's descriptor itself,
for a short while, with the loop asleep: :meth:`LoopThread.serve_in_caller`. The loop's
epoll stops watching that descriptor meanwhile (so the kernel wakes only the waiter), and
the waiter hands the loop back as soon as anything else wants it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

# signal.signal without its enum conversions (~2.4 µs a call, against ~0.15 µs): the C
# function it wraps (CPython's _signal module; elsewhere signal.signal itself).
_set_handler: Callable[[int, Any], Any]
try:
    from _signal import signal as _set_handler  # type: ignore[import-not-found, no-redef]
except ImportError:  # pragma: no cover - not CPython
    _set_handler = signal.signal


class _UnlockedPoll:
    """An ``epoll`` object whose ``poll`` runs with the loop's idle lock released."""

    def __init__(self, epoll: Any, lock: threading.Lock) -> None:
        self._epoll = epoll
        self._lock = lock

    def poll(self, *args: Any) -> list[tuple[int, int]]:
        self._lock.release()
        try:
            events: list[tuple[int, int]] = self._epoll.poll(*args)
            return events
        finally:
            self._lock.acquire()

    def __getattr__(self, name: str) -> Any:  # register, modify, unregister, close, fileno
        return getattr(self._epoll, name)


def _selector(lock: threading.Lock) -> tuple[selectors.BaseSelector, Any]:
    """The loop's selector: epoll with the idle lock released while it waits; and that
    epoll object (``None`` without one).

    Without epoll (not Linux) the plain default selector is used and the lock is never
    released, so :meth:`LoopThread.run_if_asleep` and :meth:`LoopThread.serve_in_caller`
    always decline.
    """
    epoll_selector = getattr(selectors, "EpollSelector", None)
    if epoll_selector is None:  # pragma: no cover - not Linux
        return selectors.DefaultSelector(), None
    selector: selectors.BaseSelector = epoll_selector()
    epoll = selector._selector  # type: ignore[attr-defined]
    selector._selector = _UnlockedPoll(epoll, lock)  # type: ignore[attr-defined]
    return selector, epoll


def _spun(poller: Any, until: float) -> list[tuple[int, int]]:
    """What ``poller`` finds ready, polled without sleeping until ``until`` (monotonic)
    at most: empty when nothing was. Between polls the thread yields its CPU (and the
    GIL) to whatever else is ready there: without that, the slowest round trips were
    slower (W3's p99 690 against 475 µs; benchmarks/README, the ninth pass)."""
    while time.monotonic() < until:
        ready: list[tuple[int, int]] = poller.poll(0)
        if ready:
            return ready
        os.sched_yield()
    return []


def _epoll_events(events: int) -> int:
    """Epoll flags for a selector key's events (as ``selectors.EpollSelector`` sets them)."""
    flags = select.EPOLLIN if events & selectors.EVENT_READ else 0
    return flags | (select.EPOLLOUT if events & selectors.EVENT_WRITE else 0)


def _nothing() -> None:
    """A callback that only wakes the loop."""


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """In the main thread, a SIGINT (Ctrl-C, a kernel interrupt) that comes meanwhile is
    raised only at the end: a ``KeyboardInterrupt`` half-way through the loop's work (a
    reader callback, a frame being written) would lose bytes, and with them the node's
    channel."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only
        return
    caught: list[Any] = []
    previous = _set_handler(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        _set_handler(signal.SIGINT, previous)
        if caught:
            _deliver_interrupt(previous, caught[0])


def _deliver_interrupt(handler: Any, frame: Any) -> None:
    """Act on a deferred SIGINT as ``handler`` (what was installed) would have."""
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str = "ceranubis-loop") -> None:
        self.idle_lock = threading.Lock()
        self.idle_lock.acquire()  # the loop's until its first poll (released in poll only)
        self._selector, self._epoll = _selector(self.idle_lock)
        self._borrower: int | None = None  # the thread serving the loop's reads, if any
        self._poller: tuple[tuple[int, ...], Any] | None = None  # see _poller_for
        self.loop = asyncio.SelectorEventLoop(self._selector)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()  # returns holding idle_lock: nobody may act for the loop

    def call_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def run_if_asleep(self, fn: Callable[[], bool]) -> bool:
        """Run ``fn()`` in this thread if the loop is asleep, keeping it asleep meanwhile.

        ``fn`` may touch loop-owned state and write to file descriptors, but must not
        schedule loop callbacks (``call_soon``): the loop would not wake up for them.
        Returns what ``fn`` returns, or ``False`` without running it when the loop is busy;
        never blocks.
        """
        if not self.idle_lock.acquire(blocking=False):
            return False
        try:
            with _interrupt_deferred():
                return fn()
        finally:
            self.idle_lock.release()

    def serve_in_caller(
        self,
        fds: Callable[[], Sequence[int]],
        done: Callable[[], bool],
        seconds: float,
        spin: float = 0.0,
    ) -> None:
        """Read ``fds()`` for the loop in this thread while it sleeps, until ``done()``,
        for at most ``seconds``; return at once if the loop is busy. For the first
        ``spin`` seconds the thread polls without sleeping (see ``inline_receive``).

        The loop's epoll ignores those descriptors meanwhile, so their data wakes only
        this thread, which runs the loop's own reader callbacks for them. It gives the loop
        back early when anything else wants it (another descriptor, a call from another
        thread, a callback those readers scheduled). The loop's timers may fire up to
        ``seconds`` late.
        """
        if self._epoll is None or not self.idle_lock.acquire(blocking=False):
            return
        try:
            readers = self._readers(fds())
            if readers:
                with self._borrowed(readers):
                    now = time.monotonic()
                    self._serve(readers, done, now + seconds, now + min(spin, seconds))
        finally:
            self.idle_lock.release()

    def _readers(self, fds: Sequence[int]) -> dict[int, asyncio.Handle]:
        """The loop's reader callbacks of ``fds``; empty unless each fd is watched for
        reading only (a pending write is the loop's business)."""
        readers = {}
        for fd in fds:
            key = self._selector.get_map().get(fd)
            if key is None or key.events != selectors.EVENT_READ:
                return {}
            readers[fd] = key.data[0]
        return readers

    @contextlib.contextmanager
    def _borrowed(self, readers: dict[int, asyncio.Handle]) -> Iterator[None]:
        """The loop's epoll blind to ``readers`` and this thread the running loop's, then
        both restored (as the readers left their registrations) and the loop woken if a
        reader scheduled a callback or a timer."""
        for fd in readers:
            self._epoll.modify(fd, 0)
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self.loop)
        self._borrower = threading.get_ident()
        first_timer = self._first_timer()
        try:
            yield
        finally:
            self._borrower = None
            asyncio.events._set_running_loop(previous)
            for fd in readers:
                key = self._selector.get_map().get(fd)
                if key is not None:  # else a reader closed it: the selector dropped it
                    self._epoll.modify(fd, _epoll_events(key.events))
            if self._has_ready() or self._first_timer() is not first_timer:
                self.loop.call_soon_threadsafe(_nothing)  # callbacks to run, a timer to heed

    def _has_ready(self) -> bool:
        return bool(self.loop._ready)  # type: ignore[attr-defined]

    def _first_timer(self) -> asyncio.TimerHandle | None:
        scheduled: list[asyncio.TimerHandle] = self.loop._scheduled  # type: ignore[attr-defined]
        return scheduled[0] if scheduled else None

    def _serve(
        self,
        readers: dict[int, asyncio.Handle],
        done: Callable[[], bool],
        deadline: float,
        spin_until: float,
    ) -> None:
        loop_fd = self._epoll.fileno()  # readable when the loop has anything else to do
        poller = self._poller_for(tuple(readers), loop_fd)
        while not done():
            ready = _spun(poller, spin_until)
            if not ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                ready = poller.poll(left * 1000)
            if any(fd == loop_fd for fd, _ in ready):
                return
            for fd, _ in ready:
                handle = readers[fd]
                if handle.cancelled():
                    return  # its reader was removed (or replaced): the loop's business
                with _interrupt_deferred():
                    handle._run()  # as the loop runs it (errors go to its handler)
                if self._selector.get_map().get(fd) is None:
                    return  # the reader closed it
            if self._has_ready():
                return  # the loop must run them

    def _poller_for(self, fds: tuple[int, ...], loop_fd: int) -> Any:
        """A ``select.poll`` of ``fds`` and ``loop_fd`` for reading (the idle lock held):
        the last one made when the descriptors are the same (a poll object keeps no
        kernel state, so a number reused by another file is watched all the same)."""
        key = (*fds, loop_fd)
        if self._poller is None or self._poller[0] != key:
            poller = select.poll()
            for fd in key:
                poller.register(fd, select.POLLIN)
            self._poller = (key, poller)
        return self._poller[1]

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread (or from a thread serving its
        reads: :meth:`serve_in_caller`)."""
        ident = threading.get_ident()
        return ident == self.thread.ident or ident == self._borrower

    def call_for_result(self, fn: Callable[[], T], timeout: float) -> T:
        """Run ``fn()`` on the loop from another thread and return what it returned."""

        async def call() -> T:
            return fn()

        return self.run_threadsafe(call()).result(timeout)

    def run_threadsafe(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a coroutine on the loop; returns a concurrent future for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Stop the loop and join its thread (from any thread but the loop's)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()
