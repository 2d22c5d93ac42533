"""A project as one interface, whether it runs in this process or not.

:class:`~ceranubis_jupyter.projects.project.Project` asks its current
:class:`ProjectView` for its state, counts, recent outcomes, elapsed time, and to wait,
cancel or flush:

- :class:`LiveView`, while this process runs the project: from the run's memory (no I/O),
  and through the run (a cancel stops its tasks; a flush waits for its next write).
- :class:`StoredView` otherwise: from the store, as any process sees the project (a cancel
  is a store write that a run elsewhere notices within a heartbeat).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

from ..cluster.executor import NodeExecutor
from ..errors import ConfigError
from .records import QUEUE_CLIENT, ProjectRow
from .rows import decode
from .run import ProjectRun
from .store import Store

# Seconds between store reads while waiting on a project run by another process: the
# first pause, doubled after each look up to the longest. A queued task of a few
# milliseconds is seen done ~10-20 ms after it ends, not up to a quarter of a second
# later; a long wait costs the store four reads a second, as before.
FIRST_POLL_SECONDS = 0.01
POLL_SECONDS = 0.25


def poll_pauses() -> Iterator[float]:
    """The pauses between a waiting view's looks at the store: from
    :data:`FIRST_POLL_SECONDS`, doubling, then :data:`POLL_SECONDS` for ever."""
    pause = FIRST_POLL_SECONDS
    while True:
        yield min(pause, POLL_SECONDS)
        pause *= 2


class ProjectView(Protocol):
    """What a project shows and does, from wherever it is known best."""

    @property
    def executor(self) -> NodeExecutor | None:
        """The executor running the project in this process, if it runs here."""

    def state(self) -> str:
        """``running``, ``done``, ``failed``, ``cancelled`` or ``stopped``."""

    def counts(self) -> dict[str, int]:
        """Arguments per state."""

    def recent(self, n: int) -> list[tuple[tuple[Any, ...], Any]]:
        """The last ``n`` ``(args, result)``, newest last."""

    def recent_errors(self, n: int) -> list[tuple[tuple[Any, ...], str]]:
        """The last ``n`` ``(args, error text)``, newest last."""

    def outputs(self, n: int) -> list[tuple[str, str]]:
        """The last ``n`` ``(host, line)`` the tasks printed."""

    def elapsed(self) -> float:
        """Seconds from the first start to the last finish (or to now while it runs)."""

    def wait(self, timeout: float | None) -> bool:
        """Wait until nothing is pending or running; ``False`` on timeout or when the
        project stopped with work left."""

    def cancel(self) -> None:
        """Cancel pending arguments and stop running ones; finished results are kept."""

    def flush(self) -> None:
        """Return once every outcome known in this process is in the store."""


def reread(store: Store, project_id: int, name: str) -> ProjectRow:
    """The project's row as the store has it now.

    Raises:
        ConfigError: it was removed.
    """
    row = store.find_project(project_id)
    if row is None:
        raise ConfigError(f"project {name!r} was removed from {store.url}")
    return row


class StoredView:
    """The project as the store has it: what any process sees."""

    def __init__(self, store: Store, row: ProjectRow) -> None:
        self.store = store
        self.row = row  # as last read

    @property
    def executor(self) -> NodeExecutor | None:
        return None

    def refresh(self) -> ProjectRow:
        """Read the project's row again (see :func:`reread`)."""
        self.row = reread(self.store, self.row.id, self.row.name)
        return self.row

    def state(self) -> str:
        return self.refresh().effective_state

    def counts(self) -> dict[str, int]:
        counts = self.store.counts(self.row.id)
        if self.state() != "running":
            counts["pending"] += counts["running"]  # nobody runs them now
            counts["running"] = 0
        return counts

    def nothing_left(self) -> bool:
        """No argument is pending or running."""
        counts = self.store.counts(self.row.id)
        return counts["pending"] + counts["running"] == 0

    def results(self) -> list[tuple[tuple[Any, ...], Any]]:
        """``(args, result)`` for every finished argument, in submission order."""
        rows = self.store.arguments(self.row.id, ["done"])
        return [(decode(row.args), decode(row.result)) for row in rows if row.result]

    def errors(self) -> list[tuple[tuple[Any, ...], str]]:
        """``(args, error text)`` for every failed argument."""
        rows = self.store.arguments(self.row.id, ["failed"])
        return [(decode(row.args), row.error or "") for row in rows]

    def recent(self, n: int) -> list[tuple[tuple[Any, ...], Any]]:
        rows = self.store.arguments(self.row.id, ["done"], newest=n)
        return [(decode(row.args), decode(row.result)) for row in rows if row.result]

    def recent_errors(self, n: int) -> list[tuple[tuple[Any, ...], str]]:
        rows = self.store.arguments(self.row.id, ["failed"], newest=n)
        return [(decode(row.args), row.error or "") for row in rows]

    def outputs(self, n: int) -> list[tuple[str, str]]:
        if n <= 0:
            return []
        lines = [
            (row.host or "?", line)
            for row in self.store.last_outputs(self.row.id, n)
            for line in (row.output or "").splitlines()
        ]
        return lines[-n:]

    def elapsed(self) -> float:
        stats = self.store.host_stats(self.row.id)
        if not stats:
            return 0.0
        start = min(s.first_started for s in stats)
        end = time.time() if self.state() == "running" else max(s.last_finished for s in stats)
        return max(0.0, end - start)

    def _finished(self) -> bool:
        """Nothing is left to run, and a queued project has its final state (a node sets
        it just after its last outcome)."""
        if not self.nothing_left():
            return False
        return self.refresh().client != QUEUE_CLIENT or self.row.state != "running"

    def wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        pauses = poll_pauses()
        while not self._finished():
            if self.state() != "running":  # it may have ended since _finished() looked
                return self._finished()
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(next(pauses))
        return True

    def cancel(self) -> None:
        live_elsewhere = self.refresh().live
        if self.store.cancel_unfinished(self.row.id) or live_elsewhere:
            self.store.set_state(self.row.id, "cancelled")  # a finished project stays so
            self.store.notify(f"cancel:{self.row.id}")  # queue nodes stop its tasks now

    def flush(self) -> None:
        pass  # nothing of it is in this process's memory


