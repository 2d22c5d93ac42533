"""Data files travel with the work: the manifest, the sync to each host, files fetched back.

::

    kernel thread: ex.sync() / files=[...]        loop thread: one LinkFiles per node
    ─────────────────────────────────────         ───────────────────────────────────
    build_manifest(paths): name, size, sha256 ─►  SYNC_OFFER (before the next tasks)
      (hashes cached by size/mtime/inode)         SYNC_NEED → stream those files in
    FileRegistry.publish(manifest)                  SYNC_CHUNKs of CHUNK_SIZE, each after
    wait for every ready host's SYNC_DONE  ◄──      the channel drained (never a whole file
                                                    in memory); counted per host
                                                  SYNC_DONE → the host's outcome

Names are relative to the client's working directory, so a task opens ``data/x.csv`` on
every host as in the notebook: each host keeps a copy in a per-client directory of its cache
(``node/files.py``) and runs tasks there. Local nodes share the client's files and run in
its working directory: nothing is copied to them. The transfer goes over the node's own
connection (no second SSH session, no SFTP subsystem needed on the host).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, FileSyncError
from ..wire import protocol as p
from ..wire.messages import (
    FETCH_CHUNK,
    FETCH_DONE,
    SYNC_CHUNK,
    SYNC_DONE,
    SYNC_NEED,
    SYNC_OFFER,
    SYNC_SKIP,
)
from .transport import machine_id

# Bytes per SYNC_CHUNK frame: 4 MiB frames are received in place on the node (over
# LARGE_FRAME: no copy) and amortize a frame's cost; 512 KiB ran ~10% slower on the bench
# (bench_sync.py); larger only delays heartbeats queued behind a chunk.
CHUNK_SIZE = 4 << 20
# Bytes read at a time when hashing a file (bounded memory for any file size).
HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    name: str  # relative, with "/" separators
    path: str  # absolute, on the client
    size: int
    sha256: str
    mtime_ns: int = 0  # when it was hashed: a file changed since is not sent as it


@dataclass(frozen=True)
class Manifest:
    key: str  # the host-side directory's name: this client machine and working directory
    entries: tuple[FileEntry, ...]

    def offer(self) -> bytes:
        files = [[e.name, e.size, e.sha256] for e in self.entries]
        return json.dumps({"dir": self.key, "files": files}).encode()

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)


class HashCache:
    """sha256 of files by (size, mtime, inode): a re-sync hashes only what changed.
    Thread-safe enough: two threads hashing one file at once both get its hash."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, int, int, str]] = {}

    def sha256(self, path: str, info: os.stat_result) -> str:
        stamp = (info.st_size, info.st_mtime_ns, info.st_ino)
        known = self._known.get(path)
        if known is not None and known[:3] == stamp:
            return known[3]
        digest = hashlib.sha256()
        with open(path, "rb") as source:
            while block := source.read(HASH_BLOCK):
                digest.update(block)
        self._known[path] = (*stamp, digest.hexdigest())
        return digest.hexdigest()


def build_manifest(paths: Iterable[str], cache: HashCache, base: str | None = None) -> Manifest:
    """The manifest of ``paths`` (files or directories, relative to ``base``, the working
    directory by default).

    Raises:
        ConfigError: a path is absolute, leaves ``base`` (``..``), does not exist, is or
            holds a symlink that points outside the tree, or cannot be read (names it).
    """
    base = os.path.abspath(base or os.getcwd())
    found: dict[str, FileEntry] = {}
    for given in paths:
        for name, path in _files_under(base, _checked_relative(given)):
            found[name] = _entry(name, path, cache)
    key = f"{machine_id()}-{hashlib.sha256(base.encode()).hexdigest()[:16]}"
    return Manifest(key, tuple(found[name] for name in sorted(found)))


def _checked_relative(given: str) -> str:
    text = os.fspath(given)
    if not isinstance(text, str) or not text:
        raise ConfigError(f"files= takes relative paths, got {given!r}")
    if os.path.isabs(text):
        raise ConfigError(
            f"files=: {text!r} is absolute; name files relative to the "
            "working directory (tasks open them by that name on every host)"
        )
    normal = os.path.normpath(text)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise ConfigError(f"files=: {text!r} leaves the working directory ('..')")
    return normal


