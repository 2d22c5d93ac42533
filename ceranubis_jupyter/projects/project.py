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
:func:`commit_function`. Both are in ``commit.py``. A :class:`Project` reads and acts
through one :class:`~ceranubis_jupyter.projects.view.ProjectView`: its run while this
process runs it (``run.py``: threads, batching, heartbeats), the store otherwise.

Trust: results, arguments and the function are stored pickled. Reading results unpickles
them and :meth:`Project.resume` rebuilds the stored function and runs it, so whoever can
write the store can run code in every process that reads or resumes its projects: keep a
SQLite store private, and share a PostgreSQL store only with people you would give your
account (README, "Trust and security").
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ..cluster.executor import NodeExecutor
from ..cluster.hosts import HostSpec
from ..errors import ConfigError, StoreError
from .code import function_of, host_names
from .records import ArgumentRow, ProjectRow, ProjectSummary, this_client
from .refs import ResultOf, with_refs
from .rerun import reusable_positions
from .rows import decode
from .run import ProjectRun, RunPlan, RunStart
from .store import Store
from .stores import shared_store
from .view import LiveView, ProjectView, StoredView, reread

log = logging.getLogger("ceranubis")

# Projects whose run started in this process: Project.load returns the same object.
_started: weakref.WeakSet[Project] = weakref.WeakSet()


