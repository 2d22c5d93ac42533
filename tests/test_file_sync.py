"""Data files travel with the work (cluster/filesync.py, node/files.py), over real sshds.

A directory of 1,000 small files and one 200 MB file goes to a network-namespace host with
a bare Python; the second sync sends only names and hashes, a touched file goes alone, tasks
read by relative path, and a file written there comes back. Bad input fails with the host
and the file named, and a full disk leaves no partial file.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.errors import ConfigError, FileSyncError
from ceranubis_jupyter.jupyter.progress import Counts, HostRow, Snapshot
from ceranubis_jupyter.jupyter.widget import render_hosts
from tests.fixtures_ssh import (
    OpenSSHServer,
    SSHHome,
    make_openssh_server,
    wait_until_ready,
)
from tests.remote import by_value
from tests.test_ssh_netns import NetnsHost, netns_hosts  # noqa: F401  (the fixture)

BARE_PYTHON = "/usr/bin/python3"
RESULT_TIMEOUT = 120.0
SMALL_FILES = 1000
BIG_FILE_MB = 200
# The tmpfs of the full-disk test, and a file that cannot fit in it.
TMPFS_MB = 16
TOO_BIG_MB = 24


def write_data(root: Path, big_mb: int = BIG_FILE_MB) -> int:
    """``root/data``: SMALL_FILES small files and one big file, streamed; total bytes."""
    small = root / "data" / "small"
    small.mkdir(parents=True)
    for i in range(SMALL_FILES):
        (small / f"{i:04d}.txt").write_text(f"file {i}\n")
    block = os.urandom(1 << 20)
    with open(root / "data" / "big.bin", "wb") as out:
        for _ in range(big_mb):
            out.write(block)
    return sum(p.stat().st_size for p in (root / "data").rglob("*") if p.is_file())


@by_value
def read_relative(name: str) -> tuple[int, str]:
    import os

    with open(name, "rb") as source:
        head = source.read(64)
    return os.path.getsize(name), head.decode("latin-1")


@by_value
def write_result(name: str, size: int) -> str:
    import os

    with open(name, "wb") as out:
        out.write(b"r" * size)
    return os.getcwd()


def test_a_data_directory_syncs_by_content_and_tasks_read_it_by_relative_path(
    netns_hosts: list[NetnsHost],  # noqa: F811
    ssh_env: SSHHome,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    total = write_data(tmp_path)
    host = netns_hosts[1]
    with CeranubisExecutor([Host(host.alias, python=BARE_PYTHON, workers=1)]) as executor:
        wait_until_ready(executor, 1)
        first = executor.sync(["data"])[host.alias]
        assert (first.files_total, first.bytes_total) == (SMALL_FILES + 1, total)
        assert executor.file_bytes_sent == total
        assert Path(first.directory).parent == host.server.cache / "ceranubis" / "files"
        size, head = executor.submit(read_relative, "data/small/0007.txt").result(RESULT_TIMEOUT)
        assert (size, head) == (len("file 7\n"), "file 7\n")
        size, _ = executor.submit(read_relative, "data/big.bin").result(RESULT_TIMEOUT)
        assert size == BIG_FILE_MB << 20

        again = executor.sync()[host.alias]  # nothing changed: names and hashes only
        assert (again.files_total, again.bytes_done) == (0, 0) and again.offer_bytes > 0
        assert executor.file_bytes_sent == total

        (tmp_path / "data" / "small" / "0042.txt").write_text("changed, and longer\n")
        touched = executor.sync()[host.alias]
        assert (touched.files_total, touched.bytes_done) == (1, len("changed, and longer\n"))
        assert executor.submit(read_relative, "data/small/0042.txt").result(RESULT_TIMEOUT)[1] == (
            "changed, and longer\n"
        )

        workdir = executor.submit(write_result, "out.bin", 3 << 20).result(RESULT_TIMEOUT)
        assert workdir == first.directory
        fetched = executor.fetch(host.alias, "out.bin", str(tmp_path / "back.bin"))
        assert Path(fetched).read_bytes() == b"r" * (3 << 20)
        with pytest.raises(FileSyncError, match=rf"{host.alias}.*missing\.bin"):
            executor.fetch(host.alias, "missing.bin", str(tmp_path / "never.bin"))
        assert not (tmp_path / "never.bin").exists()


def test_bad_paths_are_refused_with_the_file_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ok.txt").write_text("ok")
    cases = {
        "nothere": "'nothere' does not exist",
        "../elsewhere": "leaves the working directory",
        str(tmp_path / "data"): "is absolute",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            CeranubisExecutor(max_workers=1, files=[path])
    (tmp_path / "data" / "escape").symlink_to("/etc/hostname")
    with pytest.raises(ConfigError, match="data/escape is a symlink to /etc/hostname"):
        CeranubisExecutor(max_workers=1, files=["data"])
    os.unlink(tmp_path / "data" / "escape")
    (tmp_path / "data" / "dangling").symlink_to(tmp_path / "data" / "gone.txt")
    with pytest.raises(ConfigError, match="cannot read data/dangling"):
        CeranubisExecutor(max_workers=1, files=["data"])


@pytest.fixture
def small_disk_server(ssh_home: SSHHome, tmp_path: Path) -> Iterator[OpenSSHServer]:
    """An sshd whose cache is a TMPFS_MB tmpfs: a host with a nearly full disk."""
    server = make_openssh_server(tmp_path / "sshd", ssh_home)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0700", "tmpfs", str(server.cache)],
        check=True,
        timeout=30,
    )
    try:
        yield server
    finally:
        server.stop()
        subprocess.run(["umount", str(server.cache)], check=False, timeout=30)


def test_a_full_disk_names_the_host_and_file_and_leaves_no_partial_file(
    small_disk_server: OpenSSHServer,
    ssh_env: SSHHome,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "data").mkdir()
    (work / "data" / "a.txt").write_text("small")
    with open(work / "data" / "too-big.bin", "wb") as out:
        out.write(os.urandom(1 << 20) * TOO_BIG_MB)
    alias = "cj-small-disk"
    ssh_env.add_alias(alias, "127.0.0.1", small_disk_server.port)
    ssh_env.trust(
        "127.0.0.1", small_disk_server.port, small_disk_server.host_key.with_suffix(".pub")
    )
    with CeranubisExecutor([Host(alias, workers=1)]) as executor:
        wait_until_ready(executor, 1)
        with pytest.raises(FileSyncError) as caught:
            executor.sync(["data"])
        assert str(caught.value) == f"{alias}: data/too-big.bin: No space left on device"
        listing = executor.submit(_listing).result(RESULT_TIMEOUT)
        row = HostRow.from_info(executor.hosts()[0])  # the widget's and text's host row
    assert listing == ["data/a.txt"]  # no partial file, no temporary name left behind
    assert "data sync failed: too-big.bin" in row.sync or "data/too-big.bin" in row.sync
    assert "too-big.bin" in render_hosts((row,))
    assert "too-big.bin" in Snapshot("p", "running", Counts(pending=1), hosts=(row,)).text()


@by_value
def _listing() -> list[str]:
    import os

    found = []
    for folder, _, names in os.walk("."):
        for name in names:
            if not name.startswith(".ceranubis-index"):
                found.append(os.path.relpath(os.path.join(folder, name), "."))
    return sorted(found)


def test_local_nodes_need_no_copy_they_run_in_the_clients_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("local")
    with CeranubisExecutor(max_workers=1, files=["data"]) as executor:
        assert executor.submit(read_relative, "data/x.txt").result(RESULT_TIMEOUT) == (5, "local")
        assert executor.sync() == {}  # no remote host: nothing to send
        assert executor.file_bytes_sent == 0
