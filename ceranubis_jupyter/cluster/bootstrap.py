"""Zero-install nodes: the fixed remote command and the content-addressed bundle.

::

    client                                        host (only python3 needed)
    ──────                                        ──────────────────────────
    exec python3 -E -s -c BOOT ceranubis-node SHA ─► BOOT: is ~/.cache/ceranubis/SHA/ there,
                                                        ours, 0700, and do its files hash
                                  "OK\\n"  ◄──────   yes ─┐    to SHA?
                                  "NEED\\n" ◄──────  no: │
    length(8) + sha256 + zip ─────────────────────►  unpack (0700), check SHA, rename into place
                                  "OK\\n"  ◄──────        │
    protocol frames (Hello, ...) ◄──────────────►  ───┴► ceranubis_jupyter.node.supervisor.main()

The bundle is a zip of the node's stdlib-only modules plus dill (pure Python), and their
bytecode for the client's interpreter (:mod:`.bytecode`: a cold host compiles nothing). Its
name is the sha256 of its source files (:func:`tree_digest`), so a host keeps the versions
it has seen, a bundle is sent at most once per host and version, and BOOT checks what it is
about to run against the name the client gave: a source changed or planted in the cache is
never run (the bundle is unpacked afresh), a cache directory of another user is refused with
an ``E`` line (on planted bytecode, see the note above ``BOOT``).
Installing also removes what failed unpacks left (``.tmp-*``) and bundles unused for
long (:data:`KEEP_BUNDLES`). ``BOOT`` is written to parse on any Python so that a too-old
interpreter gets a clear ``E`` line instead of a ``SyntaxError``. The node process keeps
``ceranubis-node`` in its command line (``transport.NODE_MARKER``), then the bundle's digest
and the client's identity (``transport.client_identity``, for ``kill-strays``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import shlex
import struct
import sys
import threading
import zipfile
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import dill

from .bytecode import bytecode
from .transport import NODE_MARKER, client_identity

# The oldest Python the node code is written for (pyproject's requires-python): BOOT refuses
# older ones with a clear line instead of a SyntaxError. The handshake then insists on the
# client's own major.minor, since functions travel as bytecode.
MIN_PYTHON = (3, 10)
# Seconds BOOT may spend receiving and unpacking the bundle before it gives up (SIGALRM):
# long enough for a slow link, short enough that a stalled client leaves no process behind.
BOOT_TIMEOUT = 120
# What the bundle holds of this package: the node, the wire it speaks, and the errors both
# raise. Everything in these is stdlib + dill (tests/test_layout.py keeps it so), so the
# bundle is derived from the package itself and never lists modules by hand.
BUNDLED = ("errors.py", "wire", "node")
# zlib level for the zip of the sources alone (code packs): 6 shrinks dill 4x in ~10 ms.
COMPRESS_LEVEL = 6
# zlib level for the bundle shipped to a cold host, sources and bytecode (~920 KB): 1 takes
# ~15 ms against ~28 ms at 6, for ~407 KB on the wire against ~373 KB (once per host).
SHIP_COMPRESS_LEVEL = 1
_LENGTH = struct.Struct("!Q")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_PACKAGE = "ceranubis_jupyter"
_STUB_INIT = '"""ceranubis node bundle: only the modules a node runs."""\n'
# The one thread that builds bundles to ship (see bundle_bytes); started on first use.
_BUILDER = ThreadPoolExecutor(1, thread_name_prefix="ceranubis-bundle")

# Bundle versions a host keeps however old (by last use); older ones go once unused this
# long. A node imports lazily (dill's submodules), so a running node's bundle must stay.
KEEP_BUNDLES = 3
PRUNE_UNUSED_SECONDS = 24 * 3600

# Runs on the host under ``python -E -s`` (``-I`` but for the current directory, dropped
# below; Python 2 lacks ``-I``): the host's own site-packages stay importable for the user's
# tasks, while the bundle goes first on ``sys.path`` so its dill and node code win.
# Keep it parseable by Python 2 and 3.0+ (no f-strings, no nonlocal, no keyword-only args).
#
# What it runs is checked first: the cache directory is this account's and 0700, the
# bundle directory is this account's, 0700 and holds no symlink or file of another user,
# and its files hash to the digest the client named (``tree_digest``: ~1-2 ms warm). Anything
# else is unpacked afresh from what the client sends; a cache of another user is refused.
#
# ``__pycache__`` is not hashed: the client ships unchecked hash-based pycs there with the
# sources (``cluster/bytecode.py``), and Python writes its own there for any module it
# compiles (a host of another Python ignores the shipped ones). A pyc planted there runs
# without its source being read: a new risk? No: Python trusts its own timestamp pycs on
# their header alone (the source's mtime and size, which whoever can write there can copy),
# so one planted there ran before as well. The guard is the same for both: the bundle
# directory is this account's and 0700 and holds no file of another user and no symlink, so
# only this account (which can run any code already) can plant one.
BOOT = r"""
import os, sys
if sys.version_info[:2] < (@MAJOR@, @MINOR@):
    sys.stdout.write("E python %d.%d is too old for ceranubis (needs @MAJOR@.@MINOR@+)\n"
                     % sys.version_info[:2])
    sys.stdout.flush()
    sys.exit(3)
