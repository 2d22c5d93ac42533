"""Committing a project: check it, store it (or find it stored), and start its run.

:func:`commit_project` (source text) and :func:`commit_function` (a function object;
``CeranubisExecutor.commit`` and the ``%%ceranubis`` magic use it) insert the project's
row and arguments in one transaction while its run starts submitting, and return its
:class:`~ceranubis_jupyter.projects.project.Project`. The flow: check the code, target and
arguments (``code.py``) ─► their digests (``digest.py``) ─► what the store makes of them
(``rerun.py``): the same project as the name's latest version (attach, resume what has no
result), or a new version ─► a :class:`_Definition` (what is stored, which arguments take
a stored result) and a :class:`~ceranubis_jupyter.projects.run.RunPlan` (what runs where)
─► the insert, during which the run starts ─► the run learns its ids, or is abandoned
with the insert ─► with ``replace``, the earlier versions are removed.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..cluster.executor import NodeExecutor
from ..cluster.hosts import HostSpec
from ..errors import ConfigError, ConfigTypeError
from .code import (
    check_args,
    check_chunksize,
    check_shippable,
    check_source_shippable,
    compile_code,
    encode_args,
    function_from_code,
    host_names,
    queued_function,
    source_of,
)
from .digest import arguments_digest, function_digest
from .project import Project, remove_project
from .queue_fast import AT_ONCE_ARGUMENTS, FastQueue
from .records import QUEUE_CLIENT, ProjectRow, this_client
from .refs import with_refs
from .rerun import (
    NO_REUSE,
    Attach,
    NewVersion,
    check_replaceable,
    decide,
    reusable_positions,
)
from .run import ProjectRun, RunPlan, RunStart
from .store import Store
from .stores import shared_store

# Tries to find a free default name (or version) when another process takes the same one
# meanwhile.
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
    replace: bool = False,
    reuse: bool = True,
    queue: bool = False,
    priority: int = 0,
    group: str | None = None,
) -> Project:  # long: most of it is the documented public signature
    """Store a project and start running it in the background; returns at once.

    Args:
        code: Python source that defines ``target`` (it is run here, in a fresh namespace,
            and the function travels to the nodes by value).
        target: the name of the function to call once per argument tuple.
        args: a list of tuples: ``target(*t)`` runs for each ``t``.
        hosts: where to run (default: the embedded default); a new executor is started
            and shut down when the project finishes.
        name: the project's name (default: ``<target>_<n>``, a new one). When the name's
            latest version has the same code and arguments, that project is returned
            (and resumed if some arguments have no result); otherwise a new version of
            the name is stored.
        store: a :class:`Store`, a path or URL (default: ``$CERANUBIS_STORE`` or the
            user's data directory).
        chunksize: arguments per task (fewer, bigger messages for tiny functions).
        replace: remove the earlier versions of ``name`` once this one is stored.
        reuse: take the stored result of an argument that a function with the same code
            already finished (``False`` for functions that read files, the time or
            random numbers: their results are neither reused nor offered for reuse).
        queue: queue mode: store the project for the node daemons (``ceranubis node``)
            and return; nothing runs in this process, which may exit at once.
        priority, group: in queue mode, higher priorities are served first (then the
            oldest); a project with a group runs only on nodes of that group.

    Raises:
        ConfigError: bad args, code that does not compile, no such function, a name
            whose version another process took meanwhile, bad hosts (nothing is stored
            or run).
        StoreError: the store cannot be reached or is corrupt.
    """
    items = _checked(args, chunksize)
    wanted = _Wanted(store, name, code, target, None, replace, reuse)
    if queue:  # the function is made once per source: nothing runs it here
        made = queued_function(code, target, name or target)
        return _commit_queued(wanted, made[0], items, (priority, group or "", 0.0), made[1])
    fn = function_from_code(code, target, name or target)
    check_source_shippable(code, target, fn)
    definition = _define(wanted, fn, items, lambda: host_names(hosts))
    if isinstance(definition, _Found):
        return _attach(definition, None, hosts)
    executor = NodeExecutor(hosts) if definition.to_run else None
    try:
        return _create(definition, _plan(definition, fn, items, executor, True, chunksize))
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=False, stop_running=True)
        raise


def commit_function(
    executor: NodeExecutor | None,
    fn: Callable[..., Any],
    args: Sequence[tuple[Any, ...]],
    *,
    name: str | None = None,
    store: Store | str | None = None,
    code: str | None = None,
    chunksize: int = 1,
    timeout: float | None = None,
    replace: bool = False,
    reuse: bool = True,
    queue: bool = False,
    priority: int = 0,
    group: str | None = None,
) -> Project:  # long: most of it is the documented public signature
    """Store a project for a function object and run it on ``executor``; returns at once.

    Args:
        executor: runs the tasks (it is not shut down when the project finishes); may
            be ``None`` with ``queue`` (the node daemons run them).
        fn: the function; it is also stored (dill) so a new process can resume it.
        args: a list of tuples: ``fn(*t)`` runs for each ``t``.
        name: the project's name (default: ``<fn name>_<n>``); an existing name is
            attached to or gets a new version, as in :func:`commit_project`.
        store: a :class:`Store`, a path or URL (default: ``$CERANUBIS_STORE`` or the
            user's data directory).
        code: the source to record (the magic passes its cell); default: the function's
            source when ``inspect`` finds it.
        chunksize: arguments per task; ``timeout``: seconds per task (0/None: none).
        replace, reuse, queue, priority, group: as in :func:`commit_project` (with
            ``queue``, the executor runs nothing: the node daemons do).

    Raises:
        ConfigError: bad args, a function that cannot be serialized, code that does not
            compile (nothing is stored or run).
        StoreError: the store cannot be reached or is corrupt.
    """
    if not callable(fn):
        raise ConfigTypeError(f"{fn!r} is not callable; pass the function to run")
    items = _checked(args, chunksize)
    target = getattr(fn, "__name__", type(fn).__name__)
    code = _recorded_code(fn, code, target)
    blob = check_shippable(fn)
    wanted = _Wanted(store, name, code, target, blob, replace, reuse)
    if queue:
        return _commit_queued(wanted, fn, items, (priority, group or "", float(timeout or 0)))
    if executor is None:
        raise ConfigTypeError("commit_function needs an executor unless queue=True")
    hosts = executor.hosts
    definition = _define(wanted, fn, items, lambda: [i.host for i in hosts()])
    if isinstance(definition, _Found):
        return _attach(definition, executor, None)
    plan = _plan(definition, fn, items, executor, False, chunksize, timeout)
    return _create(definition, plan)


def _recorded_code(fn: Callable[..., Any], code: str | None, target: str) -> str:
    """The source to record: ``code`` once it compiles, else the function's own source."""
    if code is None:
        return source_of(fn)
    compile_code(code, target)
    return code


def _checked(args: Sequence[tuple[Any, ...]], chunksize: int) -> list[tuple[Any, ...]]:
    """The argument list, checked, and a checked chunk size."""
    items = check_args(args)
    check_chunksize(chunksize)
    return items


def check_project_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a valid project name."""
    if not isinstance(name, str) or not _NAME.match(name) or name.isdigit():
        raise ConfigError(
            f"bad project name {name!r}: use up to 100 letters, digits, '_', '-' or '.', "
            "not only digits"
        )


def _name_base(target: str) -> str:
    """What a default name starts with (before ``_<n>``)."""
    return re.sub(r"\W+", "_", target).strip("_")[:80] or "project"


def _free_name(store: Store, target: str, taken: set[str] | None = None) -> str:
    """``<target>_<n>``: the first free ``n`` (``taken``: the names read already)."""
    base = _name_base(target)
    if taken is None:
        taken = store.names_starting(base + "_")
    for n in itertools.count(len(taken) + 1):
        if f"{base}_{n}" not in taken:
            return f"{base}_{n}"
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Wanted:
    """What the caller asked to commit (before the store is looked at)."""

    store: Store | str | None
    name: str | None
    code: str
    target: str
    function: bytes | None
    replace: bool
    reuse: bool


@dataclass(frozen=True)
class _Found:
    """The project asked for is stored already (same code, target and arguments)."""

    store: Store
    row: ProjectRow
    reuse: bool


@dataclass(frozen=True)
class _Definition:
    """What a new project stores, and where; ``reused``: ``(position, holder)`` of the
    arguments that take a stored result; ``to_run``: the positions of the others."""

    wanted: _Wanted
    store: Store
    name: str
    hosts: list[str]
    blobs: list[bytes]
    digests: tuple[str, str]
    version: NewVersion
    reused: list[tuple[int, int]]
    to_run: Sequence[int]


def _define(
    wanted: _Wanted,
    fn: Callable[..., Any],
    items: list[tuple[Any, ...]],
    hosts: Callable[[], list[str]],
) -> _Definition | _Found:
    """The stored form of the project: its arguments encoded and digested, its store
    opened, its name and version decided (or the stored project it is), the results it
    reuses, then its ``hosts()`` (an executor's, as far as they are up)."""
    blobs = encode_args(items)
    opened = shared_store(wanted.store)
    code_hash = function_digest(fn, wanted.target)
    digests = (code_hash if wanted.reuse else NO_REUSE + code_hash, arguments_digest(blobs))
    known: dict[bytes, int] | None = None
    version: NewVersion | Attach = NewVersion()
    if wanted.name is None:  # a new name: it and the results it may take in one round trip
        prefix, reusing = _name_base(wanted.target) + "_", code_hash if wanted.reuse else ""
        names, known = opened.names_and_reusable(prefix, reusing)
        name = _free_name(opened, wanted.target, names)
    else:
        name, version = _name_and_version(opened, wanted, digests, blobs)
    if isinstance(version, Attach):
        return _Found(opened, version.row, wanted.reuse)
    reused = reusable_positions(opened, code_hash, blobs, known) if wanted.reuse else []
    taken = {at for at, _ in reused}
    to_run = [at for at in range(len(blobs)) if at not in taken] if taken else range(len(blobs))
    return _Definition(wanted, opened, name, hosts(), blobs, digests, version, reused, to_run)


def _name_and_version(
    store: Store, wanted: _Wanted, digests: tuple[str, str], blobs: list[bytes]
) -> tuple[str, NewVersion | Attach]:
    assert wanted.name is not None
    check_project_name(wanted.name)
    decision = decide(store, wanted.name, wanted.target, digests, blobs, wanted.replace)
    if isinstance(decision, NewVersion):
        check_replaceable(store, decision.replaced, wanted.name)
    return wanted.name, decision


def _plan(
    definition: _Definition,
    fn: Callable[..., Any],
    items: list[tuple[Any, ...]],
    executor: NodeExecutor | None,
    owns_executor: bool,
    chunksize: int,
    timeout: float | None = None,
) -> RunPlan | None:
    """The run of the arguments that take no stored result (``None``: there are none)."""
    if executor is None or not definition.to_run:
        return None
    # A chunk travels as its tuples pickled together: the stored bytes of its arguments
    # are not kept for the run (they are freed once the commit returns).
    args, blobs = items, definition.blobs if chunksize == 1 else ()
    if definition.reused:
        at = definition.to_run
        args, blobs = [items[i] for i in at], [blobs[i] for i in at] if blobs else ()
    plan = RunPlan(fn, args, blobs, executor, owns_executor, chunksize, timeout)
    return with_refs(plan, definition.store)


def _attach(found: _Found, executor: NodeExecutor | None, hosts: Any) -> Project:
    """The stored project the caller asked for again: as it is while it runs (here or in
    another live process), else resumed (nothing runs when every argument is done)."""
    project = Project.load(found.row.id, found.store)
    if project.executor is not None or found.row.live:
        return project
    return project.resume(executor, hosts=hosts, reuse=found.reuse)


def _commit_queued(
    wanted: _Wanted,
    fn: Callable[..., Any],
    items: list[tuple[Any, ...]],
    queued: tuple[int, str, float],
    code_hash: str | None = None,
) -> Project:
    """Queue mode: store the project for the node daemons, or queue again the stored
    project it is; run nothing here (``code_hash``: ``fn``'s digest, when known)."""
    opened = shared_store(wanted.store)
    opened.ensure_queue()
    at_once = wanted.name is None and len(items) <= AT_ONCE_ARGUMENTS
    if at_once and isinstance(opened, FastQueue):
        code_hash = code_hash or function_digest(fn, wanted.target)
        return _queued_at_once(opened, wanted, code_hash, items, queued)
    definition = _define(dataclasses.replace(wanted, store=opened), fn, items, list)
    if isinstance(definition, _Found):
        if not definition.row.live:
            opened.requeue(definition.row.id, queued)
        return Project.load(definition.row.id, opened)
    return _create(definition, None, queued)


def _queued_at_once(
    store: FastQueue,
    wanted: _Wanted,
    code_hash: str,
    items: list[tuple[Any, ...]],
    queued: tuple[int, str, float],
) -> Project:
    """A small queued project under a new default name in one statement: the store
    picks the free name and the stored results it takes (one round trip, not three)."""
    blobs = encode_args(items)
    digests = (code_hash if wanted.reuse else NO_REUSE + code_hash, arguments_digest(blobs))
    now = time.time()
    draft = ProjectRow(0, "", wanted.code, wanted.target, now, [], "running", QUEUE_CLIENT,
                       now, wanted.function, 1, *digests, "")  # fmt: skip
    prefix, reuse = _name_base(wanted.target) + "_", code_hash if wanted.reuse else ""
    for attempt in range(1, NAME_ATTEMPTS + 1):
        try:
            done = store.insert_new_queued(draft, prefix, blobs, queued, reuse)
            break
        except ConfigError:  # another process took the name meanwhile: the next one
            if attempt == NAME_ATTEMPTS:
                raise
    assert done is not None and isinstance(store, Store)
    if done.reused == len(blobs):  # every argument took a stored result: done already
        store.set_state(done.row.id, "done", release=True)
        return Project.load(done.row.id, store)
    return Project(store, done.row)  # as inserted: no read while the nodes claim it


def _create(
    definition: _Definition, plan: RunPlan | None, queued: tuple[int, str, float] | None = None
) -> Project:
    """Store the project and run it; the run starts submitting as soon as the project's
    row is in, while its arguments are still being inserted (the insert costs no time
    before the first task), and writes once the transaction committed. Then the versions
    it replaces are removed."""
    for attempt in range(1, NAME_ATTEMPTS + 1):
        try:
            if queued is None:
                project = _insert_and_start(definition, plan)
            else:
                project = _insert_queued(definition, queued)
            break
        except ConfigError:
            if attempt == NAME_ATTEMPTS:
                raise
            definition = _redefined(definition)  # another process took the name or version
    for project_id in definition.version.replaced:
        remove_project(project_id, definition.store)
    return project


def _redefined(definition: _Definition) -> _Definition:
    """The definition again, after another process stored a project under its name."""
    wanted, store = definition.wanted, definition.store
    if wanted.name is None:
        return dataclasses.replace(definition, name=_free_name(store, wanted.target))
    version = decide(store, wanted.name, wanted.target, definition.digests, definition.blobs,
                     wanted.replace)  # fmt: skip
    if isinstance(version, Attach):  # the same project: the other process's is as good
        raise ConfigError(
            f"project {wanted.name!r} was committed by another process at the same moment; "
            "run again to follow it"
        )
    return dataclasses.replace(definition, version=version)


def _insert_and_start(definition: _Definition, plan: RunPlan | None) -> Project:
    started: list[tuple[Project, ProjectRun]] = []

    def start(row: ProjectRow) -> None:
        assert plan is not None and run_store is not None
        begun = RunStart.new(len(plan.args), len(definition.reused))
        run = ProjectRun(plan, begun, run_store, row.id)
        started.append((Project(definition.store, row, run), run))  # the project starts it

    # Opened first: opening a SQLite store writes, and would wait for our own insert.
    run_store = definition.store.reopen() if plan is not None else None
    try:
        row, ids = _insert(definition, start if plan is not None else None)
    except BaseException:
        if started:
            started[0][1].abandon()  # rolled back: its tasks must leave no trace
        elif run_store is not None:
            run_store.close()
        raise
    if not started:  # every argument took a stored result: done already
        definition.store.set_state(row.id, "done", release=True)
        return Project.load(row.id, definition.store)
    project, run = started[0]
    run.created(ids if not definition.reused else [ids[at] for at in definition.to_run])
    return project


def _insert_queued(definition: _Definition, queued: tuple[int, str, float]) -> Project:
    """Store a queued project (its queue row in the same transaction, the nodes
    notified at the commit)."""
    store = definition.store
    row, _ = _insert(definition, None, queued)
    if not definition.to_run:  # every argument took a stored result: done already
        store.set_state(row.id, "done", release=True)
        return Project.load(row.id, store)
    return Project(store, row)  # as inserted: no read while the nodes claim it


def _insert(
    definition: _Definition,
    start: Callable[[ProjectRow], None] | None,
    queued: tuple[int, str, float] | None = None,
) -> tuple[ProjectRow, Sequence[int]]:
    wanted, version = definition.wanted, definition.version
    return definition.store.add_project(
        definition.name,
        wanted.code,
        wanted.target,
        definition.hosts,
        wanted.function,
        definition.blobs,
        this_client() if queued is None else QUEUE_CLIENT,
        start,
        version=version.version,
        digests=definition.digests,
        changes=version.changes,
        reused=definition.reused,
        queued=queued,
    )