class Project:
    """A named, stored project: its definition, its progress, its results.

    Get one from :func:`commit_project`, :func:`commit_function`,
    ``CeranubisExecutor.commit`` or :meth:`Project.load`. Reads go to memory while this
    process runs the project and to the store otherwise, so a project loaded in another
    process shows the same numbers (up to the ~0.1 s write batching).

    Args:
        store: the store that holds it; ``row``: its row there.
        run: its run in this process, not started yet (the project starts it).
    """

    def __init__(self, store: Store, row: ProjectRow, run: ProjectRun | None = None) -> None:
        self._stored = StoredView(store, row)
        self._live: LiveView | None = None
        self._listeners: list[Callable[[Project], None]] = []
        self._reused: int | None = None  # read once: it changes only when we resume
        if run is not None:
            self._attach(run)

    @property
    def id(self) -> int:
        """The project's id in its store."""
        return self._stored.row.id

    @property
    def name(self) -> str:
        """The project's unique name."""
        return self._stored.row.name

    @property
    def version(self) -> int:
        """Which version of its name this project is (1, 2, ...): a re-run with other
        code or arguments makes the next one."""
        return self._stored.row.version

    @property
    def changes(self) -> str:
        """How this version differs from the one before (``code changed, 10 arguments
        added``); empty for a first version."""
        return self._stored.row.changes

    @property
    def reused(self) -> int:
        """How many arguments took a stored result (same code, same arguments) instead of
        running."""
        if self._reused is None:
            self._reused = self.store.reused_count(self.id)
        return self._reused

    def reused_arguments(self) -> list[tuple[Any, ...]]:
        """The argument tuples whose result was taken from the store, in order."""
        rows = self.store.arguments(self.id, ["done"])
        return [decode(row.args) for row in rows if row.reused]

    @property
    def target(self) -> str:
        """The name of the function it runs."""
        return self._stored.row.target

    @property
    def code(self) -> str:
        """The source the function came from (may be empty for a function object)."""
        return self._stored.row.code

    @property
    def created(self) -> float:
        """When it was committed (seconds since the epoch)."""
        return self._stored.row.created

    @property
    def hosts(self) -> list[str]:
        """The hosts it runs (or last ran) on; empty for the embedded default."""
        return list(self._stored.row.hosts)

    @property
    def store(self) -> Store:
        """The store that holds the project."""
        return self._stored.store

    @property
    def executor(self) -> NodeExecutor | None:
        """The executor running the project in this process, if it runs here now."""
        return self._view().executor

    @property
    def state(self) -> str:
        """``running``, ``done``, ``failed``, ``cancelled`` or ``stopped`` (work left, no
        live client)."""
        return self._view().state()

    def __repr__(self) -> str:
        done, total = self.status()
        return f"<Project {self.name!r} v{self.version} {self.state} {done}/{total}>"

    def _repr_html_(self) -> str:
        from .display import project_html  # the notebook's view: name, status, hosts

        return project_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        from .display import project_pretty

        project_pretty(self, printer, cycle)

    # ------------------------------------------------------------------ progress

    def counts(self) -> dict[str, int]:
        """Arguments per state: ``pending``, ``running``, ``done``, ``failed``,
        ``cancelled``."""
        return self._view().counts()

    def result_refs(self) -> list[ResultOf]:
        """A reference to each argument's result, in order: arguments of another committed
        project that start as these results are stored (see :mod:`~.refs`)."""
        return [ResultOf(self.id, position) for position in range(sum(self.counts().values()))]

    def status(self) -> tuple[int, int]:
        """``(done, total)``."""
        counts = self.counts()
        return counts["done"], sum(counts.values())

    def results(self) -> list[tuple[tuple[Any, ...], Any]]:
        """``(args, result)`` for every finished argument, in submission order."""
        self._view().flush()
        return self._stored.results()

    def errors(self) -> list[tuple[tuple[Any, ...], str]]:
        """``(args, error text)`` for every failed argument; the text holds the remote
        traceback."""
        self._view().flush()
        return self._stored.errors()

    def recent(self, n: int = 5) -> list[tuple[tuple[Any, ...], Any]]:
        """The last ``n`` finished results, newest last."""
        return self._view().recent(n)

    def recent_errors(self, n: int = 3) -> list[tuple[tuple[Any, ...], str]]:
        """The last ``n`` failures, newest last."""
        return self._view().recent_errors(n)

    def outputs(self, n: int = 20) -> list[tuple[str, str]]:
        """``(host, line)``: the last ``n`` lines the tasks printed."""
        return self._view().outputs(n)

    def elapsed(self) -> float:
        """Seconds from the first task's start to the last finish (or to now while it
        runs)."""
        return self._view().elapsed()

    def add_listener(self, callback: Callable[[Project], None]) -> None:
        """Call ``callback(project)`` after each argument finishes, from the scheduler's
        thread: keep it quick (no I/O; poke another thread)."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ control

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or running; ``False`` on timeout or when the
        project stopped with work left (see :meth:`resume`)."""
        # A run of this process answers even once it ended: it knows how it ended.
        return (self._live or self._stored).wait(timeout)

    def cancel(self) -> None:
        """Cancel pending arguments and stop running ones; finished results are kept.

        Works from any process: a project run elsewhere notices within a heartbeat.
        """
        self._view().cancel()

    def resume(
        self,
        executor: NodeExecutor | None = None,
        *,
        hosts: Sequence[HostSpec] | None = None,
        reuse: bool = True,
    ) -> Project:
        """Run every argument that has no result yet (pending, interrupted, failed,
        cancelled); finished results are kept.

        Args:
            executor: run on this executor; by default a new one on ``hosts`` (or the
                project's hosts), shut down when the project finishes.
            hosts: hosts for that new executor.
            reuse: first take the stored result of any such argument that a function of
                the same code finished (see ``commit_project``).

        Raises:
            StoreError: another live process runs the project.
            ConfigError: the function cannot be rebuilt, or bad hosts. (It runs stored code.)
        """
        row = self._resumable()
        if row is None:
            return self  # every argument is done
        fn = function_of(row)
        executor, owned = self._claim(row, executor, hosts)
        self.store.reset_unfinished(self.id)
        rows = self.store.arguments(self.id, ["pending"])
        if reuse:
            rows = self._take_stored(row, rows)
        if not rows:  # every argument left took a stored result
            self.store.set_state(self.id, "done", release=True)
            if owned:
                executor.shutdown(wait=False)
            return self
        blobs = [r.args for r in rows]
        plan = RunPlan(fn, [decode(b) for b in blobs], blobs, executor, owned)
        start = RunStart.stored(self.store, self.id, [r.id for r in rows])
        self._attach(ProjectRun(with_refs(plan, self.store), start, self.store.reopen(), self.id))
        return self

    def _take_stored(self, row: ProjectRow, rows: list[ArgumentRow]) -> list[ArgumentRow]:
        """Give pending ``rows`` the stored results they can take; returns the others."""
        found = reusable_positions(self.store, row.code_hash, [r.args for r in rows])
        if not found:
            return rows
        self.store.reuse([(rows[at].id, holder) for at, holder in found])
        self._reused = None
        taken = {at for at, _ in found}
        return [r for at, r in enumerate(rows) if at not in taken]

    @classmethod
    def load(
        cls, name_or_id: str | int, store: Store | str | None = None, *, version: int | None = None
    ) -> Project:
        """The project with this name (its latest version, or ``version``), or this id,
        from the store.

        Raises:
            ConfigError: no such project.
            StoreError: the store cannot be reached.
        """
        store = shared_store(store)
        row = store.find_project(name_or_id, version)
        if row is None:
            which = "" if version is None else f" version {version}"
            raise ConfigError(
                f"no project {name_or_id!r}{which} in {store.url}; `ceranubis projects "
                "--all` lists them"
            )
        for project in list(_started):
            if project.store is store and project.id == row.id:
                return project
        return cls(store, row)

    # ------------------------------------------------------------------ internals

    def _view(self) -> ProjectView:
        """The run of this process while it runs, else the store."""
        live = self._live
        return live if live is not None and live.active else self._stored

    def _resumable(self) -> ProjectRow | None:
        """The row to resume from; ``None`` when every argument is done (marked so)."""
        if self.executor is not None:
            raise ConfigError(f"project {self.name!r} is already running in this process")
        row = self._stored.refresh()
        if row.live:
            raise StoreError(
                f"project {self.name!r} is still running (client {row.client}); wait for "
                "it, or cancel it there"
            )
        counts = self.store.counts(self.id)
        if counts["done"] == sum(counts.values()):
            if row.state != "done":
                self.store.set_state(self.id, "done", release=True)
            return None
        return row

    def _claim(
        self, row: ProjectRow, executor: NodeExecutor | None, hosts: Sequence[HostSpec] | None
    ) -> tuple[NodeExecutor, bool]:
        """Become the project's client; returns the executor to run on, and whether it
        is ours (made here, on ``hosts`` or the project's hosts)."""
        owned = executor is None
        if executor is None:
            spec_hosts = list(hosts) if hosts is not None else list(row.hosts) or None
            executor = NodeExecutor(spec_hosts)
        try:
            if not self.store.claim(row, this_client()):
                raise StoreError(
                    f"another process resumed project {self.name!r} at the same moment"
                )
            if hosts is not None:
                self.store.set_hosts(self.id, host_names(hosts))
            self._stored.refresh()
        except BaseException:
            if owned:
                executor.shutdown(wait=False, stop_running=True)
            raise
        return executor, owned

    def _attach(self, run: ProjectRun) -> None:
        """Run here: reads go to ``run`` until it ends."""
        self._live = LiveView(run, self._stored)
        _started.add(self)
        run.start(self._notify)

    def _notify(self) -> None:
        for callback in self._listeners:
            try:
                callback(self)
            except Exception:  # a broken listener must not stop the scheduler
                log.exception("project listener failed")


