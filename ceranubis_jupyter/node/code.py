"""The user's code on the node: the host's cache of code packs and their activation.

::

    client                         supervisor                         worker
    CodeOffer(SHA, name) ───────►  cached and verified? ── yes ─►  CodeOffer: evict name
                          ◄──────  no: CodeNeed(SHA), tasks wait      from sys.modules, put
    Code(SHA, zip) ─────────────►  unpack (0700), check SHA,          the pack first on
                                   rename into place ───────────►    sys.path, reload functions

A code pack holds one top-level module or package of the user's (a ``helpers.py`` beside
the notebook, a package under development), zipped by the client and named by the digest of
its files, as the node bundle is (``cluster.bootstrap.tree_digest``). It lives in
``$XDG_CACHE_HOME/ceranubis/code/<digest>`` (``~/.cache`` by default), so a host keeps every
version it has seen and a pack crosses the network once per host and version. A cached pack
is used only if the directory is this account's, 0700, and its files still hash to its name;
otherwise it is unpacked afresh. A newer pack of the same name replaces the older one on
``sys.path`` and drops those modules from ``sys.modules``: an edited module runs its new
code on the next task.

Stdlib only: it runs on bare hosts.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable

from ..wire import protocol as p

# The cache's sub-directory for code packs (beside the node bundles).
CODE_DIR = "code"
# Packs a host keeps however old (by last use); older ones go once unused this long. An
# edit-and-rerun session leaves a pack per edit: this keeps the cache from growing forever
# while a running node's pack (used within the day) stays.
KEEP_PACKS = 20
PRUNE_UNUSED_SECONDS = 24 * 3600
_HEX = "0123456789abcdef"


class CodeError(Exception):
    """A code pack could not be stored or used on this host (the text says where)."""


def cache_root() -> str:
    """Where this host keeps code packs (``$XDG_CACHE_HOME/ceranubis/code``)."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(home, "ceranubis", CODE_DIR)


def pack_dir(digest: str) -> str:
    """The directory of the pack ``digest`` (checked: 64 lowercase hex digits)."""
    if len(digest) != 64 or digest.strip(_HEX):
        raise CodeError(f"bad code pack digest {digest!r}")
    return os.path.join(cache_root(), digest)


def tree_digest(root: str) -> str | None:
    """The sha256 of the sorted ``"<sha256> <relative name>"`` lines of the files under
    ``root`` (``__pycache__`` skipped), or ``None`` if anything there is not this account's,
    is a symlink, or cannot be read."""
    uid, lines = os.getuid(), []
    try:
        for folder, dirs, names in os.walk(root):
            for name in dirs + names:
                info = os.lstat(os.path.join(folder, name))
                if info.st_uid != uid or stat.S_ISLNK(info.st_mode):
                    return None
            if os.path.basename(folder) == "__pycache__":
                continue  # written by python here; guarded by the 0700 directory
            for name in names:
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                lines.append(f"{_file_sha256(path)} {relative}\n")
    except OSError:
        return None
    import hashlib  # only once a code pack comes (see _file_sha256)

    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def _file_sha256(path: str) -> str:
    # hashlib (OpenSSL) and zipfile load on first use, not with the node: ~5 ms of every
    # host's start for a path that only runs once a code pack or a data file comes.
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def is_cached(digest: str) -> bool:
    """Whether the pack is in the cache, ours, 0700 and intact."""
    path = pack_dir(digest)
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o077:
        return False
    if tree_digest(path) != digest:
        return False
    with contextlib.suppress(OSError):
        os.utime(path, None)  # its last use, for prune()
    return True


def prune(base: str) -> None:
    """Remove the packs beyond the :data:`KEEP_PACKS` most recently used that nobody used
    for :data:`PRUNE_UNUSED_SECONDS`, and what failed installs left (``.tmp-*``)."""
    now, packs = time.time(), []
    for name in os.listdir(base):
        entry = os.path.join(base, name)
        with contextlib.suppress(OSError):
            used = os.lstat(entry).st_mtime
            if name.startswith(".tmp-") and now - used > PRUNE_UNUSED_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
            elif len(name) == 64 and not name.strip(_HEX):
                packs.append((used, entry))
    for used, entry in sorted(packs, reverse=True)[KEEP_PACKS:]:
        if now - used > PRUNE_UNUSED_SECONDS:
            shutil.rmtree(entry, ignore_errors=True)


