"""An asyncio event loop in a daemon thread: where the scheduler and transports live.

The loop thread holds :attr:`LoopThread.idle_lock` at all times except while it sleeps in
``epoll_wait``. Another thread that takes the lock (without blocking) therefore knows the
loop is asleep and touches no loop state, and may do a small piece of the loop's work
itself: :meth:`LoopThread.run_if_asleep`. The scheduler uses this to send a task straight
to an idle node from the submitting thread, saving two thread wake-ups (the loop's
self-pipe and a GIL hand-off) per round trip.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


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


def _selector(lock: threading.Lock) -> selectors.BaseSelector:
    """The loop's selector: epoll with the idle lock released while it waits.

    Without epoll (not Linux) the plain default selector is used and the lock is never
    released, so :meth:`LoopThread.run_if_asleep` always declines.
    """
    epoll_selector = getattr(selectors, "EpollSelector", None)
    if epoll_selector is None:  # pragma: no cover - not Linux
        return selectors.DefaultSelector()
    selector: selectors.BaseSelector = epoll_selector()
    selector._selector = _UnlockedPoll(selector._selector, lock)  # type: ignore[attr-defined]
    return selector


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str = "ceranubis-loop") -> None:
        self.idle_lock = threading.Lock()
        self.idle_lock.acquire()  # the loop's until its first poll (released in poll only)
        self.loop = asyncio.SelectorEventLoop(_selector(self.idle_lock))
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
            return fn()
        finally:
            self.idle_lock.release()

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.get_ident() == self.thread.ident

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
