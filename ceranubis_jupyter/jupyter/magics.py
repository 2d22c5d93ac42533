"""IPython magics: ``%%ceranubis FN over ARGS`` and ``%ceranubis hosts|projects|...``.

``%load_ext ceranubis_jupyter`` registers :class:`CeranubisMagics`. The cell magic runs
its cell in the user namespace (so ``FN`` is defined there), commits a project running
``FN`` over the argument tuples of ``ARGS``, shows the live widget and binds the
:class:`~ceranubis_jupyter.project.Project` to a variable; unless ``--no-wait`` it then
waits, and a kernel interrupt cancels the project (finished results are kept).
Misuse raises :class:`~IPython.core.error.UsageError` with the usage line.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from ..cluster.hosts import LOCAL
from ..errors import ConfigError, StoreError
from ..projects.display import HostsTable, ProjectsTable
from ..projects.store import Store
from .magic_args import (
    CELL_USAGE,
    DEFAULT_VAR,
    LINE_USAGE,
    parse_cell_line,
    parse_line,
    split_hosts,
    variable_name,
)
from .session import POOL, follow, run_cell_body, wait_hosts_ready, wait_or_cancel


def as_argument_tuples(values: Any) -> list[tuple[Any, ...]]:
    """Each item as an argument tuple: tuples stay, anything else becomes ``(item,)``."""
    try:
        items = list(values)
    except TypeError:
        raise UsageError(f"ARGS must be iterable, got {type(values).__name__}") from None
    return [item if isinstance(item, tuple) else (item,) for item in items]


class _CellFailed(Exception):
    """The cell's own code raised; IPython has already shown its traceback."""

    def _render_traceback_(self) -> list[str]:
        return ["the cell raised before the project was committed; nothing was run"]