def _files_under(base: str, relative: str) -> Iterable[tuple[str, str]]:
    """(name, absolute path) of each file at or under ``relative``."""
    top = os.path.join(base, relative)
    if not os.path.lexists(top):
        raise ConfigError(f"files=: {relative!r} does not exist (in {base})")
    _check_inside(base, top, relative)
    if not os.path.isdir(top):
        yield relative.replace(os.sep, "/"), top
        return
    for folder, dirs, names in os.walk(top, followlinks=False):
        for name in sorted(dirs):
            _check_inside(base, os.path.join(folder, name), os.path.relpath(folder, base))
        for name in sorted(names):
            path = os.path.join(folder, name)
            _check_inside(base, path, os.path.relpath(path, base))
            yield os.path.relpath(path, base).replace(os.sep, "/"), path


def _check_inside(base: str, path: str, shown: str) -> None:
    if os.path.islink(path):
        real = os.path.realpath(path)
        if real != base and not real.startswith(base + os.sep):
            raise ConfigError(f"files=: {shown} is a symlink to {real}, outside {base}")


def _entry(name: str, path: str, cache: HashCache) -> FileEntry:
    try:
        info = os.stat(path)
        return FileEntry(name, path, info.st_size, cache.sha256(path, info), info.st_mtime_ns)
    except OSError as error:
        raise ConfigError(f"files=: cannot read {name}: {error.strerror or error}") from None


@dataclass
class SyncProgress:
    """One host's latest sync, for the progress display and tests."""

    version: int = 0
    state: str = "idle"  # idle, syncing, done, failed
    files_total: int = 0  # files to send (those the host lacked)
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    offer_bytes: int = 0  # the manifest: names, sizes and hashes
    directory: str = ""  # where the host keeps the files (and runs tasks)
    error: str = ""

    def describe(self) -> str:
        """A short line while syncing or after a failure (empty otherwise)."""
        if self.state == "failed":
            return f"data sync failed: {self.error}"
        if self.state != "syncing":
            return ""
        mb = 1 << 20
        return (
            f"syncing data: {self.files_done}/{self.files_total} files, "
            f"{self.bytes_done / mb:.1f}/{self.bytes_total / mb:.1f} MB"
        )


@dataclass
class FileRegistry:
    """The manifest every node should have, and how far each host got (thread-safe)."""

    manifest: Manifest | None = None
    version: int = 0
    progress: dict[str, SyncProgress] = field(default_factory=dict)
    bytes_sent: int = 0  # file bytes sent, all hosts
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, manifest: Manifest) -> int:
        with self._changed:
            self.manifest, self.version = manifest, self.version + 1
            return self.version

    def note(self, host: str, update: Callable[[SyncProgress], None], info: Any = None) -> None:
        """(Loop thread) Change a host's progress (and its ``HostInfo.sync`` line);
        wakes :meth:`wait`."""
        with self._changed:
            progress = self.progress.setdefault(host, SyncProgress())
            update(progress)
            if info is not None:
                info.sync = progress.describe()
            self._changed.notify_all()

    def wait(self, hosts: Callable[[], Sequence[str]], version: int, timeout: float | None) -> None:
        """Wait until each of ``hosts()`` finished sync ``version`` (or left)."""

        def finished() -> bool:
            return all(self._finished(host, version) for host in hosts())

        with self._changed:
            if not self._changed.wait_for(finished, timeout):
                raise TimeoutError(f"the data sync did not finish within {timeout} s")

    def _finished(self, host: str, version: int) -> bool:
        known = self.progress.get(host)
        return known is not None and known.version >= version and known.state != "syncing"


