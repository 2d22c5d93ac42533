"""The zero-install bootstrap on its own: the bundle, the fixed command, BOOT's answers.

BOOT runs here under a real shell and a real interpreter, over pipes, exactly as sshd would
run it; the SSH tests then run it over real servers.
"""

from __future__ import annotations

import io
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ceranubis_jupyter.cluster.bootstrap import (
    BOOT,
    BOOT_TIMEOUT,
    KEEP_BUNDLES,
    PRUNE_UNUSED_SECONDS,
    build_bundle,
    node_bundle,
    remote_command,
    tree_digest,
)
from ceranubis_jupyter.cluster.executor import NodeExecutor
from ceranubis_jupyter.cluster.transport import (
    NODE_MARKER,
    Channel,
    Transport,
    client_identity,
    machine_id,
    start_process_channel,
)
from ceranubis_jupyter.wire import protocol as p

# Seconds a BOOT run over pipes may take in these tests.
BOOT_TEST_TIMEOUT = 30
# Another account's uid (nobody), for cache directories that are not ours.
OTHER_UID = 65534


def test_bundle_is_content_addressed_and_deterministic() -> None:
    files = {"a/x.py": b"x = 1\n", "a/y.py": b"y = 2\n"}
    first, again = build_bundle(files), build_bundle(dict(reversed(files.items())))
    changed = build_bundle({**files, "a/y.py": b"y = 3\n"})
    assert first.digest == again.digest and first.data == again.data
    assert changed.digest != first.digest
    assert len(first.digest) == 64


def test_bundle_holds_the_node_modules_and_dill_and_nothing_else() -> None:
    names = zipfile.ZipFile(io.BytesIO(node_bundle().data)).namelist()
    ours = sorted(n for n in names if n.startswith("ceranubis_jupyter/"))
    assert ours == [
        f"ceranubis_jupyter/{m}.py"
        for m in (
            "__init__",
            "errors",
            "node/__init__",
            "node/borrow",
            "node/code",
            "node/files",
            "node/hostinfo",
            "node/lending",
            "node/outbox",
            "node/output",
            "node/pace",
            "node/pool",
            "node/relay",
            "node/slot",
            "node/supervisor",
            "node/worker",
            "wire/__init__",
            "wire/batches",
            "wire/calls",
            "wire/describe",
            "wire/framing",
            "wire/inputs",
            "wire/iov",
            "wire/messages",
            "wire/protocol",
            "wire/serialize",
        )
    ]
    assert "dill/__init__.py" in names and "dill/_dill.py" in names
    assert not [n for n in names if not n.startswith(("ceranubis_jupyter/", "dill/"))]
    assert not [n for n in names if "/tests/" in n or n.endswith(".pyc")]


def test_bundle_imports_under_an_isolated_python_without_site(tmp_path: Path) -> None:
    zipfile.ZipFile(io.BytesIO(node_bundle().data)).extractall(tmp_path)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import ceranubis_jupyter.node.supervisor, dill; "
        "print(ceranubis_jupyter.node.__file__); print(dill.__file__); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] not in "
        "sys.stdlib_module_names and m.split('.')[0] not in "
        "('ceranubis_jupyter', 'dill', '__main__', '__mp_main__')))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=BOOT_TEST_TIMEOUT,
        check=True,
    )
    node_file, dill_file, foreign = out.stdout.splitlines()
    assert node_file.startswith(str(tmp_path)) and dill_file.startswith(str(tmp_path))
    assert foreign == "[]", f"the node imported non-stdlib modules: {foreign}"


def test_remote_command_is_one_shell_quoted_exec() -> None:
    python = "/opt/my python/bin/python3'; rm -rf ~"
    words = shlex.split(remote_command(python, "ab" * 32))
    client = f"client={socket.gethostname()}:{machine_id()}:{os.getpid()}"
    assert words == ["exec", python, "-E", "-s", "-c", BOOT, NODE_MARKER, "ab" * 32, client]


Boot = Callable[[], "subprocess.Popen[bytes]"]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """An empty bundle cache (``XDG_CACHE_HOME``) for BOOT runs."""
    return tmp_path / "cache"


