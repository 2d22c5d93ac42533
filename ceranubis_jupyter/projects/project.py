"""Projects: named, stored units of work that outlive the kernel that started them.

A project is code (the source of a function), the function's name, and a list of argument
tuples. It runs in the background as soon as it is committed; every argument's outcome
goes to the project store (``store.py``) as it arrives, so another process, or this one
after a restart, can read its status and partial results, cancel it, or resume it::

    project = commit_project(SOURCE, "simulate", [(a, b) for a in A for b in B])
    project.status()            # (done, total), also while it runs
    project.results()           # [(args, result), ...] finished so far, in order
    Project.load("simulate_1").resume()   # in a new process: runs only what is not done

Three ways in: :func:`commit_project` (source text), ``CeranubisExecutor.commit`` (a
function object) and the ``%%ceranubis`` magic; the last two go through
:func:`commit_function`. Both functions are in ``project_commit.py`` and importable from
here. The run itself (threads, batching,
heartbeats) is in ``project_run.py``.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ..cluster.executor import NodeExecutor
from ..cluster.hosts import HostSpec
from ..errors import ConfigError, StoreError
from ..exits import Stage, on_exit
from .code import function_of, host_names
from .records import ProjectRow, ProjectSummary, this_client
from .run import ProjectRun, decode
from .store import Store
from .stores import shared_store

log = logging.getLogger("ceranubis")

# Seconds between store reads while waiting on a project run by another process.
POLL_SECONDS = 0.25

_live: weakref.WeakSet[Project] = weakref.WeakSet()


class Project:
    """A named, stored project: its definition, its progress, its results.

    Get one from :func:`commit_project`, :func:`commit_function`,
    ``CeranubisExecutor.commit`` or :meth:`Project.load`. Reads go to memory while this
    process runs the project and to the store otherwise, so a project loaded in another
    process shows the same numbers (up to the ~0.1 s write batching).
    """

    def __init__(self, store: Store, row: ProjectRow) -> None:
        self._store = store
        self._row = row
        self._run: ProjectRun | None = None
        self._listeners: list[Callable[[Project], None]] = []

    @property
    def id(self) -> int:
        """The project's id in its store."""
        return self._row.id

    @property
    def name(self) -> str:
        """The project's unique name."""
        return self._row.name

    @property
    def target(self) -> str:
        """The name of the function it runs."""
        return self._row.target

    @property
    def code(self) -> str:
        """The source the function came from (may be empty for a function object)."""
        return self._row.code

    @property
    def created(self) -> float:
        """When it was committed (seconds since the epoch)."""
        return self._row.created

    @property
    def hosts(self) -> list[str]:
        """The hosts it runs (or last ran) on; empty for the embedded default."""
        return list(self._row.hosts)

    @property
    def store(self) -> Store:
        """The store that holds the project."""
        return self._store

    @property
    def executor(self) -> NodeExecutor | None:
        """The executor running the project in this process, if it runs here now."""
        return self._run.executor if self._run is not None and self._run.live else None

    @property
    def state(self) -> str:
        """``running``, ``done``, ``failed``, ``cancelled`` or ``stopped`` (work left, no
        live client)."""
        if self._run is not None and self._run.live:
            return "running"
        return self._refresh().effective_state

    def __repr__(self) -> str:
        done, total = self.status()
        return f"<Project {self.name!r} {self.state} {done}/{total}>"

    def _repr_html_(self) -> str:
        from .views import project_html  # the notebook's view: name, status, hosts

        return project_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        from .views import project_pretty

        project_pretty(self, printer, cycle)

    # ------------------------------------------------------------------ progress

    def counts(self) -> dict[str, int]:
        """Arguments per state: ``pending``, ``running``, ``done``, ``failed``,
        ``cancelled``."""
        if self._run is not None and self._run.live:
            return self._run.counts()
        counts = self._store.counts(self.id)
        if self._refresh().effective_state != "running":
            counts["pending"] += counts["running"]  # nobody runs them now
            counts["running"] = 0
        return counts

    def status(self) -> tuple[int, int]:
        """``(done, total)``."""
        counts = self.counts()
        return counts["done"], sum(counts.values())

    def results(self) -> list[tuple[tuple[Any, ...], Any]]:
        """``(args, result)`` for every finished argument, in submission order."""
        self._flush()
        rows = self._store.arguments(self.id, ["done"])
        return [(decode(row.args), decode(row.result)) for row in rows if row.result]

    def errors(self) -> list[tuple[tuple[Any, ...], str]]:
        """``(args, error text)`` for every failed argument; the text holds the remote
        traceback."""
        self._flush()
        return [
            (decode(row.args), row.error or "")
            for row in self._store.arguments(self.id, ["failed"])
        ]

    def recent(self, n: int = 5) -> list[tuple[tuple[Any, ...], Any]]:
        """The last ``n`` finished results, newest last."""
        if self._run is not None and self._run.live:
            with self._run._lock:
                return list(self._run.tally.recent)[-n:] if n > 0 else []
        rows = self._store.arguments(self.id, ["done"], newest=n)
        return [(decode(row.args), decode(row.result)) for row in rows if row.result]

    def recent_errors(self, n: int = 3) -> list[tuple[tuple[Any, ...], str]]:
        """The last ``n`` failures, newest last."""
        if self._run is not None and self._run.live:
            with self._run._lock:
                return list(self._run.tally.errors)[-n:] if n > 0 else []
        rows = self._store.arguments(self.id, ["failed"], newest=n)
        return [(decode(row.args), row.error or "") for row in rows]

    def outputs(self, n: int = 20) -> list[tuple[str, str]]:
        """``(host, line)``: the last ``n`` lines the tasks printed."""
        if n <= 0:
            return []
        if self._run is not None and self._run.live:
            with self._run._lock:
                return list(self._run.tally.output)[-n:]
        lines = [
            (row.host or "?", line)
            for row in self._store.last_outputs(self.id, n)
            for line in (row.output or "").splitlines()
        ]
        return lines[-n:]

    def elapsed(self) -> float:
        """Seconds from the first task's start to the last finish (or to now while it
        runs)."""
        if self._run is not None and self._run.live:
            return time.time() - self._first_start
        stats = self._store.host_stats(self.id)
        if not stats:
            return 0.0
        start = min(s.first_started for s in stats)
        end = time.time() if self.state == "running" else max(s.last_finished for s in stats)
        return max(0.0, end - start)

    def add_listener(self, callback: Callable[[Project], None]) -> None:
        """Call ``callback(project)`` after each argument finishes, from the scheduler's
        thread: keep it quick (no I/O; poke another thread)."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ control

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or running; ``False`` on timeout or when the
        project stopped with work left (see :meth:`resume`)."""
        if self._run is not None:
            if not self._run.finished.wait(timeout):
                return False
            if self._run.final_state in ("done", "failed", "cancelled"):
                return True  # its last act was to count: nothing is left
            return self._nothing_left()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._nothing_left():
            if self.state != "running":
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def cancel(self) -> None:
        """Cancel pending arguments and stop running ones; finished results are kept.

        Works from any process: a project run elsewhere notices within a heartbeat.
        """
        if self._run is not None and self._run.live:
            self._run.cancel()
            return
        live_elsewhere = self._refresh().live
        if self._store.cancel_unfinished(self.id) or live_elsewhere:
            self._store.set_state(self.id, "cancelled")  # a finished project stays as it is

    def resume(
        self, executor: NodeExecutor | None = None, *, hosts: Sequence[HostSpec] | None = None
    ) -> Project:
        """Run every argument that has no result yet (pending, interrupted, failed,
        cancelled); finished results are kept.

        Args:
            executor: run on this executor; by default a new one on ``hosts`` (or the
                project's hosts), shut down when the project finishes.
            hosts: hosts for that new executor.

        Raises:
            StoreError: another live process runs the project.
            ConfigError: the function cannot be rebuilt, or bad hosts.
        """
        if self._run is not None and self._run.live:
            raise ConfigError(f"project {self.name!r} is already running in this process")
        row = self._refresh()
        if row.live:
            raise StoreError(
                f"project {self.name!r} is still running (client {row.client}); wait for "
                "it, or cancel it there"
            )
        counts = self._store.counts(self.id)
        if counts["done"] == sum(counts.values()):
            self._store.set_state(self.id, "done", release=True)
            return self
        fn = function_of(row)
        owned = executor is None
        if executor is None:
            spec_hosts = list(hosts) if hosts is not None else list(row.hosts) or None
            executor = NodeExecutor(spec_hosts)
        try:
            self._claim(row, executor, hosts)
        except BaseException:
            if owned:
                executor.shutdown(wait=False, stop_running=True)
            raise
        self._store.reset_unfinished(self.id)
        rows = self._store.arguments(self.id, ["pending"])
        blobs, ids = [r.args for r in rows], [r.id for r in rows]
        self._start(executor, owned, fn, [decode(blob) for blob in blobs], blobs, ids)
        return self

    @classmethod
    def load(cls, name_or_id: str | int, store: Store | str | None = None) -> Project:
        """The project with this name (or id) from the store.

        Raises:
            ConfigError: no such project.
            StoreError: the store cannot be reached.
        """
        store = shared_store(store)
        row = store.find_project(name_or_id)
        if row is None:
            raise ConfigError(
                f"no project {name_or_id!r} in {store.url}; `ceranubis projects` lists them"
            )
        for project in list(_live):
            if project._store is store and project.id == row.id:
                return project
        return cls(store, row)

    # ------------------------------------------------------------------ internals

    def _refresh(self) -> ProjectRow:
        row = self._store.find_project(self._row.id)
        if row is None:
            raise ConfigError(f"project {self.name!r} was removed from {self._store.url}")
        self._row = row
        return row

    def _nothing_left(self) -> bool:
        counts = self._store.counts(self.id)
        return counts["pending"] + counts["running"] == 0

    def _flush(self) -> None:
        if self._run is not None:
            self._run.flush()

    def _claim(
        self, row: ProjectRow, executor: NodeExecutor, hosts: Sequence[HostSpec] | None
    ) -> None:
        if not self._store.claim(row, this_client()):
            raise StoreError(f"another process resumed project {self.name!r} at the same moment")
        if hosts is not None:
            self._store.set_hosts(self.id, host_names(hosts))
        self._refresh()

    def _start(
        self,
        executor: NodeExecutor,
        owned: bool,
        fn: Callable[..., Any],
        args: Sequence[tuple[Any, ...]],
        blobs: Sequence[bytes],
        ids: Sequence[int] | None,
        chunksize: int = 1,
        timeout: float | None = None,
        run_store: Store | None = None,
    ) -> None:
        """Start the run; ``ids=None`` (with ``run_store``): a new project whose insert is
        still open, every argument pending (no store reads: they would wait for it)."""
        if ids is None:
            counts = dict.fromkeys(("running", "done", "failed", "cancelled"), 0)
            counts["pending"] = len(args)
            self._first_start = time.time()
        else:
            counts = self._store.counts(self.id)
            previous = self._store.host_stats(self.id)
            self._first_start = min([time.time(), *(s.first_started for s in previous)])
        options = executor.options(timeout=timeout).task_options
        self._run = ProjectRun(
            run_store or self._store.reopen(),
            self.id,
            this_client(),
            executor,
            owned,
            fn,
            args,
            blobs,
            ids,
            counts,
            self._notify,
            chunksize,
            options,
        )
        _live.add(self)
        self._run.start()

    def _created(self, ids: Sequence[int]) -> None:
        if self._run is not None:
            self._run.created(ids)

    def _abandon(self) -> None:
        if self._run is not None:
            self._run.abandon()
        _live.discard(self)

    def _notify(self) -> None:
        for callback in self._listeners:
            try:
                callback(self)
            except Exception:  # a broken listener must not stop the scheduler
                log.exception("project listener failed")


# ---------------------------------------------------------------------- stored projects


def list_projects(store: Store | str | None = None) -> list[ProjectSummary]:
    """Every project in the store (name, id, created, state, done, total), oldest first."""
    return shared_store(store).list_projects()


def remove_project(
    name_or_id: str | int, store: Store | str | None = None, *, force: bool = False
) -> None:
    """Delete a project and its results.

    Raises:
        ConfigError: no such project.
        StoreError: it is running (in a live process) and ``force`` is false.
    """
    project = Project.load(name_or_id, store)
    if project._run is not None and project._run.live:
        project.cancel()
    row = project._refresh()
    if row.live and not force:
        raise StoreError(
            f"project {row.name!r} is running (client {row.client}); cancel it first, "
            "or remove it with force"
        )
    project._store.remove_project(row.id)


def _stop_live_runs() -> None:
    for project in list(_live):
        if project._run is not None and project._run.live:
            project._run.stop_at_exit()


on_exit(Stage.RUNS, _stop_live_runs)

__all__ = [
    "Project",
    "ProjectSummary",
    "list_projects",
    "remove_project",
]
