"""The user's modules travel with the work: which ones, packed how, sent when.

::

    kernel thread (submit)                        loop thread (NodeLink)
    ──────────────────────                        ──────────────────────
    ModuleShipper.before_submit(fn_id, blob)      LinkCode.offers(): CodeOffer(SHA, name)
      names the function's pickle refers to  ─►     for each pack this node was not offered,
      (+ modules=[...]) that are user code          before the next tasks
      → CodePack per top-level name, rebuilt      LinkCode.answer(CodeNeed): Code(SHA, zip),
        when a file's size or mtime changed         counted in CodeRegistry.bytes_sent
      → CodeRegistry.publish()

*User code* is a module the client imports from outside the interpreter's own standard
library and site-packages (a file beside the notebook, a ``sys.path`` entry, an editable
install): a host cannot be expected to have it. Such a module travels by its source: its
file, or the whole tree of its top-level package, zipped deterministically and named by the
digest of its files like the node bundle (:func:`.bootstrap.tree_digest`), so a host keeps
each version in its cache (``node/code.py``) and gets it at most once. Which modules a
function needs is read from its pickle (the modules its globals and references name), and
from the modules those refer to in turn; what the arguments alone refer to is found when a
worker reports it missing (:func:`missing_module`).
"""

from __future__ import annotations

import os
import pickletools
import site
import sys
import sysconfig
import threading
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, NodeLost
from ..wire import protocol as p
from .bootstrap import build_bundle

# Bytes of source one pack may hold: a package under development is a few MB at most; a
# larger tree is more likely a data directory by mistake (use files= for data).
MAX_PACK_BYTES = 64 << 20
# A pack's whole tree is looked at (stat) at most this often on submit; in between, the
# first submit after the executor was idle looks at the files of the pack's modules the
# client has loaded (one stat for a module), so edit-and-rerun just works.
RECHECK_SECONDS = 1.0
# Top-level names that never travel: the node brings its own (the bundle), and a script's
# ``__main__`` travels by value.
NEVER_SHIPPED = frozenset({"ceranubis_jupyter", "dill", "__main__", "__mp_main__"})
# Directories and suffixes left out of a package's pack.
SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".ruff_cache"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")
# Set to ``0`` to turn off finding the user's modules in functions (``auto_modules=``).
AUTO_ENV = "CERANUBIS_AUTO_MODULES"
# Pickle opcodes whose argument is a string (a module name, a global's name, a constant).
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}
)
_GLOBAL_OPS = frozenset({"GLOBAL", "INST"})


@dataclass(frozen=True)
class CodePack:
    """One top-level module or package of the user's, zipped and named by its digest."""

    name: str
    digest: str
    data: bytes
    signature: tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns) of each file
    watched: tuple[tuple[str, int, int], ...] = ()  # those of the modules the client loaded

    def loaded_changed(self) -> bool:
        """Whether a file of a module the client had loaded changed since (cheap)."""
        for path, size, mtime in self.watched:
            try:
                info = os.stat(path)
            except OSError:
                return True
            if (info.st_size, info.st_mtime_ns) != (size, mtime):
                return True
        return False


@dataclass
class CodeRegistry:
    """The packs in use (the newest of each name), shared by the executor and its links.

    ``packs`` is replaced whole (copy on write) and ``version`` bumped under the lock, so
    the loop thread reads them without it.
    """

    packs: tuple[CodePack, ...] = ()
    version: int = 0
    bytes_sent: int = 0  # source bytes sent to nodes (all hosts)
    bytes_by_host: dict[str, int] = field(default_factory=dict)
    # Ships a module a worker reported missing; ``True`` if it was published anew.
    on_missing: Callable[[str], bool] | None = None
    _retried: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, pack: CodePack) -> bool:
        """Use ``pack`` for its name from now on; ``False`` if it is in use already."""
        with self._lock:
            if pack in self.packs:
                return False
            kept = tuple(known for known in self.packs if known.name != pack.name)
            self.packs = (*kept, pack)
            self.version += 1
            return True

    def retry_missing(self, task_id: int, error: BaseException) -> bool:
        """(Loop thread) Whether a failed task lacked a module of the user's that is now
        on its way to the nodes: then it runs once more (only once per task)."""
        name = missing_module(error)
        if name is None or self.on_missing is None or task_id in self._retried:
            return False
        if not self.on_missing(name):
            return False
        self._retried.add(task_id)
        return True

    def count_sent(self, host: str, size: int) -> None:
        """(Loop thread) Note ``size`` bytes of source sent to ``host``."""
        self.bytes_sent += size
        self.bytes_by_host[host] = self.bytes_by_host.get(host, 0) + size


