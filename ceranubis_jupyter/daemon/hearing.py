"""What a node daemon does on hearing a queue event, in the listener's thread: a commit
wakes its cycle (or, idle, it claims there, one thread wake-up less); arguments a commit
handed it start there at once; a cancel is looked at now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..projects.queue_events import Hand, parse_hand
from ..projects.queue_store import Claimed
from .held import Held
from .runner import Runner
from .turns import Turns

log = logging.getLogger("ceranubis")


class Hearing:
    """The listener thread's side of :class:`~.node.QueueNode` (its attributes and
    cycle are the node's)."""

    name: str
    group: str
    lease_id: int
    claimed: int
    held: Held
    executor: Any
    _cycle_lock: threading.Lock
    _wake: threading.Event
    _stopping: threading.Event
    _cancel_asked: threading.Event
    _hands: deque[Hand]
    _orphans_asked: bool
    _adopted: set[int]
    _woken: deque[tuple[int, int]]
    _turns: Turns
    _look_at: float
    _timers: dict[str, float]
    _exhausted: set[int]

    def _cycle_held(self, claim: bool) -> None:
        raise NotImplementedError

    def _runner(self) -> Runner:
        raise NotImplementedError

    def _heard(self, payload: str) -> None:
        """A queue event (listener thread): wake the cycle; a cancel is looked at now."""
        if payload.startswith("cancel:"):
            self._cancel_asked.set()
            self._wake.set()
            return
        hand = parse_hand(payload, self.lease_id) if "\n" in payload else None
        if hand is not None and self._handed(hand):
            return
        heard = self._turns.heard(payload, self.group)
        if not heard:  # not for this node or not its turn yet; a node came or went: read
            if self._turns.due_for_peers(time.monotonic()):
                self._wake.set()
            return
        self._look_at = 0.0  # (a busy node looks once it has room)
        reconnected = heard[0][0] < 0  # -1: the listener (re)connected
        if reconnected:  # a hand sent meanwhile was not heard
            self._orphans_asked = True
        self._woken.extend(heard)
        if reconnected or not self._cycle_here():
            self._wake.set()

    def _handed(self, hand: Hand) -> bool:
        """Listener thread, on a commit that handed arguments: start them if they are
        this daemon's (here, unless the serving thread is in its cycle: then there).
        ``True`` when nothing is left to do about the commit: it handed everything, or
        handed this daemon its first arguments (it claims the rest with its next cycle)."""
        if hand.lease != self.lease_id:
            return not hand.pending  # another's: the rest (if any) is for the turns
        self._hands.append(hand)
        if hand.pending:
            self._woken.append((hand.project, hand.priority))
        if hand.pending or not self._here(self._take_hands, "starting handed arguments"):
            self._wake.set()
        return True

    def _take_hands(self) -> bool:
        """Start the arguments commits handed to this daemon (the cycle lock held): they
        are stored as claimed under its lease, which it renews from its next cycle.
        Returns ``True``: all were started."""
        while self._hands:
            hand = self._hands.popleft()
            claimed = [Claimed(arg_id, hand.project, blob, 1)
                       for arg_id, blob in hand.args if arg_id not in self._adopted]  # fmt: skip
            if not claimed:
                continue
            self.claimed += len(claimed)
            self._timers["renew"] = 0.0
            if not hand.pending:
                self._exhausted.add(hand.project)
            self._runner().run_handed(hand, claimed)
        return True

    def _cycle_here(self) -> bool:
        """Listener thread, on a commit: an idle node claims here (one thread wake-up
        less; the serving thread wakes for the outcome); ``False``: leave it to that one."""
        return self._here(self._claim_if_idle, "claiming")

    def _claim_if_idle(self) -> bool:
        if self._stopping.is_set() or self.held.tasks or self.executor is None:
            return False
        self._cycle_held(claim=True)
        return True

    def _here(self, work: Callable[[], bool], doing: str) -> bool:
        """Run ``work`` in this (the listener's) thread unless the serving thread is in
        its cycle: what it returns; ``False`` when it did not run or failed (the serving
        thread, woken, then does it)."""
        if not self._cycle_lock.acquire(blocking=False):
            return False
        try:
            return work()
        except Exception:  # a bug must not end the listener: the serving thread retries
            log.exception("node %s: %s from the listener failed", self.name, doing)
            return False
        finally:
            self._cycle_lock.release()


__all__ = ["Hearing"]