class LinkFiles:
    """One node's side of syncs and fetches, on the loop thread (one per node session)."""

    def __init__(self, link: Any) -> None:
        self.host, self._send, self._link = link.host, link.send, link
        self.version = 0
        self._manifest: Manifest | None = None
        self._streamer: asyncio.Task[None] | None = None
        self.fetches: dict[int, Fetch] = {}

    def offer_if_new(self, registry: FileRegistry) -> None:
        """Offer the newest manifest if this node has not had it (before tasks)."""
        if registry.version == self.version or registry.manifest is None:
            return
        if getattr(self._link.transport, "shares_files", False):
            return  # a local node runs in the client's own directory
        if self._streamer is not None:
            self._streamer.cancel()  # the node drops what it got of the older sync
        self.version, self._manifest = registry.version, registry.manifest
        body = registry.manifest.offer()
        registry.note(self.host, lambda s: _started(s, self.version, len(body)), self._link.info)
        self._send(p.FileSync(SYNC_OFFER, self.version, 0, 0, body))

    def on_message(self, message: p.FileSync, registry: FileRegistry) -> None:
        if message.op == SYNC_NEED and message.sync_id == self.version:
            need = [int(i) for i in json.loads(bytes(message.data))]
            self._streamer = asyncio.ensure_future(self._stream(need, registry))
        elif message.op == SYNC_DONE and message.sync_id == self.version:
            done = json.loads(bytes(message.data))
            registry.note(self.host, lambda s: _ended(s, done), self._link.info)
        elif message.op in (FETCH_CHUNK, FETCH_DONE) and message.index in self.fetches:
            self._on_fetch(message)

    def _on_fetch(self, message: p.FileSync) -> None:
        if self.fetches[message.index].on_message(message):
            del self.fetches[message.index]

    async def _stream(self, need: list[int], registry: FileRegistry) -> None:
        manifest, version = self._manifest, self.version
        assert manifest is not None
        entries = [manifest.entries[i] for i in need]
        total = sum(e.size for e in entries)
        registry.note(self.host, lambda s: _planned(s, len(entries), total), self._link.info)
        for index, entry in zip(need, entries, strict=True):
            await self._send_file(index, entry, version, registry)
            registry.note(self.host, _file_sent, self._link.info)

    async def _send_file(
        self, index: int, entry: FileEntry, version: int, registry: FileRegistry
    ) -> int:
        """Stream one file in chunks (one, maybe empty, at least), each once the channel
        drained; before the last, check it is the file that was hashed. Bytes sent."""
        offset = 0
        with open(entry.path, "rb") as source:
            while True:
                block = source.read(min(CHUNK_SIZE, entry.size - offset))
                last = offset + len(block) >= entry.size or not block
                if last and _changed(entry):
                    self._send(p.FileSync(SYNC_SKIP, version, index, offset, b""))
                    return offset
                self._send(p.FileSync(SYNC_CHUNK, version, index, offset, block))
                offset += len(block)
                registry.bytes_sent += len(block)
                registry.note(
                    self.host, functools.partial(_bytes_sent, size=len(block)), self._link.info
                )
                channel = self._link.channel
                if last or channel is None:
                    return offset
                await channel.drain()

    def close(self) -> None:
        if self._streamer is not None:
            self._streamer.cancel()
        for fetch in self.fetches.values():
            fetch.fail("the node went away during the fetch; fetch again")
        self.fetches.clear()


def _changed(entry: FileEntry) -> bool:
    """Whether the file is no longer the one that was hashed (size and mtime, as rsync)."""
    try:
        info = os.stat(entry.path)
    except OSError:
        return True
    return (info.st_size, info.st_mtime_ns) != (entry.size, entry.mtime_ns)


def _started(progress: SyncProgress, version: int, offer_bytes: int) -> None:
    progress.version, progress.state, progress.error = version, "syncing", ""
    progress.files_total = progress.files_done = progress.bytes_total = progress.bytes_done = 0
    progress.offer_bytes = offer_bytes


def _planned(progress: SyncProgress, files: int, size: int) -> None:
    progress.files_total, progress.bytes_total = files, size


def _bytes_sent(progress: SyncProgress, size: int) -> None:
    progress.bytes_done += size


def _file_sent(progress: SyncProgress) -> None:
    progress.files_done += 1


def _ended(progress: SyncProgress, done: dict[str, Any]) -> None:
    progress.directory = str(done.get("dir") or "")
    error = done.get("error")
    progress.state = "failed" if error else "done"
    progress.error = str(error) if error else ""


class Fetch:
    """A file coming back from a host, written to a temporary name beside ``dest`` and
    renamed when whole; ``future`` gets ``dest`` or the error."""

    def __init__(self, host: str, name: str, dest: str, future: Any) -> None:
        self.host, self.name, self.dest, self.future = host, name, dest, future
        folder = os.path.dirname(os.path.abspath(dest)) or "."
        self.tmp = os.path.join(folder, f".{os.path.basename(dest)}.ceranubis-fetch-{id(self)}")
        self.out = open(self.tmp, "wb")  # noqa: SIM115  (written chunk by chunk)

    def on_message(self, message: p.FileSync) -> bool:
        """Take a chunk or the end; ``True`` when this fetch is over."""
        if message.op == FETCH_CHUNK:
            self.out.write(message.data)
            return False
        done = json.loads(bytes(message.data))
        self.out.close()
        if done.get("error"):
            self.fail(f"cannot fetch {self.name}: {done['error']}")
        else:
            os.replace(self.tmp, self.dest)
            self.future.set_result(self.dest)
        return True

    def fail(self, text: str) -> None:
        self.out.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)
        if not self.future.done():
            self.future.set_exception(FileSyncError(self.host, text))
