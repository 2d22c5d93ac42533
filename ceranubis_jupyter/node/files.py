"""Data files on the node: the per-client directory synced by content, and files sent back.

::

    client                                   supervisor
    SYNC_OFFER {dir, files: [name, size, sha256]} ─►  per-client dir in the cache (0700, ours);
                                       ◄─ SYNC_NEED  what is missing or differs (the index
                                                     of what was written here, by size and
                                                     mtime, spares re-hashing)
    SYNC_CHUNK (index, offset, bytes) ... ──────────►  written to ``.name.ceranubis-<id>``
                                                     (0600), hashed as it comes, renamed
                                                     into place when whole and right
                                       ◄─ SYNC_DONE  {dir, error}; workers chdir there

Tasks wait while a sync runs (the supervisor dispatches nothing), so no task sees half a
file; a file that fails (a full disk) is removed and named in the error, never left half
written. Names with ``..``, absolute names and names through a symlink are refused. A
``FETCH`` streams a file of the tasks' working directory back in chunks, as fast as the
client's pipe takes them.

Stdlib only: it runs on bare hosts.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

from ..wire import protocol as p
from ..wire.messages import (
    FETCH,
    FETCH_CHUNK,
    FETCH_DONE,
    SYNC_CHUNK,
    SYNC_CWD,
    SYNC_DONE,
    SYNC_NEED,
    SYNC_OFFER,
    SYNC_SKIP,
)
from .code import CodeError, private_dir

# The cache's sub-directory for the clients' data directories (beside the node bundles).
FILES_DIR = "files"
# What the node wrote into a data directory: name -> [size, mtime_ns, sha256].
INDEX_NAME = ".ceranubis-index.json"
# Bytes of a fetched file per frame: large enough to amortize a frame, small enough to
# keep the node's memory flat and other messages flowing between chunks.
FETCH_CHUNK_SIZE = 1 << 20
# A temporary file this old is what a node killed mid-sync left: removed at the next offer
# (a younger one may be another node's, of the same client, still writing).
STALE_TMP_SECONDS = 3600
_TMP_MARK = ".ceranubis-"
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class FileError(Exception):
    """A data file could not be synced or sent (the text names the file)."""


def files_root() -> str:
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(home, "ceranubis", FILES_DIR)


def check_name(name: str) -> str:
    """``name`` if it is a plain relative name inside the tree; else :class:`FileError`."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\0" in name or "\\" in name:
        raise FileError(f"{name!r}: only relative names inside the synced tree are allowed")
    if any(part in ("", ".", "..") for part in parts) or parts[0] == INDEX_NAME:
        raise FileError(f"{name!r}: names with '..', '.' or empty parts are refused")
    return name


def _sha256_of(path: str) -> str:
    import hashlib  # on first use, not with the node (see code._file_sha256)

    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _remove_stale(root: str) -> None:
    """Remove the temporary files of syncs that died (older than STALE_TMP_SECONDS)."""
    now = time.time()
    for folder, _, names in os.walk(root):
        for name in names:
            if name.startswith(".") and _TMP_MARK in name:
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    if now - os.lstat(path).st_mtime > STALE_TMP_SECONDS:
                        os.unlink(path)