@pytest.fixture
def boot(cache: Path) -> Iterator[Boot]:
    """Start BOOT under ``sh -c``, as sshd would; ends any still running afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    env = {"PATH": os.environ["PATH"], "HOME": str(cache.parent), "XDG_CACHE_HOME": str(cache)}

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["/bin/sh", "-c", remote_command(sys.executable, node_bundle().digest)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            bufsize=0,  # unbuffered: readline() must not swallow the Hello after "OK"
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=BOOT_TEST_TIMEOUT)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def _hello(process: subprocess.Popen[bytes]) -> p.Hello:
    assert process.stdout is not None
    conn = p.Connection(p.CLIENT)
    for _ in range(100):
        conn.receive_data(os.read(process.stdout.fileno(), 65536))
        message = conn.next_event()
        if message is not None:
            assert isinstance(message, p.Hello)
            return message
    raise AssertionError("no Hello from the node")


def _finish(process: subprocess.Popen[bytes]) -> int:
    assert process.stdin is not None
    process.stdin.close()
    return process.wait(timeout=BOOT_TEST_TIMEOUT)


def test_boot_asks_for_the_bundle_once_then_uses_the_cache(cache: Path, boot: Boot) -> None:
    bundle = node_bundle()
    cold = boot()
    assert cold.stdin and cold.stdout
    assert cold.stdout.readline() == b"NEED\n"
    cold.stdin.write(bundle.framed())
    cold.stdin.flush()
    assert cold.stdout.readline() == b"OK\n"
    assert _hello(cold).protocol == p.PROTOCOL_VERSION
    assert _finish(cold) == 0
    assert os.listdir(cache / "ceranubis") == [bundle.digest]

    warm = boot()
    assert warm.stdout and warm.stdout.readline() == b"OK\n"
    assert _hello(warm).pid == warm.pid  # the node is the very process we started
    assert _finish(warm) == 0


def test_boot_refuses_a_corrupted_bundle_and_caches_nothing(cache: Path, boot: Boot) -> None:
    bundle = node_bundle()
    process = boot()
    assert process.stdin and process.stdout
    assert process.stdout.readline() == b"NEED\n"
    framed = bytearray(bundle.framed())
    framed[-100] ^= 0xFF
    process.stdin.write(bytes(framed))
    process.stdin.flush()
    assert process.stdout.readline().startswith(b"E the node bundle arrived corrupted")
    assert _finish(process) != 0
    assert not (cache / "ceranubis" / bundle.digest).exists()


def test_boot_exits_when_its_input_closes_before_the_bundle(cache: Path, boot: Boot) -> None:
    process = boot()
    assert process.stdout and process.stdout.readline() == b"NEED\n"
    assert _finish(process) != 0
    assert not (cache / "ceranubis" / node_bundle().digest).exists()


def test_two_cold_boots_at_once_share_one_cache_entry(cache: Path, boot: Boot) -> None:
    bundle = node_bundle()
    boots = [boot() for _ in range(2)]
    for process in boots:  # both see an empty cache before either installs
        assert process.stdout and process.stdout.readline() == b"NEED\n"
    for process in boots:
        assert process.stdin is not None
        process.stdin.write(bundle.framed())
        process.stdin.flush()
    for process in boots:
        assert process.stdout and process.stdout.readline() == b"OK\n"
        assert _hello(process).pid == process.pid
    assert [_finish(process) for process in boots] == [0, 0]
    assert os.listdir(cache / "ceranubis") == [bundle.digest]  # no half-written leftovers


def test_a_cold_boot_leaves_a_bundle_installed_meanwhile_in_place(cache: Path, boot: Boot) -> None:
    bundle = node_bundle()
    first, second = boot(), boot()
    for process in (first, second):  # both see an empty cache
        assert process.stdout and process.stdout.readline() == b"NEED\n"
    for process in (first, second):
        assert process.stdin and process.stdout
        process.stdin.write(bundle.framed())
        process.stdin.flush()
        assert process.stdout.readline() == b"OK\n"
        assert _hello(process).pid == process.pid
        if process is first:  # the first node runs from the installed bundle now
            installed = (cache / "ceranubis" / bundle.digest).stat().st_ino
    # The second took the bundle as it found it: moving it away (and removing it) took
    # the files from under the first node, whose later imports then failed.
    assert (cache / "ceranubis" / bundle.digest).stat().st_ino == installed
    assert [_finish(process) for process in (first, second)] == [0, 0]


def _cold_install(boot: Boot) -> None:
    """One cold boot that installs this installation's bundle, then ends."""
    process = boot()
    assert process.stdin and process.stdout
    assert process.stdout.readline() == b"NEED\n"
    process.stdin.write(node_bundle().framed())
    process.stdin.flush()
    assert process.stdout.readline() == b"OK\n"
    assert _hello(process).pid == process.pid
    assert _finish(process) == 0


def _boot_expecting_need(boot: Boot) -> None:
    """A boot that must ask for the bundle again, install it and run the real node."""
    process = boot()
    assert process.stdin and process.stdout
    assert process.stdout.readline() == b"NEED\n", "a bundle that fails the check was run"
    process.stdin.write(node_bundle().framed())
    process.stdin.flush()
    assert process.stdout.readline() == b"OK\n"
    assert _hello(process).pid == process.pid
    assert _finish(process) == 0


def _plant(bundle: Path, marker: Path) -> None:
    """Replace the node's entry point with code that leaves ``marker`` if it ever runs."""
    (bundle / "ceranubis_jupyter" / "node" / "supervisor.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef main():\n    pass\n"
    )


def _loosen(bundle: Path, marker: Path) -> None:
    bundle.chmod(0o755)


def _add_file(bundle: Path, marker: Path) -> None:
    (bundle / "ceranubis_jupyter" / "node" / "extra.py").write_text("x = 1\n")


