"""What ``ceranubis run TARGET`` runs: ``module:function`` or ``path/to/file.py:function``.

The function must reach every host, so where it comes from decides how it travels:

- a file given by path, or a module found as a ``.py`` file outside the installed
  packages (the current directory first, as ``python -m`` looks): its source is run here in
  a fresh namespace whose name is not importable, and the function travels **by value**
  (the hosts need not have the file). The source is what the project records.
- a module of the standard library or of an installed package: the function travels **by
  reference** (the hosts must have that package installed too).

Every mistake is a one-line :class:`~ceranubis_jupyter.errors.ConfigError`: no such file or
module, no such function (the functions it has are listed), not callable.
"""

from __future__ import annotations

import importlib.util
import linecache
import os
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# The module name the user's code runs under: not importable, so dill ships it by value.
BY_VALUE_MODULE = "__ceranubis_project__"
# The function a run with keyword arguments calls (``<target>_kwargs``, so a project's
# default name still starts with the target's): the target with ``**kwargs``.
KEYWORDS_SUFFIX = "_kwargs"
_WRAPPER_CODE = """

def {wrapper}(kwargs):
    return {target}(**kwargs)
"""


@dataclass(frozen=True)
class Target:
    """A resolved target: the code recorded, the name called in it, and the function."""

    spec: str
    code: str
    name: str
    function: Callable[..., Any]


def resolve(spec: str, keywords: bool = False) -> Target:
    """Find and load the function ``spec`` names; with ``keywords``, a wrapper that calls
    it with one dict of keyword arguments.

    Raises:
        ConfigError: a bad spec, no such file or module, code that fails to run, no such
            function, a value that is not callable.
    """
    where, sep, function = spec.rpartition(":")
    if not sep or not where or not function.isidentifier():
        raise ConfigError(f"bad target {spec!r}: use module:function or path/to/file.py:function")
    code, label = _source(where, function)
    if keywords:
        code += _WRAPPER_CODE.format(wrapper=function + KEYWORDS_SUFFIX, target=function)
    namespace = _run(code, label)
    _check_function(namespace, function, where)
    called = function + KEYWORDS_SUFFIX if keywords else function
    return Target(spec, code, called, namespace[called])


def _source(where: str, function: str) -> tuple[str, str]:
    """The code to run for a file path or a module name, and a label for tracebacks."""
    if where.endswith(".py") or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"no such file {where!r} (the target's code)")
        return _read(path), str(path)
    if sys.path[0] != os.getcwd():
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules here come first
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"no such module {where!r}: {error}") from None
    if found is None:
        raise ConfigError(
            f"no such module {where!r} (looked in the current directory and sys.path)"
        )
    origin = found.origin or ""
    if origin.endswith(".py") and not _installed(origin):
        return _read(Path(origin)), origin
    return _installed_source(where, function), where


def _installed_source(module: str, function: str) -> str:
    """Code that takes ``function`` from an installed module (imported here first, so a
    module that fails to import, or lacks the name, says so)."""
    try:
        namespace = vars(importlib.import_module(module))
    except Exception as error:
        raise ConfigError(f"importing {module} raised {type(error).__name__}: {error}") from None
    _check_function(namespace, function, module)
    return f"from {module} import {function}  # installed: travels by reference\n"


def _installed(origin: str) -> bool:
    """True for a file of the standard library or of an installed package."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    resolved = os.path.realpath(origin)
    return any(resolved.startswith(os.path.realpath(root) + os.sep) for root in roots)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None


def _run(code: str, label: str) -> dict[str, Any]:
    """Run ``code`` in a fresh namespace (its directory importable here)."""
    filename = f"<ceranubis target {label}>"
    try:
        compiled = compile(code, filename, "exec")
    except SyntaxError as error:
        raise ConfigError(f"{label} does not compile: {error.msg} (line {error.lineno})") from None
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": BY_VALUE_MODULE, "__builtins__": __builtins__}
    try:
        exec(compiled, namespace)
    except Exception as error:
        raise ConfigError(f"running {label} raised {type(error).__name__}: {error}") from None
    return namespace


def _check_function(namespace: dict[str, Any], function: str, where: str) -> None:
    if function not in namespace:
        defined = sorted(
            name
            for name, value in namespace.items()
            if callable(value) and not name.startswith("_") and not isinstance(value, type)
        )
        listed = ", ".join(defined[:20]) or "none"
        raise ConfigError(f"{where} has no function {function!r} (its functions: {listed})")
    value = namespace[function]
    if not callable(value):
        raise ConfigError(
            f"{where}:{function} is not callable (it is a {type(value).__name__}); name a function"
        )