class LinkCode:
    """What one node was offered in its session, to offer only what is new and to answer
    its :class:`~ceranubis_jupyter.wire.messages.CodeNeed` (loop thread only)."""

    def __init__(self) -> None:
        self.version = 0
        self.offered: dict[str, CodePack] = {}

    def offers(self, registry: CodeRegistry) -> list[p.CodeOffer]:
        """The offers to send before the next tasks (none when nothing changed)."""
        if registry.version == self.version:
            return []
        self.version = registry.version
        fresh = [pack for pack in registry.packs if pack.digest not in self.offered]
        self.offered.update((pack.digest, pack) for pack in fresh)
        return [p.CodeOffer(pack.digest, pack.name) for pack in fresh]

    def answer(self, need: p.CodeNeed, registry: CodeRegistry, host: str) -> p.Code:
        """The pack a node asked for (:class:`NodeLost` if it was never offered to it)."""
        pack = self.offered.get(need.digest)
        if pack is None:
            raise NodeLost(host, f"the node asked for code pack {need.digest[:12]}, never offered")
        registry.count_sent(host, len(pack.data))
        return p.Code(pack.digest, pack.data)


class ModuleShipper:
    """Finds the user code each submitted function needs and publishes its packs.

    Args:
        registry: where the packs go (the scheduler's).
        modules: names (or module objects) always shipped, user code or not.
        auto: find user code in functions' pickles (else only ``modules`` travel).
        idle: says whether the executor has no task in flight (then files are re-checked).
    """

    def __init__(
        self,
        registry: CodeRegistry,
        modules: Iterable[str | types.ModuleType] = (),
        *,
        auto: bool = True,
        idle: Any = lambda: True,
    ) -> None:
        self.registry = registry
        self.auto = auto
        self._idle = idle
        self._explicit = tuple(_top_name(m) for m in modules)
        self._needs: dict[int, tuple[str, ...]] = {}  # fn id -> top-level names it needs
        self._packs: dict[str, CodePack] = {}
        self._checked = -RECHECK_SECONDS
        self._lock = threading.Lock()
        for name in self._explicit:
            self._publish(name, explicit=True)
        registry.on_missing = self.ship_missing if auto else None

    def add(self, names: Iterable[str | types.ModuleType]) -> None:
        """Ship these modules too, from now on (``modules=`` after the fact)."""
        added = tuple(_top_name(m) for m in names)
        self._explicit = tuple(dict.fromkeys((*self._explicit, *added)))
        for name in added:
            self._publish(name, explicit=True)

    def before_submit(self, fn_id: int, blob: bytes | None) -> None:
        """Make sure the packs ``fn_id`` needs are published, fresh (hot path: cheap
        unless the function is new or a re-check is due)."""
        names = self._needs.get(fn_id)
        if names is None:
            names = self._needs[fn_id] = self._find(blob) if self.auto and blob else ()
            self._refresh(names)
            return
        if not names and not self._explicit:
            return
        now = time.monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            self._refresh(names)
        elif self._idle() and self._loaded_changed(names):
            self._refresh(names)

    def _loaded_changed(self, names: tuple[str, ...]) -> bool:
        for name in (*self._explicit, *names):
            pack = self._packs.get(name)
            if pack is None or pack.loaded_changed():
                return True
        return False

    def ship_missing(self, name: str) -> bool:
        """A worker could not import ``name``: publish its pack if the client has it as
        user code; ``True`` if something new was published (the task may be retried)."""
        top = name.partition(".")[0]
        if top in NEVER_SHIPPED or user_code_root(top) is None:
            return False
        return self._publish(top, explicit=False)

    def _find(self, blob: bytes) -> tuple[str, ...]:
        return tuple(sorted(user_modules_needed(names_in_pickle(blob))))

    def _refresh(self, names: Iterable[str]) -> None:
        for name in (*self._explicit, *names):
            self._publish(name, explicit=name in self._explicit)

    def _publish(self, name: str, *, explicit: bool) -> bool:
        """Publish ``name``'s pack, rebuilt if its files changed; ``True`` if it is new.
        A module whose source cannot be read is not sent (the node then says it cannot
        import it), unless it was asked for by name (a :class:`ConfigError`)."""
        with self._lock:
            try:
                return self._publish_locked(name, explicit)
            except OSError as error:
                if explicit:
                    raise ConfigError(f"module {name!r} cannot be shipped: {error}") from None
                return False

    def _publish_locked(self, name: str, explicit: bool) -> bool:
        known = self._packs.get(name)
        if known is not None and _signature_of(name, explicit) == known.signature:
            return self.registry.publish(known)
        pack = make_pack(name, explicit=explicit)
        if pack is None:
            return False
        self._packs[name] = pack
        return self.registry.publish(pack)