# ---------------------------------------------------------------------- stored projects


def list_projects(
    store: Store | str | None = None, *, every_version: bool = False
) -> list[ProjectSummary]:
    """Projects in the store (name, id, created, state, done, total, version), oldest
    first: the latest version of each name, or ``every_version``."""
    return shared_store(store).list_projects(every_version=every_version)


def remove_project(
    name_or_id: str | int,
    store: Store | str | None = None,
    *,
    force: bool = False,
    version: int | None = None,
) -> int:
    """Delete a project and its results: by id, that project; by name, every version of
    it, or ``version``. Results that other projects reuse move to them. Returns how many
    projects were removed.

    Raises:
        ConfigError: no such project.
        StoreError: one is running (in a live process) and ``force`` is false.
    """
    store = shared_store(store)
    latest = Project.load(name_or_id, store, version=version)
    by_name = isinstance(name_or_id, str) and not name_or_id.isdigit() and version is None
    ids = store.versions(latest.name) if by_name else [latest.id]
    for project_id in ids:
        _remove_one(store, project_id, force)
    return len(ids)


def _remove_one(store: Store, project_id: int, force: bool) -> None:
    project = Project.load(project_id, store)
    if project.executor is not None:  # it runs in this process: stop it first
        project.cancel()
    row = reread(store, project.id, project.name)
    if row.live and not force:
        raise StoreError(
            f"project {row.name!r} (version {row.version}) is running (client {row.client}); "
            "cancel it first, or remove it with force"
        )
    store.remove_project(row.id)


__all__ = [
    "Project",
    "ProjectSummary",
    "list_projects",
    "remove_project",
]
