"""The bytecode shipped with the node bundle: a cold host imports it instead of compiling.

BOOT runs under a real shell and interpreter over pipes (as sshd runs it), then once over
the real sshd. The assertions are on state: Python rewrites a pyc it rejects (the bundle
directory is ours and writable), so shipped pycs still byte-equal after the node imported
its modules, with no other file beside them, were the ones used.
"""

from __future__ import annotations

import importlib.util
import io
import marshal
import os
import py_compile
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.bootstrap import (
    Bundle,
    build_bundle,
    built_once,
    node_bundle,
    remote_command,
)
from ceranubis_jupyter.cluster.bytecode import PYC_HEADER, bytecode
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.wire import protocol as p
from tests.fixtures_ssh import OPENSSH_ALIAS, TEST_PYTHON, OpenSSHServer, SSHHome, reset_cache
from tests.remote import by_value

# Seconds a BOOT run or a result may take in these tests.
TIMEOUT = 30
# A cache tag no Python has: bytecode "for another interpreter".
OTHER_TAG = "otherpython-99"
TAG = sys.implementation.cache_tag
# Threads that ask for a bundle at once (as hosts that start together do).
THREADS = 8


def _shipped(framed: bytes) -> dict[str, bytes]:
    """Archive name → bytes of the zip inside ``Bundle.framed()`` (after length and sha256)."""
    archive = zipfile.ZipFile(io.BytesIO(framed[8 + 32 :]))
    return {name: archive.read(name) for name in archive.namelist()}


def _pycache(root: Path) -> dict[str, bytes]:
    """Relative name → bytes of every file in a ``__pycache__`` under ``root``."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" in path.parts
    }


def _boot_cold(cache: Path, framed: bytes) -> None:
    """One BOOT under ``sh -c`` on an empty cache: it must say NEED, take ``framed``, start
    the node (its Hello) and exit 0 once its input closes."""
    env = {"PATH": os.environ["PATH"], "HOME": str(cache.parent), "XDG_CACHE_HOME": str(cache)}
    command = remote_command(sys.executable, node_bundle().digest)
    process = subprocess.Popen(
        ["/bin/sh", "-c", command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        bufsize=0,
    )
    assert process.stdin and process.stdout and process.stderr
    try:
        assert process.stdout.readline() == b"NEED\n"
        process.stdin.write(framed)
        assert process.stdout.readline() == b"OK\n"
        conn = p.Connection(p.CLIENT)
        for _ in range(100):  # bounded: a Hello is a few reads at most
            conn.receive_data(os.read(process.stdout.fileno(), 65536))
            if (message := conn.next_event()) is not None:
                break
        assert isinstance(message, p.Hello) and message.pid == process.pid
        process.stdin.close()
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=TIMEOUT)
        for pipe in (process.stdin, process.stdout, process.stderr):
            pipe.close()


def test_bytecode_is_an_unchecked_hash_pyc_per_module_for_its_tag() -> None:
    sources = {"a/x.py": b"x = 40 + 2\n", "top.py": b"y = 1\n", "a/bad.py": b"def (:\n"}
    pycs = bytecode({**sources, "a/data.txt": b"not python"}, "sometag-1")
    assert sorted(pycs) == ["__pycache__/top.sometag-1.pyc", "a/__pycache__/x.sometag-1.pyc"]
    pyc = pycs["a/__pycache__/x.sometag-1.pyc"]
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, source not checked
    assert pyc[8:PYC_HEADER] == importlib.util.source_hash(sources["a/x.py"])
    namespace: dict[str, object] = {}
    exec(marshal.loads(pyc[PYC_HEADER:]), namespace)
    assert namespace["x"] == 42
    assert bytecode(sources, None) == {}  # an interpreter that caches no bytecode


def _code_file(pyc: bytes) -> str:
    """The file name a pyc's code was compiled under (installed: its path; else: the name)."""
    code = marshal.loads(pyc[PYC_HEADER:])
    return str(code.co_filename)


def test_installed_bytecode_is_reused_only_where_python_would_use_it(tmp_path: Path) -> None:
    paths = {name: tmp_path / name for name in ("fresh.py", "hashed.py", "stale.py", "gone.py")}
    for path in paths.values():
        path.write_text("value = 1\n")
        mode = py_compile.PycInvalidationMode.TIMESTAMP
        if path.name == "hashed.py":
            mode = py_compile.PycInvalidationMode.CHECKED_HASH
        py_compile.compile(str(path), doraise=True, invalidation_mode=mode)
    paths["stale.py"].write_text("value = 2222\n")  # changed since: another size
    Path(importlib.util.cache_from_source(str(paths["gone.py"]))).unlink()
    sources = {name: path.read_bytes() for name, path in paths.items()}
    origins = {name: str(path) for name, path in paths.items()}
    pycs = bytecode(sources, TAG, origins)
    reused = {n for n in paths if _code_file(pycs[f"__pycache__/{n[:-3]}.{TAG}.pyc"]) != n}
    assert reused == {"fresh.py", "hashed.py"}
    assert _code_file(pycs[f"__pycache__/fresh.{TAG}.pyc"]) == origins["fresh.py"]
    namespace: dict[str, object] = {}
    exec(marshal.loads(pycs[f"__pycache__/stale.{TAG}.pyc"][PYC_HEADER:]), namespace)
    assert namespace["value"] == 2222
    other = bytecode(sources, OTHER_TAG, origins)  # another interpreter: compiled here
    assert {_code_file(pyc) for pyc in other.values()} == set(paths)


