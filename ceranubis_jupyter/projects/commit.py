"""Committing a project: check it, store it under a free name, and start its run.

:func:`commit_project` (source text) and :func:`commit_function` (a function object;
``CeranubisExecutor.commit`` and the ``%%ceranubis`` magic use it) insert the project's
row and arguments in one transaction while its run starts submitting, and return its
:class:`~ceranubis_jupyter.project.Project`; ``project.py`` re-exports both. This module
also keeps one open store per location in this process (:func:`shared_store`), which
``project.py`` uses for loading and listing projects.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..cluster.executor import NodeExecutor
from ..cluster.hosts import HostSpec
from ..errors import ConfigError, ConfigTypeError
from .code import (
    check_args,
    check_chunksize,
    check_shippable,
    compile_code,
    encode_args,
    function_from_code,
    host_names,
    source_of,
)
from .project import Project
from .records import ProjectRow, this_client
from .store import Store
from .stores import shared_store

# Tries to find a free default name when another process takes the same one meanwhile.
NAME_ATTEMPTS = 5
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def commit_project(
    code: str,
    target: str,
    args: Sequence[tuple[Any, ...]],
    *,
    hosts: Sequence[HostSpec] | None = None,
    name: str | None = None,
    store: Store | str | None = None,
    chunksize: int = 1,
) -> Project:
    """Store a project and start running it in the background; returns at once.

    Args:
        code: Python source that defines ``target`` (it is run here, in a fresh namespace,
            and the function travels to the nodes by value).
        target: the name of the function to call once per argument tuple.
        args: a list of tuples: ``target(*t)`` runs for each ``t``.
        hosts: where to run (default: the embedded default); a new executor is started
            and shut down when the project finishes.
        name: a unique name (default: ``<target>_<n>``).
        store: a :class:`Store`, a path or URL (default: ``$CERANUBIS_STORE`` or the
            user's data directory).
        chunksize: arguments per task (fewer, bigger messages for tiny functions).

    Raises:
        ConfigError: bad args, code that does not compile, no such function, duplicate
            name, bad hosts (nothing is stored or run).
        StoreError: the store cannot be reached or is corrupt.
    """
    items = check_args(args)
    check_chunksize(chunksize)
    fn = function_from_code(code, target, name or target)
    check_shippable(fn)
    blobs = encode_args(items)
    store = shared_store(store)
    auto = name is None
    name = _pick_name(store, target, name)
    executor = NodeExecutor(hosts)
    try:
        return _create(
            store,
            _Definition(name, auto, code, target, host_names(hosts), None, blobs),
            _Launch(executor, True, fn, items, chunksize, None),
        )
    except BaseException:
        executor.shutdown(wait=False, stop_running=True)
        raise


def commit_function(
    executor: NodeExecutor,
    fn: Callable[..., Any],
    args: Sequence[tuple[Any, ...]],
    *,
    name: str | None = None,
    store: Store | str | None = None,
    code: str | None = None,
    chunksize: int = 1,
    timeout: float | None = None,
) -> Project:
    """Store a project for a function object and run it on ``executor``; returns at once.

    Args:
        executor: runs the tasks (it is not shut down when the project finishes).
        fn: the function; it is also stored (dill) so a new process can resume it.
        args: a list of tuples: ``fn(*t)`` runs for each ``t``.
        name: a unique name (default: ``<fn name>_<n>``).
        store: a :class:`Store`, a path or URL (default: ``$CERANUBIS_STORE`` or the
            user's data directory).
        code: the source to record (the magic passes its cell); default: the function's
            source when ``inspect`` finds it.
        chunksize: arguments per task; ``timeout``: seconds per task (0/None: none).

    Raises:
        ConfigError: bad args, a function that cannot be serialized, code that does not
            compile, duplicate name (nothing is stored or run).
        StoreError: the store cannot be reached or is corrupt.
    """
    if not callable(fn):
        raise ConfigTypeError(f"{fn!r} is not callable; pass the function to run")
    items = check_args(args)
    check_chunksize(chunksize)
    target = getattr(fn, "__name__", type(fn).__name__)
    if code is None:
        code = source_of(fn)
    else:
        compile_code(code, target)
    blob = check_shippable(fn)
    blobs = encode_args(items)
    store = shared_store(store)
    auto = name is None
    name = _pick_name(store, target, name)
    hosts = [info.host for info in executor.hosts()]
    return _create(
        store,
        _Definition(name, auto, code, target, hosts, blob, blobs),
        _Launch(executor, False, fn, items, chunksize, timeout),
    )


def check_project_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a valid project name."""
    if not isinstance(name, str) or not _NAME.match(name) or name.isdigit():
        raise ConfigError(
            f"bad project name {name!r}: use up to 100 letters, digits, '_', '-' or '.', "
            "not only digits"
        )


def _pick_name(store: Store, target: str, name: str | None) -> str:
    if name is not None:
        check_project_name(name)
        if store.find_project(name) is not None:
            raise ConfigError(
                f"a project named {name!r} already exists; pick another name or remove it "
                f"with `ceranubis rm {name}`"
            )
        return name
    base = re.sub(r"\W+", "_", target).strip("_")[:80] or "project"
    taken = store.names_starting(base + "_")
    for n in itertools.count(len(taken) + 1):
        if f"{base}_{n}" not in taken:
            return f"{base}_{n}"
    raise AssertionError("unreachable")


class _Definition(NamedTuple):
    """What a new project stores."""

    name: str
    auto: bool  # the name was picked here: take the next free one on a clash
    code: str
    target: str
    hosts: list[str]
    function: bytes | None
    blobs: list[bytes]


class _Launch(NamedTuple):
    """How a new project runs."""

    executor: NodeExecutor
    owned: bool
    fn: Callable[..., Any]
    args: list[tuple[Any, ...]]
    chunksize: int
    timeout: float | None


def _create(store: Store, definition: _Definition, launch: _Launch) -> Project:
    """Store the project and run it; the run starts submitting as soon as the project's
    row is in, while its arguments are still being inserted (the insert costs no time
    before the first task), and writes once the transaction committed."""
    name = definition.name
    for attempt in range(1, NAME_ATTEMPTS + 1):
        try:
            return _insert_and_start(store, definition._replace(name=name), launch)
        except ConfigError:
            if not definition.auto or attempt == NAME_ATTEMPTS:
                raise
            # another process took our default name
            name = _pick_name(store, definition.target, None)
    raise AssertionError("unreachable")


def _insert_and_start(store: Store, definition: _Definition, launch: _Launch) -> Project:
    started: list[Project] = []

    def start(row: ProjectRow) -> None:
        project = Project(store, row)
        project._start(
            launch.executor,
            launch.owned,
            launch.fn,
            launch.args,
            definition.blobs,
            None,
            launch.chunksize,
            launch.timeout,
            run_store,
        )
        started.append(project)

    # Opened first: opening a SQLite store writes, and would wait for our own insert.
    run_store = store.reopen()
    try:
        _, ids = store.add_project(
            definition.name,
            definition.code,
            definition.target,
            definition.hosts,
            definition.function,
            definition.blobs,
            this_client(),
            start,
        )
    except BaseException:
        if started:
            started[0]._abandon()  # rolled back: its tasks must leave no trace
        else:
            run_store.close()
        raise
    project = started[0]
    project._created(ids)
    return project