def auto_default(auto: bool | None) -> bool:
    """``auto`` if given, else whether :data:`AUTO_ENV` leaves automatic shipping on."""
    if auto is not None:
        return bool(auto)
    return os.environ.get(AUTO_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def names_in_pickle(blob: bytes) -> set[str]:
    """Every module-like name a pickle refers to: its globals' modules and its strings
    (dill names the modules of a function's globals as strings)."""
    found: set[str] = set()
    try:
        for opcode, arg, _ in pickletools.genops(blob):
            if opcode.name in _GLOBAL_OPS and isinstance(arg, str):
                found.add(arg.partition(" ")[0])
            elif opcode.name in _STRING_OPS and isinstance(arg, (str, bytes)):
                text = arg if isinstance(arg, str) else arg.decode("latin-1")
                if text and len(text) < 256:
                    found.add(text)
    except Exception:  # not a pickle we can read: nothing found, the fallback remains
        return found
    return found


def user_modules_needed(candidates: Iterable[str]) -> set[str]:
    """The top-level names of user code among ``candidates`` and what those refer to."""
    pending = [c.partition(".")[0] for c in candidates if c in sys.modules]
    found: set[str] = set()
    while pending:
        top = pending.pop()
        if top in found or top in NEVER_SHIPPED or user_code_root(top) is None:
            continue
        found.add(top)
        pending.extend(_referred_modules(top))
    return found


def _referred_modules(top: str) -> list[str]:
    """Top-level names the loaded modules of package ``top`` refer to in their globals."""
    referred = []
    loaded = [m for name, m in list(sys.modules.items()) if name.partition(".")[0] == top]
    for module in loaded:
        for value in list(vars(module).values()):
            name = value.__name__ if isinstance(value, types.ModuleType) else None
            name = name or getattr(value, "__module__", None)
            if isinstance(name, str):
                referred.append(name.partition(".")[0])
    return referred


def user_code_root(top: str) -> str | None:
    """The file or package directory of module ``top`` if it is user code, else ``None``
    (not loaded, built in, installed in the interpreter, or not Python source)."""
    root = _module_root(sys.modules.get(top))
    if root is None:
        return None
    real = os.path.realpath(root)
    if any(real == system or real.startswith(system + os.sep) for system in _system_dirs()):
        return None
    return root


def _module_root(module: types.ModuleType | None) -> str | None:
    if module is None:
        return None
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        paths = [str(entry) for entry in getattr(module, "__path__", []) or []]
        return paths[0] if paths else None  # a namespace package: its first portion
    if not file.endswith(".py"):
        return None  # a compiled extension or a zip: not source we can ship
    return os.path.dirname(file) if hasattr(module, "__path__") else file


def _system_dirs() -> list[str]:
    """Where the interpreter's own modules live: its standard library and site-packages."""
    paths = sysconfig.get_paths()
    dirs = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    dirs += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    dirs.append(site.getusersitepackages())
    return [os.path.realpath(d) for d in dict.fromkeys(dirs)]


def make_pack(name: str, *, explicit: bool = False) -> CodePack | None:
    """The pack of top-level module ``name`` (``None`` if it is not user code and was
    not asked for by name).

    Raises:
        ConfigError: a module asked for by name cannot travel, or a pack is too large.
    """
    root = _pack_root(name, explicit)
    if root is None:
        return None
    files, signature = _read_tree(name, root)
    bundle = build_bundle(files)
    loaded = {_real(m.__file__) for m in _loaded(name) if isinstance(m.__file__, str)}
    watched = tuple(entry for entry in signature if _real(entry[0]) in loaded)
    return CodePack(name, bundle.digest, bundle.data, signature, watched)


def _loaded(top: str) -> list[types.ModuleType]:
    return [
        module
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] == top and getattr(module, "__file__", None)
    ]