import signal, stat
def say(line):
    os.write(1, line.encode() + b"\n")
def fail(code, line):
    say("E " + line)
    sys.exit(code)
def read(n):
    parts = []
    while n:
        part = os.read(0, min(n, 1 << 20))
        if not part:
            sys.exit(4)
        parts.append(part)
        n -= len(part)
    return b"".join(parts)
def ours(path, what):
    info = os.lstat(path)
    if info.st_uid != os.getuid():
        fail(7, "%s %s belongs to uid %d, not to this account (uid %d); remove it, or set "
             "XDG_CACHE_HOME to a directory of your own" % (what, path, info.st_uid, os.getuid()))
    if not stat.S_ISDIR(info.st_mode):
        fail(7, "%s %s is not a directory; remove it" % (what, path))
    return info
def cache_dir(base):
    try:
        try:
            os.makedirs(base, 0o700)
        except OSError:
            if not os.path.isdir(base):
                raise
        if ours(base, "the node bundle cache").st_mode & 0o077:
            os.chmod(base, 0o700)
    except OSError as error:
        fail(6, "could not write the node bundle to %s: %s" % (base, error))
def hasher():
    try:
        from _sha2 import sha256  # the builtin sha256: hashlib costs ~3 ms more (OpenSSL)
    except ImportError:
        try:
            from _sha256 import sha256
        except ImportError:
            from hashlib import sha256
    return sha256
def tree(root):
    sha256, uid, lines = hasher(), os.getuid(), []
    try:
        for folder, dirs, names in os.walk(root):
            for name in dirs + names:
                info = os.lstat(os.path.join(folder, name))
                if info.st_uid != uid or stat.S_ISLNK(info.st_mode):
                    return None
            if os.path.basename(folder) == "__pycache__":
                continue  # bytecode, ours or python's: see the note above BOOT
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    data = f.read()
                relative = os.path.relpath(os.path.join(folder, name), root)
                lines.append("%s %s\n" % (sha256(data).hexdigest(),
                                          relative.replace(os.sep, "/")))
    except OSError:
        return None
    return sha256("".join(sorted(lines)).encode()).hexdigest()
def verified(path, digest):
    try:
        mode = ours(path, "the node bundle").st_mode
    except OSError:
        return False  # not there (yet)
    if mode & 0o077:
        return False  # others could have written there: unpack afresh
    return tree(path) == digest
def tidy(base, shutil):
    import time
    now, uid, bundles = time.time(), os.getuid(), []
    for name in os.listdir(base):
        entry = os.path.join(base, name)
        try:
            info = os.lstat(entry)
        except OSError:
            continue
        if name.startswith(".tmp-") and now - info.st_mtime > @TIMEOUT@:
            shutil.rmtree(entry, ignore_errors=True)  # a failed unpack's (live ones are younger)
        elif len(name) == 64 and not name.strip("0123456789abcdef") and info.st_uid == uid:
            bundles.append((info.st_mtime, entry))
    bundles.sort(reverse=True)
    for used, entry in bundles[@KEEP@:]:
        if now - used > @UNUSED@:
            shutil.rmtree(entry, ignore_errors=True)
def unpack(blob, tmp, digest):
    import io, zipfile
    try:
        zipfile.ZipFile(io.BytesIO(blob)).extractall(tmp)
    except OSError:
        raise
    except Exception:
        pass  # a damaged zip: the digest check below says so
    if tree(tmp) != digest:
        fail(5, "the unpacked node bundle does not match its digest")