@magics_class
class CeranubisMagics(Magics):
    """``%%ceranubis`` and ``%ceranubis``; see the module docstring."""

    @cell_magic("ceranubis")  # type: ignore[arg-type]
    def ceranubis_cell(self, line: str, cell: str) -> None:
        """Run the cell, then FN over every argument tuple of ARGS on the hosts.

        ``%%ceranubis FN over ARGS [--hosts H1,H2,...] [--name NAME] [--store URL]
        [--chunksize N] [--workers N] [--timeout S] [--no-wait] [--out VAR] [--replace]
        [--no-reuse]``

        The project is bound to VAR (default: NAME made a Python name, else
        ``_ceranubis``). Without ``--no-wait`` the cell waits; interrupting the kernel
        cancels the project and keeps the finished results. Running the cell again with
        the same code and ARGS follows the same project (only what has no result runs);
        with other code or ARGS it makes a new version of NAME (``--replace``: and
        removes the earlier ones). Arguments that the same code finished before take the
        stored result unless ``--no-reuse``. ``--queue``: store the project for the
        node daemons (``ceranubis node --store URL``) instead of running it here;
        ``--priority`` and ``--group`` say which first and where.
        """
        fn_name, expression, options = parse_cell_line(line)
        store = self._open_target(options.store, options.name)
        if not run_cell_body(self.shell, line, cell):
            raise _CellFailed()
        fn = self._evaluate(fn_name, "FN")
        if not callable(fn):
            raise UsageError(f"{fn_name} is not callable\nusage: {CELL_USAGE}")
        args = as_argument_tuples(self._evaluate(expression, "ARGS"))
        executor = (
            None
            if options.queue
            else self._executor(split_hosts(options.hosts), options.workers, CELL_USAGE)
        )
        project = self._commit(executor, fn, args, cell, store, options)
        self._bind(project, options.out or variable_name(options.name))
        live = follow(project, executor, waiting=not options.no_wait)
        if not options.no_wait:
            wait_or_cancel(project, live)

    @line_magic("ceranubis")  # type: ignore[arg-type]
    def ceranubis_line(self, line: str) -> Any:
        """Inspect and steer hosts and projects.

        ``%ceranubis hosts [--hosts H1,H2] [--workers N]`` · ``%ceranubis projects
        [--store URL]`` · ``%ceranubis status|results|cancel|rm NAME`` ·
        ``%ceranubis resume NAME [--hosts H1,H2] [--workers N] [--no-wait]``
        """
        options = parse_line(line)
        if options.command in ("hosts", "projects"):
            return self._hosts(options) if options.command == "hosts" else self._projects(options)
        if not options.name:
            raise UsageError(f"{options.command} needs a project NAME\nusage: {LINE_USAGE}")
        return getattr(self, f"_{options.command}")(options)

    # ------------------------------------------------------------------ cell helpers

    def _evaluate(self, expression: str, what: str) -> Any:
        assert self.shell is not None
        try:
            return eval(expression, self.shell.user_global_ns, self.shell.user_ns)
        except Exception as error:
            raise UsageError(
                f"{what} ({expression}) failed: {type(error).__name__}: {error}\n"
                f"usage: {CELL_USAGE}"
            ) from None

    def _open_target(self, store: str | None, name: str | None) -> Store:
        """The store, opened, and ``name`` checked: before the cell runs."""
        from ..projects.commit import check_project_name
        from ..projects.stores import shared_store

        try:
            opened = shared_store(store)
            if name is not None:
                check_project_name(name)
        except (ConfigError, StoreError) as error:
            raise UsageError(f"{error}\nusage: {CELL_USAGE}") from None
        return opened

    def _executor(self, hosts: list[str] | None, workers: int | None, usage: str) -> Any:
        try:
            return POOL.get(hosts, workers)
        except ConfigError as error:
            raise UsageError(f"{error}\nusage: {usage}") from None

    def _commit(
        self, executor: Any, fn: Any, args: list[tuple[Any, ...]], cell: str, store: Store,
        options: argparse.Namespace,
    ) -> Any:  # fmt: skip
        from ..projects.commit import commit_function

        try:
            return commit_function(
                executor, fn, args, name=options.name, store=store, code=cell,
                chunksize=options.chunksize, timeout=options.timeout,
                replace=options.replace, reuse=not options.no_reuse, queue=options.queue,
                priority=options.priority, group=options.group,
            )  # fmt: skip
        except (ConfigError, StoreError) as error:
            raise UsageError(f"{error}\nusage: {CELL_USAGE}") from None

    def _bind(self, project: Any, variable: str) -> None:
        assert self.shell is not None
        self.shell.user_ns[variable] = project
        self.shell.user_ns[DEFAULT_VAR] = project

    # ------------------------------------------------------------------ line commands

    def _hosts(self, options: argparse.Namespace) -> HostsTable:
        executor = self._executor(split_hosts(options.hosts), options.workers, LINE_USAGE)
        return HostsTable(wait_hosts_ready(executor))

    def _projects(self, options: argparse.Namespace) -> ProjectsTable:
        from ..projects.project import list_projects

        try:
            return ProjectsTable(list_projects(options.store, every_version=options.all))
        except StoreError as error:
            raise UsageError(str(error)) from None

    def _load(self, options: argparse.Namespace) -> Any:
        from ..projects.project import Project

        try:
            return Project.load(options.name, options.store, version=options.version)
        except (ConfigError, StoreError) as error:
            raise UsageError(str(error)) from None

    def _status(self, options: argparse.Namespace) -> Any:
        return self._load(options)

    def _results(self, options: argparse.Namespace) -> Any:
        return self._load(options).results()

    def _cancel(self, options: argparse.Namespace) -> Any:
        project = self._load(options)
        project.cancel()
        return project

    def _rm(self, options: argparse.Namespace) -> None:
        from ..projects.project import remove_project

        try:
            removed = remove_project(options.name, options.store, version=options.version)
        except (ConfigError, StoreError) as error:
            raise UsageError(str(error)) from None
        which = f" version {options.version}" if options.version is not None else ""
        count = f" ({removed} versions)" if removed > 1 else ""
        print(f"removed project {options.name!r}{which}{count}")

    def _resume(self, options: argparse.Namespace) -> Any:
        project = self._load(options)
        if options.hosts is None:  # where it ran before
            hosts = split_hosts(",".join(project.hosts)) if project.hosts else None
        else:
            hosts = split_hosts(options.hosts, LINE_USAGE)
        executor = self._executor(hosts, options.workers, LINE_USAGE)
        # the new hosts as given; the embedded default is recorded as "local"
        recorded = None if options.hosts is None else hosts or [LOCAL]
        try:
            project.resume(executor, hosts=recorded)
        except (ConfigError, StoreError) as error:
            raise UsageError(str(error)) from None
        self._bind(project, variable_name(project.name))
        live = follow(project, executor, waiting=not options.no_wait)
        if not options.no_wait:
            wait_or_cancel(project, live)
        return None


def load(shell: Any) -> None:
    """Register the magics on ``shell`` (``%load_ext ceranubis_jupyter``)."""
    shell.register_magics(CeranubisMagics)


def unload(shell: Any) -> None:
    """Remove the magics and shut down the executors they started."""
    magics = shell.magics_manager.magics
    magics["line"].pop("ceranubis", None)
    magics["cell"].pop("ceranubis", None)
    POOL.close()
