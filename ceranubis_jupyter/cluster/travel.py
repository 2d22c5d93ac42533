"""What travels with the work, as executor methods: the user's modules (:mod:`.modules`)
and data files (:mod:`.filesync`). :class:`~.executor.NodeExecutor` inherits these."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from ..errors import ConfigError, FileSyncError
from ..wire import protocol as p
from ..wire.messages import FETCH
from .filesync import Fetch, HashCache, SyncProgress, build_manifest
from .modules import ModuleShipper, auto_default
from .scheduler import Scheduler

# Seconds ``fetch`` waits for a file by default (a big file over a slow link takes long).
FETCH_TIMEOUT = 3600.0
# Files' hashes, shared by every executor of the process: a new executor (a cell's) does
# not hash a big data directory again (entries are checked by size, mtime and inode).
_HASHES = HashCache()


class Travel:
    """Modules and data files for an executor (mixed into ``NodeExecutor``)."""

    _scheduler: Scheduler

    def _init_travel(
        self,
        modules: Sequence[str | ModuleType],
        auto_modules: bool | None,
        files: Sequence[str],
    ) -> None:
        scheduler = self._scheduler
        self._code = ModuleShipper(
            scheduler.code,
            modules,
            auto=auto_default(auto_modules),
            idle=lambda: scheduler.outstanding == 0,
        )
        self._hashes = _HASHES
        self._files: list[str] = list(files)
        self._fetch_tags = iter(range(1, 1 << 62))
        self._tag_lock = threading.Lock()
        if not self._files:
            return
        try:  # checked now (a missing path fails here); sent before the first tasks
            scheduler.files.publish(build_manifest(self._files, self._hashes))
        except BaseException:
            scheduler.close_threadsafe()  # no executor is returned: its nodes must go
            raise

    def add_modules(self, modules: Sequence[str | ModuleType]) -> None:
        """Send these modules' source to every host from now on (as ``modules=``)."""
        self._code.add(modules)

    @property
    def code_bytes_sent(self) -> int:
        """Bytes of the user's source sent to hosts so far (0 when their caches had it)."""
        return self._scheduler.code.bytes_sent

    @property
    def file_bytes_sent(self) -> int:
        """Bytes of data files sent to hosts so far (hashes and names not counted)."""
        return self._scheduler.files.bytes_sent

    def sync(
        self, paths: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> dict[str, SyncProgress]:
        """Sync data files to every remote host that is up, by content: only files a host
        lacks or holds in another version are sent. Tasks then run in that copy.

        Args:
            paths: files and directories, relative to the working directory (default:
                the executor's ``files=``); they become the executor's ``files``.
            timeout: seconds to wait for the hosts (``None``: as long as it takes).

        Returns:
            Each host's outcome: files and bytes sent, the directory tasks run in.

        Raises:
            ConfigError: a path is missing, absolute, leaves the directory or is unreadable.
            FileSyncError: a host could not take a file (names the host and the file).
        """
        if paths is not None:
            self._files = list(paths)
        registry = self._scheduler.files
        version = registry.publish(build_manifest(self._files, self._hashes))
        self._scheduler.loop_thread.call_threadsafe(self._offer_files)
        registry.wait(self._remote_ready_hosts, version, timeout)
        outcome = {host: SyncProgress(**vars(p)) for host, p in registry.progress.items()}
        failed = [(host, p.error) for host, p in outcome.items() if p.state == "failed"]
        if failed:  # "h1: data/x: No space left on device; h2: ..."
            (host, error), others = failed[0], failed[1:]
            raise FileSyncError(host, "; ".join([error, *(f"{h}: {e}" for h, e in others)]))
        return outcome

    def _offer_files(self) -> None:
        for link in self._scheduler.links:
            if link.ready:
                link.files.offer_if_new(self._scheduler.files)

    def _remote_ready_hosts(self) -> list[str]:
        return [
            link.host
            for link in list(self._scheduler.links)
            if link.ready and not link.dead and not getattr(link.transport, "shares_files", False)
        ]

    def fetch(
        self, host: str, name: str, dest: str | None = None, *, timeout: float = FETCH_TIMEOUT
    ) -> str:
        """Copy a file a task wrote on ``host`` back here, streamed; returns its path.

        Args:
            host: the host's name as :meth:`hosts` gives it.
            name: the file, relative to the tasks' working directory there (the synced
                data directory, else the node's starting directory).
            dest: where to write it (default: its base name, here); written to a
                temporary name and renamed when whole.

        Raises:
            FileSyncError: the host is not up, or the file cannot be read there.
        """
        if os.path.isabs(name) or ".." in name.split("/"):
            raise ConfigError(f"fetch: {name!r} must be relative to the tasks' directory")
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        target = dest or os.path.basename(name)
        with self._tag_lock:
            tag = next(self._fetch_tags)
        self._scheduler.loop_thread.call_threadsafe(
            lambda: self._start_fetch(host, name, target, tag, future)
        )
        return future.result(timeout)

    def _start_fetch(self, host: str, name: str, dest: str, tag: int, future: Any) -> None:
        link = next((k for k in self._scheduler.links if k.host == host and k.ready), None)
        if link is None:
            future.set_exception(FileSyncError(host, "no node is up there to fetch from"))
            return
        try:
            link.files.fetches[tag] = Fetch(host, name, dest, future)
        except OSError as error:
            future.set_exception(FileSyncError(host, f"cannot write {dest}: {error}"))
            return
        link.send(p.FileSync(FETCH, 0, tag, 0, json.dumps(name).encode()))
