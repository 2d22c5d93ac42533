"""The node's side of data sync (node/files.py) driven message by message: what a hostile
or broken client cannot make it do, and what it cleans up."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ceranubis_jupyter.node import files
from ceranubis_jupyter.wire import protocol as p
from ceranubis_jupyter.wire.messages import (
    SYNC_CHUNK,
    SYNC_DONE,
    SYNC_NEED,
    SYNC_OFFER,
    SYNC_SKIP,
)

# Another account's uid (nobody), for a cache directory that is not ours.
OTHER_UID = 65534


class Node:
    """A FileStore and what it said to the client and the workers."""

    def __init__(self) -> None:
        self.sent: list[p.FileSync] = []
        self.told: list[p.Message] = []
        self.store = files.FileStore(self.sent.append, self.told.append)  # type: ignore[arg-type]

    def offer(self, sync_id: int, entries: list[tuple[str, bytes]]) -> list[int]:
        manifest = [[n, len(d), hashlib.sha256(d).hexdigest()] for n, d in entries]
        body = json.dumps({"dir": "client-1", "files": manifest}).encode()
        self.store.on_message(p.FileSync(SYNC_OFFER, sync_id, 0, 0, body))
        need = [m for m in self.sent if m.op == SYNC_NEED]
        return json.loads(bytes(need[-1].data)) if need else []

    def send(self, sync_id: int, index: int, data: bytes) -> None:
        self.store.on_message(p.FileSync(SYNC_CHUNK, sync_id, index, 0, data))

    def done(self) -> dict[str, object]:
        last = [m for m in self.sent if m.op == SYNC_DONE][-1]
        result: dict[str, object] = json.loads(bytes(last.data))
        return result


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the store chdirs into the synced directory
    return Node()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a//b", "a/./b", "", "a/../../b"])
def test_names_outside_the_tree_are_refused(node: Node, name: str) -> None:
    assert node.offer(1, [(name, b"x")]) == []
    assert "refused" in str(node.done()["error"]) or "relative" in str(node.done()["error"])
    assert not node.store.busy


def test_a_symlink_planted_on_the_way_is_not_followed(node: Node, tmp_path: Path) -> None:
    node.offer(1, [("ok.txt", b"ok")])
    node.send(1, 0, b"ok")
    root = Path(str(node.done()["dir"]))
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sub").symlink_to(outside)
    assert node.offer(2, [("sub/evil.txt", b"evil")]) == [0]
    node.send(2, 0, b"evil")
    assert "sub/evil.txt" in str(node.done()["error"])
    assert list(outside.iterdir()) == []


def test_a_cache_directory_of_another_user_is_refused(node: Node, tmp_path: Path) -> None:
    base = tmp_path / "cache" / "ceranubis" / "files"
    base.mkdir(parents=True)
    os.chown(base, OTHER_UID, OTHER_UID)
    node.offer(1, [("a.txt", b"a")])
    assert "not a directory of this account" in str(node.done()["error"])


def test_files_are_private_and_stale_temporary_files_go(node: Node) -> None:
    node.offer(1, [("d/a.txt", b"a")])
    node.send(1, 0, b"a")
    root = Path(str(node.done()["dir"]))
    assert (root / "d" / "a.txt").stat().st_mode & 0o777 == 0o600
    assert (root / "d").stat().st_mode & 0o777 == 0o700
    stale = root / "d" / ".b.txt.ceranubis-7"
    stale.write_bytes(b"half")
    os.utime(stale, (1e9, 1e9))
    fresh = root / "d" / ".c.txt.ceranubis-8"  # another node's, still writing
    fresh.write_bytes(b"half")
    node.offer(2, [("d/a.txt", b"a")])
    assert not stale.exists() and fresh.exists()


def test_a_file_the_client_saw_change_is_dropped_and_named(node: Node) -> None:
    node.offer(1, [("a.txt", b"right"), ("empty.txt", b"")])
    node.send(1, 1, b"")  # an empty file is one empty chunk
    node.store.on_message(p.FileSync(SYNC_SKIP, 1, 0, 0, b""))
    root = Path(str(node.done()["dir"]))
    assert "a.txt: it changed while it was being sent" in str(node.done()["error"])
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith(".ceranubis-index"))
    assert names == ["empty.txt"]  # no partial a.txt, no temporary file