def _safe_parent(root: str, name: str) -> str:
    """The directory of ``name`` under ``root``, made (0700) with no symlink on the way."""
    folder = root
    for part in name.split("/")[:-1]:
        folder = os.path.join(folder, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise FileError(f"{name}: {folder} is not a directory of this account")
    return folder


class _Incoming:
    """One file being received into a private temporary file. Not hashed again here: the
    client checked the file was unchanged (size, mtime) since it hashed it before sending
    its last chunk (or sent SYNC_SKIP), and SSH guards the bytes on the way."""

    def __init__(self, root: str, name: str, size: int, sha: str, tag: int) -> None:
        self.name, self.size, self.sha = name, size, sha
        folder = _safe_parent(root, name)
        self.target = os.path.join(root, name)
        self.tmp = os.path.join(folder, f".{os.path.basename(name)}{_TMP_MARK}{tag}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        self.fd = os.open(self.tmp, flags, 0o600)
        self.written = 0

    def write(self, offset: int, data: p.Buffer) -> bool:
        """Append a chunk; ``True`` once the file is whole, checked and in place."""
        if offset != self.written:
            raise FileError(f"{self.name}: a chunk arrived out of order")
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.written += len(data)
        if self.written < self.size:
            return False
        os.close(self.fd)
        self.fd = -1
        if self.written != self.size:
            raise FileError(f"{self.name}: more bytes came than the file has")
        os.replace(self.tmp, self.target)
        return True

    def drop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class _Job:
    """One sync: what the client offered, what is still to come, what failed."""

    def __init__(self, sync_id: int, root: str, files: list[list[Any]], need: list[int]) -> None:
        self.sync_id, self.root, self.files = sync_id, root, files
        self.pending = set(need)
        self.open: dict[int, _Incoming] = {}
        self.errors: list[str] = []


class FileStore:
    """The supervisor's side of data files (see the module's docstring).

    Args:
        send: sends a message to the client.
        tell_workers: sends a message to every worker.
    """

    def __init__(
        self, send: Callable[[p.Message], None], tell_workers: Callable[[p.Message], None]
    ) -> None:
        self._send = send
        self._tell_workers = tell_workers
        self.job: _Job | None = None
        self.index: dict[str, list[Any]] = {}
        self._fetches: list[tuple[int, Any]] = []  # (tag, open file), oldest first

    @property
    def busy(self) -> bool:
        """A sync runs: tasks must wait."""
        return self.job is not None

    def on_message(self, message: p.FileSync) -> None:
        if message.op == SYNC_OFFER:
            self._offer(message)
        elif message.op in (SYNC_CHUNK, SYNC_SKIP):
            self._chunk(message)
        elif message.op == FETCH:
            self._fetch(message)

    def _offer(self, message: p.FileSync) -> None:
        try:
            offer = json.loads(bytes(message.data))
            root, files = self._prepare(offer)
        except (FileError, CodeError, OSError, ValueError, TypeError, KeyError) as error:
            self._done(message.sync_id, "", [str(error)])
            return
        self._abandon()  # a newer offer replaces a sync still under way
        need = [i for i, (name, size, sha) in enumerate(files) if not self._have(root, *files[i])]
        self.job = _Job(message.sync_id, root, files, need)
        self._send(p.FileSync(SYNC_NEED, message.sync_id, 0, 0, json.dumps(need).encode()))
        self._maybe_finish()

    def _abandon(self) -> None:
        if self.job is not None:
            for incoming in self.job.open.values():
                incoming.drop()
            self.job = None

    def _prepare(self, offer: dict[str, Any]) -> tuple[str, list[list[Any]]]:
        key = str(offer["dir"])
        if not key or not set(key) <= _KEY_CHARS:
            raise FileError(f"bad data directory key {key!r}")
        base = files_root()
        os.makedirs(os.path.dirname(base), 0o700, exist_ok=True)
        private_dir(base)
        root = os.path.join(base, key)
        private_dir(root)
        files = [[check_name(str(n)), int(size), str(sha)] for n, size, sha in offer["files"]]
        self.index = self._load_index(root)
        _remove_stale(root)
        return root, files

    def _load_index(self, root: str) -> dict[str, list[Any]]:
        try:
            with open(os.path.join(root, INDEX_NAME)) as source:
                index = json.load(source)
            return index if isinstance(index, dict) else {}
        except (OSError, ValueError):
            return {}

    def _have(self, root: str, name: str, size: int, sha: str) -> bool:
        """Whether ``name`` is there with this content (by the index when its size and
        mtime are what the node wrote, else by hashing it)."""
        try:
            info = os.lstat(os.path.join(root, name))
            if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                return False
            known = self.index.get(name)
            if known == [size, info.st_mtime_ns, sha]:
                return True
            same = _sha256_of(os.path.join(root, name)) == sha
        except OSError:
            return False
        if same:
            self.index[name] = [size, info.st_mtime_ns, sha]
        return same

    def _chunk(self, message: p.FileSync) -> None:
        job = self.job
        if job is None or job.sync_id != message.sync_id or message.index not in job.pending:
            return  # the rest of a file that failed: dropped
        incoming = job.open.get(message.index)
        name, size, sha = job.files[message.index]
        try:
            if message.op == SYNC_SKIP:
                raise FileError("it changed while it was being sent; sync again")
            if incoming is None:
                incoming = job.open[message.index] = _Incoming(
                    job.root, name, size, sha, job.sync_id
                )
            if incoming.write(message.offset, message.data):
                self._received(job, message.index, incoming)
        except (OSError, FileError) as error:
            if incoming is not None:
                incoming.drop()
            job.open.pop(message.index, None)
            job.pending.discard(message.index)
            job.errors.append(f"{name}: {getattr(error, 'strerror', None) or error}")
        self._maybe_finish()

    def _received(self, job: _Job, index: int, incoming: _Incoming) -> None:
        del job.open[index]
        job.pending.discard(index)
        mtime = os.lstat(incoming.target).st_mtime_ns
        self.index[incoming.name] = [incoming.size, mtime, incoming.sha]

    def _maybe_finish(self) -> None:
        job = self.job
        if job is None or job.pending:
            return
        self.job = None
        try:
            self._save_index(job.root)
        except OSError as error:
            job.errors.append(f"{INDEX_NAME}: {error.strerror or error}")
        os.chdir(job.root)  # workers forked from now on start there
        self._tell_workers(p.FileSync(SYNC_CWD, job.sync_id, 0, 0, job.root.encode()))
        self._done(job.sync_id, job.root, job.errors)

    def _save_index(self, root: str) -> None:
        tmp = os.path.join(root, f"{INDEX_NAME}.tmp")
        with open(tmp, "w") as out:
            json.dump(self.index, out)
        os.replace(tmp, os.path.join(root, INDEX_NAME))

    def _done(self, sync_id: int, root: str, errors: list[str]) -> None:
        host = socket.gethostname()
        text = "; ".join(errors) if errors else None
        body = json.dumps({"dir": root, "error": text, "hostname": host}).encode()
        self._send(p.FileSync(SYNC_DONE, sync_id, 0, 0, body))

    # ------------------------------------------------------------------ files back

    def _fetch(self, message: p.FileSync) -> None:
        try:
            name = check_name(str(json.loads(bytes(message.data))))
            source = open(os.path.join(os.getcwd(), name), "rb")  # noqa: SIM115  (streamed)
        except (FileError, OSError, ValueError) as error:
            self._fetch_done(message.index, 0, str(error))
            return
        self._fetches.append((message.index, source))

    def pump(self, room: Callable[[], bool]) -> None:
        """Send chunks of fetched files while ``room()`` says the client's pipe takes them."""
        while self._fetches and room():
            tag, source = self._fetches[0]
            offset = source.tell()
            failure: str | None = None
            try:
                block = source.read(FETCH_CHUNK_SIZE)
            except OSError as error:
                block, failure = b"", str(error)
            if block:
                self._send(p.FileSync(FETCH_CHUNK, 0, tag, offset, block))
                continue
            source.close()
            self._fetches.pop(0)
            self._fetch_done(tag, offset, failure)

    @property
    def fetching(self) -> bool:
        return bool(self._fetches)

    def _fetch_done(self, tag: int, size: int, error: str | None) -> None:
        body = json.dumps({"size": size, "error": error}).encode()
        self._send(p.FileSync(FETCH_DONE, 0, tag, 0, body))


def worker_chdir(message: p.FileSync) -> None:
    """(Worker) Run the next tasks in the synced directory."""
    if message.op == SYNC_CWD:
        os.chdir(bytes(message.data).decode())
