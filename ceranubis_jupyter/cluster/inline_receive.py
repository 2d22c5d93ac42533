"""The ``inline_receive`` fast path: a thread that waits for its lone task reads the answer.

A sequential round trip (``ex.submit(f, x).result()``) otherwise wakes two client threads
for its result: the loop thread, which reads the node's bytes and sets the future, and then
the waiting thread. When the executor has no other task in flight and no listener, the
waiting thread instead reads the nodes' descriptors itself for up to
``INLINE_WAIT_SECONDS`` while the loop thread sleeps
(:meth:`~.loopthread.LoopThread.serve_in_caller`): the same loop code handles the bytes,
in the thread that wants them. Anything else the loop has to do ends the borrowing at
once; a task that takes longer is waited for as before.

The ``spin_wait`` fast path: the waiting thread first polls without sleeping, for up to
``SPIN_SECONDS``, when the previous lone answer came within that time. A thread that
sleeps in ``poll`` is woken when the answer arrives, and on a virtual machine whose other
virtual CPU idles that wake-up cost ~60 µs of a ~320 µs round trip over SSH
(benchmarks/README, the ninth pass). The spin costs the client CPU for as long as it
lasts, at most ``SPIN_SECONDS`` a wait, and nothing when answers take longer.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduler import Scheduler

# Seconds a waiting thread reads for the loop before it waits as usual: covers a round
# trip to a near host (a few hundred µs to a few ms); longer would cover farther hosts but
# the loop's timers (heartbeats) may run this much late while the thread reads.
INLINE_WAIT_SECONDS = 0.005
# Seconds a waiting thread polls without sleeping, at most (``spin_wait``): a lone answer
# from a near host comes within a few hundred µs.
SPIN_SECONDS = 0.0005


class InlineReceiver:
    """Called by a :class:`~.dependencies.TaskFuture` before it waits for its result."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._spins = scheduler.fast_paths.spin_wait
        self._spin = SPIN_SECONDS if self._spins else 0.0  # for the next wait

    @classmethod
    def if_on(cls, scheduler: Scheduler) -> InlineReceiver | None:
        """A receiver for ``scheduler``'s futures, or ``None`` when its fast path is off."""
        return cls(scheduler) if scheduler.fast_paths.inline_receive else None

    def __call__(self, future: Future[Any], timeout: float | None) -> None:
        """Read for the loop until ``future`` is done, if it is the only task in flight
        (at most ``INLINE_WAIT_SECONDS``, and never past ``timeout``). Listeners and
        tasks that wait for others are the loop thread's business: then it waits as usual."""
        scheduler = self.scheduler
        if scheduler.outstanding != 1 or scheduler.listeners or scheduler.dependencies.held:
            return
        seconds = INLINE_WAIT_SECONDS if timeout is None else min(timeout, INLINE_WAIT_SECONDS)
        if not self._spins:
            scheduler.loop_thread.serve_in_caller(self._fds, future.done, seconds)
            return
        started = time.monotonic()
        scheduler.loop_thread.serve_in_caller(self._fds, future.done, seconds, self._spin)
        quick = future.done() and time.monotonic() - started < SPIN_SECONDS
        self._spin = SPIN_SECONDS if quick else 0.0  # spin next time after a quick answer

    def _fds(self) -> list[int]:
        """The descriptors the nodes' answers arrive on (read with the loop asleep)."""
        fds = []
        for link in self.scheduler.links:
            channel = link.channel
            fd = channel.read_fd() if channel is not None else None
            if fd is not None:
                fds.append(fd)
        return fds
