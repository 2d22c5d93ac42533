"""Checking what a project is made of: its arguments, its code, its function.

Everything here runs before a project is stored, so bad input fails with a clear
:class:`~ceranubis_jupyter.errors.ConfigError` and nothing half-written.
"""

from __future__ import annotations

import inspect
import linecache
import textwrap
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..cluster.hosts import Host, HostSpec
from ..errors import ConfigError, ConfigTypeError
from ..wire.describe import unpicklable_arguments, unpicklable_function
from ..wire.serialize import dumps_function, loads_function
from .digest import function_digest
from .records import ProjectRow
from .rows import encode_many

# Sources (code, target) whose function was found to pickle: one committed again (a
# cell run again, a queue fed in a loop) skips that check, ~1 ms of dill; more entries
# keep more source texts alive.
SHIPPABLE_SOURCES = 64
_shippable: dict[tuple[str, str], None] = {}  # oldest first
_shippable_lock = threading.Lock()
# Sources (code, target) a queued commit made a function of, with its code digest: one
# queued again (a queue fed in a loop) is not compiled, run, checked and digested again
# (~0.1 ms per commit, ~0.4 ms in a process idle between commits); more entries keep
# more functions (and the modules' objects they hold) alive.
QUEUED_SOURCES = 64
_queued: dict[tuple[str, str], tuple[Callable[..., Any], str]] = {}  # oldest first


def check_args(args: Any) -> list[tuple[Any, ...]]:
    """The argument list, checked: a non-empty list (or tuple) of tuples."""
    if not isinstance(args, (list, tuple)):
        raise ConfigTypeError(
            f"args must be a list of tuples, one per call (e.g. [(1, 2), (3, 4)]), "
            f"got {type(args).__name__}"
        )
    if not args:
        raise ConfigError("args is empty: give at least one tuple of arguments")
    for index, item in enumerate(args):
        if not isinstance(item, tuple):
            raise ConfigTypeError(
                f"args must be a list of tuples: item {index} is {item!r} "
                f"({type(item).__name__}); write ({item!r},) for a single argument"
            )
    return list(args)


def check_chunksize(chunksize: int) -> None:
    if not isinstance(chunksize, int):
        raise ConfigTypeError(f"chunksize must be an int, got {chunksize!r}")
    if chunksize < 1:
        raise ConfigError(f"chunksize must be a positive integer, got {chunksize!r}")


def compile_code(code: str, label: str) -> Any:
    if not isinstance(code, str):
        raise ConfigTypeError(f"code must be a string of Python source, got {type(code).__name__}")
    filename = f"<ceranubis project {label}>"
    try:
        compiled = compile(code, filename, "exec")
    except SyntaxError as error:
        raise ConfigError(
            f"the project code does not compile: {error.msg} (line {error.lineno}); fix the "
            "code and commit again"
        ) from None
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    return compiled


def function_from_code(code: str, target: str, label: str) -> Callable[..., Any]:
    """Run ``code`` in a fresh namespace and return its function ``target``.

    The namespace's module name is not importable, so dill ships the function (and the
    classes and helpers it uses) by value.
    """
    compiled = compile_code(code, label)
    namespace: dict[str, Any] = {"__name__": "__ceranubis_project__", "__builtins__": __builtins__}
    try:
        exec(compiled, namespace)
    except Exception as error:
        raise ConfigError(
            f"running the project code raised {type(error).__name__}: {error}; it should "
            "only define functions (and import what they need)"
        ) from None
    fn = namespace.get(target)
    if not callable(fn):
        defined = sorted(
            k
            for k, v in namespace.items()
            if callable(v) and not k.startswith("__") and not isinstance(v, type)
        )
        raise ConfigError(
            f"the code defines no function named {target!r}; it defines: "
            f"{', '.join(defined) or 'no functions'}"
        )
    return fn  # type: ignore[no-any-return]


def function_of(row: ProjectRow) -> Callable[..., Any]:
    """The project's function, rebuilt: from its stored pickle, else from its code."""
    problems = []
    if row.function is not None:
        try:
            return loads_function(row.function)
        except Exception as error:
            problems.append(f"its stored function does not load ({type(error).__name__}: {error})")
    if row.code:
        try:
            return function_from_code(row.code, row.target, row.name)
        except ConfigError as error:
            problems.append(str(error))
    else:
        problems.append("no source was recorded")
    raise ConfigError(
        f"cannot rebuild the function of project {row.name!r}: {'; '.join(problems)}; "
        "import what it needs before resuming"
    )


def check_shippable(fn: Callable[..., Any]) -> bytes:
    try:
        return dumps_function(fn)
    except Exception as error:
        raise unpicklable_function(fn, error) from None


def check_source_shippable(code: str, target: str, fn: Callable[..., Any]) -> None:
    """Raise :class:`ConfigError` unless ``fn`` (made from ``code``) pickles; checked once
    per source (running the same source again makes the same function)."""
    key = (code, target)
    with _shippable_lock:
        if key in _shippable:
            return
    check_shippable(fn)
    with _shippable_lock:
        _shippable[key] = None
        if len(_shippable) > SHIPPABLE_SOURCES:
            del _shippable[next(iter(_shippable))]


def queued_function(code: str, target: str, label: str) -> tuple[Callable[..., Any], str]:
    """The function ``target`` of ``code``, checked to pickle, and its code digest, for a
    queued commit: made once per source (the node daemons make their own from the source,
    and cache it by source too: nothing runs this one).

    Raises:
        ConfigError: the code does not compile or run, defines no ``target``, or its
            function does not pickle.
    """
    key = (code, target)
    with _shippable_lock:
        known = _queued.get(key)
    if known is not None:
        return known
    fn = function_from_code(code, target, label)
    check_shippable(fn)
    made = (fn, function_digest(fn, target))
    with _shippable_lock:
        _queued[key] = made
        if len(_queued) > QUEUED_SOURCES:
            del _queued[next(iter(_queued))]
    return made


def encode_args(items: list[tuple[Any, ...]]) -> list[bytes]:
    """Each argument tuple as stored (see :func:`~ceranubis_jupyter.project_rows.encode`)."""
    try:
        return encode_many(items)
    except Exception as error:
        raise unpicklable_arguments(((item, {}) for item in items), error) from None


def source_of(fn: Callable[..., Any]) -> str:
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return ""


def host_names(hosts: Sequence[HostSpec] | HostSpec | None) -> list[str]:
    """Host specs as stored: their names (empty for the embedded default)."""
    if hosts is None:
        return []
    if isinstance(hosts, (str, Host)):
        hosts = [hosts]
    return [spec.name if isinstance(spec, Host) else str(spec) for spec in hosts]
