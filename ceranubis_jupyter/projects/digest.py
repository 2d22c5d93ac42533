"""What makes two runs "the same": digests of a function's code and of an argument list.

A project row keeps both digests. A re-run whose digests equal the latest version's
attaches to it; a finished result is reused only by a task whose function digest is the
same (and whose argument bytes are equal). So the code digest must change whenever the
function could compute something else, and should stay put across kernel restarts:

- A Python function is digested by its structure, not by its pickle: bytecode, constants,
  names, defaults and closure values, and recursively every global it reads: helper
  functions and classes defined by value (``__main__``, a notebook cell, project code),
  the value of any other global (pickled), and for an imported module or a function of
  one its name and version, plus its file's bytes when it is not installed (a module
  next to the notebook). File names and line numbers are left out: they change with the
  kernel (``/tmp/ipykernel_<pid>/...``) and do not change what the code does.
- Anything else (a ``functools.partial``, a callable object, a builtin) is digested by
  its dill bytes, which may differ after a restart: that costs a re-run, never a wrong
  result.

What no digest sees: files the function reads, the time, randomness, the network. Such
functions are committed with ``reuse=False``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import struct
import sys
import sysconfig
import types
from collections.abc import Callable, Sequence
from typing import Any

from ..wire.serialize import dumps_function

# Modules whose code travels by value (dill pickles their functions and classes whole).
BY_VALUE_MODULES = frozenset({"__main__", "__ceranubis_project__"})
# Values digested by their repr (exact for these types), without identity tracking.
_SCALARS = (bool, int, float, complex, str, bytes)
# Digest algorithm: collisions must be out of the question (a collision reuses a wrong
# result); sha256 costs ~1 ms per MB, far below pickling the same bytes.
_HASH = hashlib.sha256
# Arguments digested per step: the lengths and bytes of a step are packed and joined at
# once (C speed); bigger steps save little time and hold more transient memory.
_DIGEST_STEP = 65536


def function_digest(fn: Callable[..., Any], target: str) -> str:
    """The digest of ``fn``'s code, as the project row stores it (hex)."""
    digest = _HASH(target.encode())
    try:
        _Walker(digest).value(fn)
    except Exception:  # not digestible by structure: its pickle stands in
        digest = _HASH(target.encode() + b"\0dill\0" + dumps_function(fn))
    return digest.hexdigest()


def arguments_digest(blobs: Sequence[bytes]) -> str:
    """The digest of an argument list as stored (each tuple's bytes, in order)."""
    digest = _HASH()  # every length, then every blob: fed in steps, not packed whole
    for start in range(0, len(blobs), _DIGEST_STEP):
        step = blobs[start : start + _DIGEST_STEP]
        digest.update(struct.pack(f"<{len(step)}Q", *map(len, step)))
    for start in range(0, len(blobs), _DIGEST_STEP):
        digest.update(b"".join(blobs[start : start + _DIGEST_STEP]))
    return digest.hexdigest()


class _Walker:
    """Feeds a function, and everything it reads, into one digest; each object once."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self.seen: dict[int, int] = {}  # id -> order of first visit (a cycle refers back)
        self.keep: list[Any] = []  # objects visited: their ids stay unique meanwhile

    def add(self, *parts: bytes | str) -> None:
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            self.digest.update(struct.pack("<Q", len(data)) + data)

    def value(self, obj: Any) -> None:  # long: one branch per kind of object, flat
        if obj is None or isinstance(obj, _SCALARS):
            self.add(type(obj).__name__, repr(obj))
            return
        if id(obj) in self.seen:
            self.add("seen", str(self.seen[id(obj)]))
            return
        self.seen[id(obj)] = len(self.seen)
        self.keep.append(obj)
        if isinstance(obj, types.ModuleType):
            self.add("module", obj.__name__, module_version(obj))
        elif isinstance(obj, types.FunctionType):
            self.function(obj)
        elif type(obj) in (tuple, list):
            self.add(type(obj).__name__, str(len(obj)))
            for item in obj:
                self.value(item)
        elif type(obj) is dict:
            self.add("dict", str(len(obj)))
            for key, item in obj.items():
                self.value(key)
                self.value(item)
        elif isinstance(obj, type) and not by_reference(obj):
            self.add("class", obj.__qualname__)
            for base in obj.__bases__:
                self.value(base)
            for name, member in sorted(vars(obj).items()):
                if name not in ("__dict__", "__weakref__", "__module__", "__doc__"):
                    self.add(name)
                    self.value(member)
        elif isinstance(obj, (type, types.BuiltinFunctionType)):
            module = getattr(obj, "__module__", None) or ""
            self.add("ref", module, getattr(obj, "__qualname__", repr(obj)))
            self.add(module_version(sys.modules.get(module)))
        elif isinstance(obj, (staticmethod, classmethod)):
            self.add(type(obj).__name__)
            self.value(obj.__func__)
        elif isinstance(obj, property):
            self.add("property")
            for part in (obj.fget, obj.fset, obj.fdel):
                self.value(part)
        else:
            self.add("data", type(obj).__qualname__, pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))

    def function(self, fn: types.FunctionType) -> None:
        if by_reference(fn):  # imported: by its name, and its module's version
            self.add("ref", fn.__module__ or "", fn.__qualname__)
            self.add(module_version(sys.modules.get(fn.__module__ or "")))
            return
        self.add("function", fn.__qualname__)
        self.code(fn.__code__)
        self.value(fn.__defaults__)
        self.value(fn.__kwdefaults__)
        for cell in fn.__closure__ or ():
            self.value(cell.cell_contents)
        for name in sorted(global_names(fn.__code__)):
            if name in fn.__globals__:
                self.add("global", name)
                self.value(fn.__globals__[name])

    def code(self, code: types.CodeType) -> None:
        self.add(
            "code",
            code.co_code,
            repr((code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount)),
            repr((code.co_flags, code.co_names, code.co_varnames, code.co_freevars)),
        )
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.code(const)
            else:
                self.add(type(const).__name__, repr(const))


def by_reference(obj: Any) -> bool:
    """Whether dill ships ``obj`` by name (importable as itself) rather than by value."""
    module_name = getattr(obj, "__module__", None)
    if not module_name or module_name in BY_VALUE_MODULES:
        return False
    found: Any = sys.modules.get(module_name)
    for part in getattr(obj, "__qualname__", "<>").split("."):
        found = getattr(found, part, None)
    return found is obj


def global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the code nested in it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= global_names(const)
    return names


def module_version(module: types.ModuleType | None) -> str:
    """A module's identity for reuse: its version, and its file's digest when it is not
    installed (a module being edited next to the notebook changes with every save)."""
    if module is None:
        return ""
    top = sys.modules.get(module.__name__.partition(".")[0], module)
    version = str(getattr(top, "__version__", ""))
    path = getattr(module, "__file__", None)
    if not path or _installed(path):
        return version
    try:
        stat = os.stat(path)
    except OSError:
        return version
    return f"{version}:{_file_digest(path, stat.st_mtime_ns, stat.st_size)}"


def _installed(path: str) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(root + os.sep) for root in _install_roots())


@functools.cache
def _install_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple({os.path.realpath(paths[name]) for name in names if name in paths})


@functools.lru_cache(maxsize=256)  # a module's file is read again only once it changed
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    with open(path, "rb") as file:
        return _HASH(file.read()).hexdigest()


__all__ = [
    "BY_VALUE_MODULES",
    "arguments_digest",
    "by_reference",
    "function_digest",
    "global_names",
]
