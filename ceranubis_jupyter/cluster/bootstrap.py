"""Zero-install nodes: the fixed remote command and the content-addressed bundle.

::

    client                                        host (only python3 needed)
    ──────                                        ──────────────────────────
    exec python3 -E -s -c BOOT ceranubis-node SHA ─► BOOT: is ~/.cache/ceranubis/SHA/ there?
                                  "OK\\n"  ◄──────   yes ─┐
                                  "NEED\\n" ◄──────  no: │
    length(8) + bundle zip  ──────────────────────►  check sha256, unpack, rename into place
                                  "OK\\n"  ◄──────        │
    protocol frames (Hello, ...) ◄──────────────►  ───┴► ceranubis_jupyter.node.supervisor.main()

The bundle is a zip of the node's stdlib-only modules plus dill (pure Python). Its name is
its sha256, so a host keeps every version it has seen and a bundle is sent at most once per
host and version. ``BOOT`` is written to parse on any Python so that a too-old interpreter
gets a clear ``E`` line instead of a ``SyntaxError``. The node process keeps
``ceranubis-node`` in its command line (``transport.NODE_MARKER``), then the bundle's digest
and the client's identity (``client=<hostname>:<pid>``, for ``kill-strays``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shlex
import struct
import zipfile
from dataclasses import dataclass

import dill

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
# zlib level for the bundle: 6 shrinks dill 4x for ~20 ms once per client process.
COMPRESS_LEVEL = 6
_LENGTH = struct.Struct("!Q")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_PACKAGE = "ceranubis_jupyter"
_STUB_INIT = '"""ceranubis node bundle: only the modules a node runs."""\n'

# Runs on the host under ``python -E -s`` (``-I`` but for the current directory, dropped
# below; Python 2 lacks ``-I``): the host's own site-packages stay importable for the user's
# tasks, while the bundle goes first on ``sys.path`` so its dill and node code win.
# Keep it parseable by Python 2 and 3.0+.
BOOT = r"""
import os, sys
if sys.version_info[:2] < (@MAJOR@, @MINOR@):
    sys.stdout.write("E python %d.%d is too old for ceranubis (needs @MAJOR@.@MINOR@+)\n"
                     % sys.version_info[:2])
    sys.stdout.flush()
    sys.exit(3)
import signal
def say(line):
    os.write(1, line.encode() + b"\n")
def read(n):
    parts = []
    while n:
        part = os.read(0, min(n, 1 << 20))
        if not part:
            sys.exit(4)
        parts.append(part)
        n -= len(part)
    return b"".join(parts)
def install(base, path, digest):
    import hashlib, io, shutil, struct, tempfile, zipfile  # not needed when warm: ~15 ms
    say("NEED")
    blob = read(struct.unpack("!Q", read(8))[0])
    if hashlib.sha256(blob).hexdigest() != digest:
        say("E the node bundle arrived corrupted (sha256 mismatch)")
        sys.exit(5)
    try:
        os.makedirs(base, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=base)
        zipfile.ZipFile(io.BytesIO(blob)).extractall(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.isdir(path):
                raise
    except OSError as error:
        say("E could not write the node bundle to %s: %s" % (base, error))
        sys.exit(6)
signal.alarm(@TIMEOUT@)
digest = sys.argv[2]
home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
base = os.path.join(home, "ceranubis")
path = os.path.join(base, digest)
if not os.path.isdir(path):
    install(base, path, digest)
signal.alarm(0)
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
)

# Lines BOOT answers with.
READY = b"OK"
NEED = b"NEED"
ERROR_PREFIX = b"E "


@dataclass(frozen=True)
class Bundle:
    """The node code as one zip, named by its sha256."""

    data: bytes
    digest: str

    def framed(self) -> bytes:
        """The bytes BOOT reads after saying ``NEED``: length, then the zip."""
        return _LENGTH.pack(len(self.data)) + self.data


def remote_command(python: str, digest: str) -> str:
    """The one shell command that starts a node on a host (every word shell-quoted)."""
    words = [python, "-E", "-s", "-c", BOOT, NODE_MARKER, digest, client_identity()]
    return "exec " + " ".join(shlex.quote(word) for word in words)


@functools.lru_cache(maxsize=1)
def node_bundle() -> Bundle:
    """The bundle of this installation's node code and dill (built once per process)."""
    return build_bundle(_bundle_files())


def build_bundle(files: dict[str, bytes]) -> Bundle:
    """A deterministic zip of ``files`` (archive name → content): same files, same digest."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, _ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name])
    data = out.getvalue()
    return Bundle(data, hashlib.sha256(data).hexdigest())


def _bundle_files() -> dict[str, bytes]:
    """Archive name → bytes: :data:`BUNDLED` of this package, a stub ``__init__`` and dill."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = {f"{_PACKAGE}/__init__.py": _STUB_INIT.encode()}
    for entry in BUNDLED:
        path = os.path.join(package, entry)
        if entry.endswith(".py"):
            with open(path, "rb") as source:
                files[f"{_PACKAGE}/{entry}"] = source.read()
        else:
            files.update(_package_sources(path, f"{_PACKAGE}/{entry}"))
    files.update(_package_sources(os.path.dirname(os.path.abspath(dill.__file__)), "dill"))
    return files


def _package_sources(root: str, name: str) -> dict[str, bytes]:
    """Every ``.py`` file of a package, tests excluded."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in ("tests", "__pycache__"))
        for filename in names:
            if filename.endswith(".py"):
                path = os.path.join(folder, filename)
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                with open(path, "rb") as source:
                    files[f"{name}/{relative}"] = source.read()
    return files