class LiveView:
    """The project while this process runs it: its run's memory, and the run itself."""

    def __init__(self, run: ProjectRun, stored: StoredView) -> None:
        self.run = run
        self._stored = stored

    @property
    def active(self) -> bool:
        """True until the run has written its final state."""
        return self.run.live

    @property
    def executor(self) -> NodeExecutor | None:
        return self.run.executor

    def state(self) -> str:
        return "running"

    def counts(self) -> dict[str, int]:
        return self.run.counts()

    def recent(self, n: int) -> list[tuple[tuple[Any, ...], Any]]:
        return self.run.outcomes.recent(n)

    def recent_errors(self, n: int) -> list[tuple[tuple[Any, ...], str]]:
        return self.run.outcomes.recent_errors(n)

    def outputs(self, n: int) -> list[tuple[str, str]]:
        return self.run.outcomes.recent_output(n)

    def elapsed(self) -> float:
        return time.time() - self.run.first_started

    def wait(self, timeout: float | None) -> bool:
        """Also once the run ended: it knows how it ended, while the store may still say
        ``running`` (a run thread that failed leaves its live client's claim behind)."""
        if not self.run.wait(timeout):
            return False
        if self.run.final_state in ("done", "failed", "cancelled"):
            return True  # its last act was to count: nothing is left
        return self._stored.nothing_left()

    def cancel(self) -> None:
        self.run.cancel()

    def flush(self) -> None:
        self.run.flush()


__all__ = [
    "FIRST_POLL_SECONDS",
    "POLL_SECONDS",
    "LiveView",
    "ProjectView",
    "StoredView",
    "poll_pauses",
    "reread",
]