# Run in a fresh interpreter: which modules the bundle's bytecode was built for so far (each
# is compiled, which raises a ``compile`` audit event, or read from its installed pyc, an
# ``open`` one), once the digest is known and once the bundle was shipped.
_DIGEST_PROBE = """
import importlib.util, io, sys, zipfile
seen = []
sys.addaudithook(lambda event, args: event in ("compile", "open") and seen.append(
    args[1] if event == "compile" else args[0]))
from ceranubis_jupyter.cluster.bootstrap import node_bundle, tree_digest
imported = len(seen)  # the client's own imports read the installed pycs of some modules
def built(bundle):
    pycs = {importlib.util.cache_from_source(p, optimization=""): n
            for n, p in bundle.origins.items()}
    return {name for name in seen[imported:] if name in bundle.files} | {
        pycs[path] for path in seen[imported:] if isinstance(path, str) and path in pycs}
bundle = node_bundle()
print(bundle.digest == tree_digest(bundle.files), len(built(bundle)))
shipped = zipfile.ZipFile(io.BytesIO(bundle.framed()[40:]))
sources = {n: shipped.read(n) for n in shipped.namelist() if "__pycache__" not in n}
print(tree_digest(sources) == bundle.digest, built(bundle) == set(bundle.files))
"""


def test_the_digest_names_the_sources_alone_and_builds_no_bytecode() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run(
        [sys.executable, "-c", _DIGEST_PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    # The digest: no bytecode built; once shipped, every module's, the name unchanged.
    assert out.stdout.split() == ["True", "0", "True", "True"]


def test_hosts_that_start_at_once_share_one_bundle_and_its_bytecode() -> None:
    calls: list[int] = []

    @built_once
    def bundle() -> Bundle:
        calls.append(1)
        return build_bundle({f"m{i}.py": b"x = 1\n" * 20_000 for i in range(4)})

    start = threading.Barrier(THREADS)
    got: list[Bundle] = []

    def ask() -> None:
        start.wait(timeout=TIMEOUT)
        got.append(bundle())

    threads = [threading.Thread(target=ask) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert len(got) == THREADS and all(b is got[0] for b in got) and calls == [1]


def test_a_cold_boot_imports_the_shipped_bytecode_and_writes_none(tmp_path: Path) -> None:
    framed = node_bundle().framed()
    pycs = {name: data for name, data in _shipped(framed).items() if "__pycache__" in name}
    assert len(pycs) == len(node_bundle().files) and all(f".{TAG}.pyc" in n for n in pycs)
    cache = tmp_path / "cache"
    _boot_cold(cache, framed)
    # The node and its workers imported from these: a rejected one would have been rewritten.
    assert _pycache(cache / "ceranubis" / node_bundle().digest) == pycs


def test_bytecode_for_another_interpreter_is_ignored_and_the_node_compiles(
    tmp_path: Path,
) -> None:
    other = build_bundle(node_bundle().files, cache_tag=OTHER_TAG)
    assert other.digest == node_bundle().digest  # the bytecode is not part of the name
    framed = other.framed()
    shipped = {name: data for name, data in _shipped(framed).items() if "__pycache__" in name}
    cache = tmp_path / "cache"
    _boot_cold(cache, framed)
    found = _pycache(cache / "ceranubis" / other.digest)
    assert {name: found.get(name) for name in shipped} == shipped  # left as they came
    own = found["ceranubis_jupyter/node/__pycache__/supervisor." + TAG + ".pyc"]
    assert int.from_bytes(own[4:8], "little") == 0  # compiled there: a timestamp pyc


@by_value
def _where_code_lives() -> tuple[str, str]:
    from ceranubis_jupyter.node import worker

    return worker.__file__ or "", worker.run.__code__.co_filename


def test_a_cold_ssh_host_runs_the_shipped_bytecode_under_its_own_file_names(
    ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    reset_cache(openssh_server.cache)
    try:
        with CeranubisExecutor([Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=1)]) as ex:
            module_file, code_file = ex.submit(_where_code_lives).result(timeout=TIMEOUT)
        bundle = openssh_server.cache / "ceranubis" / node_bundle().digest
        # Tracebacks name the host's files, not the names the client compiled under.
        assert module_file == code_file == str(bundle / "ceranubis_jupyter/node/worker.py")
        shipped = _shipped(node_bundle().framed())
        assert _pycache(bundle) == {n: d for n, d in shipped.items() if "__pycache__" in n}
    finally:
        reset_cache(openssh_server.cache)