def install(digest: str, blob: p.Buffer) -> None:
    """Unpack a pack the client sent into the cache: a private temporary directory, checked
    against ``digest``, then renamed into place (a task never sees half a pack).

    Raises:
        CodeError: the pack is damaged, or the cache cannot be written (names the path).
    """
    base = cache_root()
    mask = os.umask(0o077)
    try:
        private_dir(base)
        prune(base)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=base)
        try:
            _unpack(blob, tmp, digest)
            _replace(tmp, pack_dir(digest))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(tmp + "-old", ignore_errors=True)
    except OSError as error:
        raise CodeError(f"could not store a code pack in {base}: {error}") from None
    finally:
        os.umask(mask)


def private_dir(path: str) -> None:
    """Make ``path`` (0700); refuse it if another account owns it."""
    os.makedirs(path, 0o700, exist_ok=True)
    info = os.lstat(path)
    if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):
        raise CodeError(
            f"{path} is not a directory of this account (uid {os.getuid()}); remove it, or "
            "set XDG_CACHE_HOME to a directory of your own"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def _unpack(blob: p.Buffer, tmp: str, digest: str) -> None:
    import zipfile  # on first use (see _file_sha256)

    try:
        with zipfile.ZipFile(io.BytesIO(bytes(blob))) as archive:
            for member in archive.namelist():
                if member.startswith("/") or ".." in member.split("/"):
                    raise CodeError(f"a code pack names {member!r}, outside its tree")
            archive.extractall(tmp)
    except zipfile.BadZipFile:
        pass  # the digest check says so
    if tree_digest(tmp) != digest:
        raise CodeError(f"the code pack {digest[:12]} arrived damaged (digest mismatch)")


def _replace(tmp: str, path: str) -> None:
    if os.path.lexists(path):
        os.rename(path, tmp + "-old")
    os.rename(tmp, path)


def activate(digest: str, name: str, active: dict[str, str]) -> None:
    """Put the pack first on ``sys.path`` in place of an older pack of module ``name``,
    and forget that module, so the next import loads the pack's code.

    ``active`` maps each name to the directory of its pack in use (kept by the caller).
    """
    path = pack_dir(digest)
    old = active.get(name)
    if old is not None and old != path and old in sys.path:
        sys.path.remove(old)
    active[name] = path
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[loaded]
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    importlib.invalidate_caches()


class CodeCache:
    """The supervisor's side: answers offers, installs packs, holds tasks while a pack is
    on its way, and tells the workers of each pack to use.

    Args:
        send: sends a message to the client.
        tell_workers: sends a message to every worker.
    """

    def __init__(
        self, send: Callable[[p.Message], None], tell_workers: Callable[[p.Message], None]
    ) -> None:
        self._send = send
        self._tell_workers = tell_workers
        self.waiting: dict[str, str] = {}  # digest -> module name, asked of the client
        self._active: dict[str, str] = {}

    def on_message(self, message: p.CodeOffer | p.Code) -> None:
        """An offer or a pack from the client (raises :class:`CodeError` on failure)."""
        if isinstance(message, p.CodeOffer):
            self.on_offer(message)
        else:
            self.on_code(message)

    def on_offer(self, offer: p.CodeOffer) -> None:
        """Use the pack if this host has it; else ask the client for it."""
        if is_cached(offer.digest):
            self._use(offer.digest, offer.name)
        elif offer.digest not in self.waiting:
            self.waiting[offer.digest] = offer.name
            self._send(p.CodeNeed(offer.digest))

    def on_code(self, code: p.Code) -> None:
        """Store a pack the client sent (raises :class:`CodeError` if it cannot)."""
        name = self.waiting.get(code.digest)
        if name is None:
            raise CodeError(f"the client sent code pack {code.digest[:12]} unasked")
        install(code.digest, code.blob)
        del self.waiting[code.digest]
        self._use(code.digest, name)

    def _use(self, digest: str, name: str) -> None:
        activate(digest, name, self._active)  # workers forked later inherit sys.path
        self._tell_workers(p.CodeOffer(digest, name))