@pytest.mark.parametrize("tamper", [_plant, _add_file, _loosen])
def test_a_tampered_bundle_in_the_cache_is_never_run_but_unpacked_afresh(
    cache: Path, boot: Boot, tmp_path: Path, tamper: Callable[[Path, Path], None]
) -> None:
    _cold_install(boot)
    bundle, marker = cache / "ceranubis" / node_bundle().digest, tmp_path / "planted-code-ran"
    tamper(bundle, marker)
    _boot_expecting_need(boot)
    assert not marker.exists()
    assert tree_digest(_files_under(bundle)) == node_bundle().digest
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
    assert sorted(os.listdir(cache / "ceranubis")) == [node_bundle().digest]  # nothing left


def _files_under(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_cache_is_private_and_a_loose_one_is_tightened(cache: Path, boot: Boot) -> None:
    cache.mkdir()
    (cache / "ceranubis").mkdir(mode=0o755)
    (cache / "ceranubis").chmod(0o755)
    _cold_install(boot)
    bundle = cache / "ceranubis" / node_bundle().digest
    assert stat.S_IMODE((cache / "ceranubis").stat().st_mode) == 0o700
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
    unpacked = [p for p in bundle.rglob("*") if "__pycache__" not in p.parts]
    loose = [p for p in unpacked if p.stat().st_mode & 0o077]
    assert unpacked and loose == [], f"readable or writable by others: {loose}"


@pytest.mark.parametrize("what", ["bundle", "bundle cache"])
def test_a_cache_of_another_user_is_refused(
    cache: Path, boot: Boot, tmp_path: Path, what: str
) -> None:
    _cold_install(boot)
    bundle, marker = cache / "ceranubis" / node_bundle().digest, tmp_path / "planted-code-ran"
    _plant(bundle, marker)
    target = bundle if what == "bundle" else cache / "ceranubis"
    os.chown(target, OTHER_UID, OTHER_UID)
    process = boot()
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert line.startswith(f"E the node {what} {target} belongs to uid {OTHER_UID}, not to "), line
    assert "remove it" in line
    assert _finish(process) != 0
    assert not marker.exists()


def test_an_installing_boot_removes_stale_unpacks_and_old_bundles(cache: Path, boot: Boot) -> None:
    base = cache / "ceranubis"
    base.mkdir(parents=True, mode=0o700)
    now = time.time()
    stale, fresh = base / ".tmp-stale", base / ".tmp-fresh"
    for leftover in (stale, fresh):
        (leftover / "dill").mkdir(parents=True)
        (leftover / "dill" / "half.py").write_text("")
    os.utime(stale, (now - BOOT_TIMEOUT - 60, now - BOOT_TIMEOUT - 60))
    hours = [1, 2, 3, 4, 3 * 24, 4 * 24]  # last used this long ago
    old = [base / (f"{index:x}" * 64)[:64] for index in range(len(hours))]
    for folder, age in zip(old, hours, strict=True):
        folder.mkdir(mode=0o700)
        os.utime(folder, (now - age * 3600, now - age * 3600))
    _cold_install(boot)
    assert KEEP_BUNDLES == 3 and PRUNE_UNUSED_SECONDS == 24 * 3600  # what the ages assume
    # The newest three stay, and the fourth (used within a day); an unpack may be under way.
    assert sorted(os.listdir(base)) == sorted(
        [".tmp-fresh", node_bundle().digest, *(folder.name for folder in old[:4])]
    )


class BundleOnlyTransport(Transport):
    """A node started from the unpacked bundle under ``python -I -S``: nothing else importable."""

    group = "bundle-only"

    def __init__(self, bundle_dir: Path) -> None:
        self.host = "bundle-only"
        self.workers = 2
        self.bundle_dir = bundle_dir

    async def start(self) -> Channel:
        boot = (
            f"import sys; sys.path[:0] = [{str(self.bundle_dir)!r}]; "
            "from ceranubis_jupyter.node.supervisor import main; main()"
        )
        argv = [sys.executable, "-I", "-S", "-c", boot, NODE_MARKER, client_identity()]
        return await start_process_channel(self.host, argv)


# Defined as in a notebook (``__main__``), so that it travels by value.
_NOTEBOOK: dict[str, object] = {"__name__": "__main__"}
exec(
    "def where_am_i(x):\n"
    "    import ceranubis_jupyter, dill\n"
    "    return x * x, ceranubis_jupyter.__file__, dill.__file__\n",
    _NOTEBOOK,
)


def test_a_node_runs_tasks_from_the_bundle_alone(tmp_path: Path) -> None:
    zipfile.ZipFile(io.BytesIO(node_bundle().data)).extractall(tmp_path)
    with NodeExecutor(max_workers=1) as executor:
        executor.scheduler.add_hosts_threadsafe([BundleOnlyTransport(tmp_path)])
        only_there = executor.options(group=BundleOnlyTransport.group)
        results = list(only_there.map(_NOTEBOOK["where_am_i"], range(20)))  # type: ignore[arg-type]
    assert [r[0] for r in results] == [x * x for x in range(20)]
    assert all(r[1].startswith(str(tmp_path)) and r[2].startswith(str(tmp_path)) for r in results)