def _real(path: str) -> str:
    return os.path.realpath(path)


def _pack_root(name: str, explicit: bool) -> str | None:
    if not explicit:
        return user_code_root(name)
    if name in NEVER_SHIPPED:
        raise ConfigError(f"module {name!r} cannot be shipped: the node brings its own")
    if name not in sys.modules:
        __import__(name)  # a name given in modules=[...]: the client must import it
    root = _module_root(sys.modules[name])
    if root is None:
        raise ConfigError(
            f"module {name!r} cannot be shipped: it is not Python source (a built-in or "
            "compiled module); install it on the hosts instead"
        )
    return root


def _signature_of(name: str, explicit: bool) -> tuple[tuple[str, int, int], ...] | None:
    root = _pack_root(name, explicit)
    if root is None:
        return None
    return tuple((path, info.st_size, info.st_mtime_ns) for path, info in _tree_files(root))


def _tree_files(root: str) -> list[tuple[str, os.stat_result]]:
    """Each file of a module (itself) or a package tree, with its stat, sorted."""
    if not os.path.isdir(root):
        return [(root, os.stat(root))]
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        for filename in sorted(names):
            if not filename.endswith(SKIPPED_SUFFIXES):
                path = os.path.join(folder, filename)
                found.append((path, os.stat(path)))
    return found


def _read_tree(name: str, root: str) -> tuple[dict[str, bytes], tuple[tuple[str, int, int], ...]]:
    """Archive name → bytes of a pack's files, and their signature."""
    files: dict[str, bytes] = {}
    signature = []
    total = 0
    for path, info in _tree_files(root):
        total += info.st_size
        if total > MAX_PACK_BYTES:
            raise ConfigError(
                f"module {name!r} ({root}) holds over {MAX_PACK_BYTES >> 20} MiB: too much to "
                "ship as code; install it on the hosts, or send data with files=[...]"
            )
        relative = os.path.basename(root) if path == root else os.path.relpath(path, root)
        prefix = "" if path == root else f"{os.path.basename(root)}/"
        with open(path, "rb") as source:
            files[prefix + relative.replace(os.sep, "/")] = source.read()
        signature.append((path, info.st_size, info.st_mtime_ns))
    return files, tuple(signature)


def missing_module(error: BaseException) -> str | None:
    """The module a task's error says a worker could not import (``No module named 'x'``),
    from the error, its cause (the remote traceback) or its text."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        return error.name
    text = f"{error} {error.__cause__ or ''}"
    marker = "No module named '"
    start = text.find(marker)
    if start < 0:
        return None
    end = text.find("'", start + len(marker))
    return text[start + len(marker) : end] if end > 0 else None


def _top_name(module: str | types.ModuleType) -> str:
    name = module.__name__ if isinstance(module, types.ModuleType) else module
    if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"modules= takes module names or modules, got {module!r}")
    return name.partition(".")[0]


__all__ = [
    "CodePack",
    "CodeRegistry",
    "LinkCode",
    "ModuleShipper",
]