def replace(tmp, path, digest):
    if verified(path, digest):
        return  # another boot installed it meanwhile, and may be running from it now
    if os.path.lexists(path):
        try:
            os.rename(path, tmp + "-old")
        except OSError:
            pass  # another boot moved it first
    try:
        os.rename(tmp, path)
    except OSError:
        if not verified(path, digest):  # else another boot installed it meanwhile
            raise
def install(base, path, digest):
    import shutil, struct, tempfile  # not needed when warm: ~15 ms
    say("NEED")
    size = struct.unpack("!Q", read(8))[0]
    check = read(32)
    blob = read(size)
    if hasher()(blob).digest() != check:
        fail(5, "the node bundle arrived corrupted (sha256 mismatch)")
    mask = os.umask(0o077)
    try:
        tidy(base, shutil)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=base)
        try:
            unpack(blob, tmp, digest)
            replace(tmp, path, digest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(tmp + "-old", ignore_errors=True)
    except OSError as error:
        fail(6, "could not write the node bundle to %s: %s" % (base, error))
    finally:
        os.umask(mask)
signal.alarm(@TIMEOUT@)
digest = sys.argv[2]
if len(digest) != 64 or digest.strip("0123456789abcdef"):
    fail(2, "bad bundle digest %r" % digest)
home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
base = os.path.join(home, "ceranubis")
path = os.path.join(base, digest)
cache_dir(base)
if not verified(path, digest):
    install(base, path, digest)
signal.alarm(0)
try:
    os.utime(path, None)  # its last use, for tidy()
except OSError:
    pass
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
sys.path.insert(0, path)
say("OK")
from ceranubis_jupyter.node.supervisor import main
main()
"""
BOOT = (
    BOOT.replace("@MAJOR@", str(MIN_PYTHON[0]))
    .replace("@MINOR@", str(MIN_PYTHON[1]))
    .replace("@TIMEOUT@", str(BOOT_TIMEOUT))
    .replace("@KEEP@", str(KEEP_BUNDLES))
    .replace("@UNUSED@", str(PRUNE_UNUSED_SECONDS))
)

# Lines BOOT answers with.
READY = b"OK"
NEED = b"NEED"
ERROR_PREFIX = b"E "


async def boot_answer(
    read_line: Callable[[], Awaitable[bytes | None]],
    send: Callable[[bytes], None],
    bundle: Bundle,
) -> tuple[bool, str | None, bytes | None]:
    """BOOT's handshake over any transport: read its answer, ``send`` the bundle's bytes
    (:func:`bundle_bytes`) when it says NEED and read again. Returns ``(ready, refusal,
    line)``: whether the node started, the reason BOOT gave when it refused, and the last
    line read (``None``: the stream ended)."""
    line = await read_line()
    if line == NEED:
        send(await bundle_bytes(bundle))
        line = await read_line()
    if line is not None and line.startswith(ERROR_PREFIX):
        return False, line[len(ERROR_PREFIX) :].decode("utf-8", "replace"), line
    return line == READY, None, line


class Bundle:
    """The node code, named by the digest of its source files (:func:`tree_digest`).

    Only the digest is computed up front: every start names it, while the zips are needed
    only by a host that has not seen this version (BOOT says NEED) and are built then, once
    (thread-safe). ``cache_tag`` is the interpreter the shipped bytecode is for (``None``:
    sources only).
    """

    def __init__(
        self,
        files: Mapping[str, bytes],
        cache_tag: str | None = sys.implementation.cache_tag,
        origins: Mapping[str, str] | None = None,
    ) -> None:
        self.files = dict(files)
        self.digest = tree_digest(self.files)
        self.cache_tag = cache_tag
        self.origins = dict(origins or {})
        self._lock = threading.Lock()
        self._built: dict[str, bytes] = {}

    @property
    def data(self) -> bytes:
        """The zip of the sources alone, deterministic (what code packs ship)."""
        return self._once("data", lambda: _zip(self.files, COMPRESS_LEVEL))

    def framed(self) -> bytes:
        """The bytes BOOT reads after saying ``NEED``: length, the zip's sha256, the zip
        of the sources and their bytecode (:func:`.bytecode.bytecode`), built once."""
        return self._once("framed", self._frame)

    def _frame(self) -> bytes:
        pycs = bytecode(self.files, self.cache_tag, self.origins)
        data = _zip({**self.files, **pycs}, SHIP_COMPRESS_LEVEL)
        return _LENGTH.pack(len(data)) + hashlib.sha256(data).digest() + data

    def _once(self, what: str, build: Callable[[], bytes]) -> bytes:
        with self._lock:
            if what not in self._built:
                self._built[what] = build()
            return self._built[what]


async def bundle_bytes(bundle: Bundle) -> bytes:
    """:meth:`Bundle.framed` built on a thread of its own, so that the event loop serves the
    other hosts meanwhile, and hosts that say NEED at once queue there (not on the loop's
    default executor, which resolves host names)."""
    return await asyncio.get_running_loop().run_in_executor(_BUILDER, bundle.framed)


def remote_command(python: str, digest: str) -> str:
    """The one shell command that starts a node on a host (every word shell-quoted)."""
    words = [python, "-E", "-s", "-c", BOOT, NODE_MARKER, digest, client_identity()]
    return "exec " + " ".join(shlex.quote(word) for word in words)


def built_once(build: Callable[[], Bundle]) -> Callable[[], Bundle]:
    """``build``, run at most once per process however many threads ask at once: the hosts
    that start together (each asks from a thread) share one bundle, so its bytecode is
    compiled once (with ``functools.lru_cache`` alone, each of them could build its own)."""
    lock = threading.Lock()
    built: list[Bundle] = []

    @functools.wraps(build)
    def once() -> Bundle:
        with lock:
            if not built:
                built.append(build())
            return built[0]

    return once


@built_once
def node_bundle() -> Bundle:
    """The bundle of this installation's node code and dill (built once per process)."""
    paths = _bundle_paths()
    return build_bundle(_bundle_files(paths), origins=paths)


def build_bundle(
    files: Mapping[str, bytes],
    cache_tag: str | None = sys.implementation.cache_tag,
    origins: Mapping[str, str] | None = None,
) -> Bundle:
    """The bundle of ``files`` (archive name → content): same files, same digest. Its
    bytecode is for ``cache_tag``; ``origins`` (archive name → the file it was read from)
    lets it reuse the pycs this interpreter wrote for those files."""
    return Bundle(files, cache_tag, origins)


def _zip(files: Mapping[str, bytes], level: int) -> bytes:
    """A deterministic zip of ``files`` (deflated at ``level``): same files, same bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, _ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name], compresslevel=level)
    return out.getvalue()


def tree_digest(files: Mapping[str, bytes]) -> str:
    """The bundle's name: what BOOT's ``tree()`` computes over the unpacked files (the
    sha256 of the sorted ``"<sha256 of file> <name>"`` lines)."""
    lines = sorted(f"{hashlib.sha256(data).hexdigest()} {name}\n" for name, data in files.items())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _bundle_files(paths: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """Archive name → bytes: the files of :func:`_bundle_paths` and a stub ``__init__``."""
    files = {f"{_PACKAGE}/__init__.py": _STUB_INIT.encode()}
    files.update(read_files(_bundle_paths() if paths is None else paths))
    return files


def read_files(paths: Mapping[str, str]) -> dict[str, bytes]:
    """Archive name → the bytes of the file ``paths`` names for it."""
    files = {}
    for name, path in paths.items():
        with open(path, "rb") as source:
            files[name] = source.read()
    return files


def _bundle_paths() -> dict[str, str]:
    """Archive name → file: :data:`BUNDLED` of this package and dill (``.py`` files)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = {}
    for entry in BUNDLED:
        path = os.path.join(package, entry)
        if entry.endswith(".py"):
            paths[f"{_PACKAGE}/{entry}"] = path
        else:
            paths.update(package_paths(path, f"{_PACKAGE}/{entry}"))
    paths.update(package_paths(os.path.dirname(os.path.abspath(dill.__file__)), "dill"))
    return paths


def package_paths(root: str, name: str) -> dict[str, str]:
    """Archive name (under ``name``) → file: every ``.py`` file of the package at ``root``,
    its ``tests`` and ``__pycache__`` folders left out."""
    paths = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in ("tests", "__pycache__"))
        for filename in names:
            if filename.endswith(".py"):
                path = os.path.join(folder, filename)
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                paths[f"{name}/{relative}"] = path
    return paths
