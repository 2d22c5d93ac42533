"""SSH workloads: ours over a real loopback sshd, against bare asyncssh on the same server.

The bench starts its own OpenSSH ``sshd`` on 127.0.0.1 (the test fixtures' helpers), in a
temporary ``HOME`` whose ``~/.ssh/config`` names it and whose ``known_hosts`` holds its key:
host-key checking stays on. Then, one after the other:

- W3: our round trip vs a bare asyncssh echo to a remote Python (one message in flight);
- W4: our 100 MB round trip vs the raw asyncssh channel with the same cipher;
- W5: start to first result with an empty remote bundle cache (cold) and a filled one (warm);
- W1 (per item and chunksize=1000), W2, W3 and W4 against execnet over ssh with a minimal
  dill executor (``execnet_peer.py``), the SSH peer of benchmarks/README.md (left out, with a
  line saying so, where execnet is not installed: it comes with the dev extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import workloads as w
from report import EXECNET_SSH, OURS_SSH
from report import RAW_SSH as RAW

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.ssh import PREFERRED_CIPHER

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.fixtures_ssh import (  # noqa: E402 - the repo root must be importable first
    OpenSSHServer,
    SSHHome,
    keygen,
    make_openssh_server,
    reset_cache,
)

ALIAS = "cj-bench"
# Remote echo for W3: one line in, the same line out, flushed.
_ECHO = (
    "import sys\n"
    "for line in sys.stdin.buffer:\n"
    "    sys.stdout.buffer.write(line)\n"
    "    sys.stdout.buffer.flush()\n"
)
# Remote sink for W4: a length-prefixed blob in, its length out as one line.
_SINK = (
    "import sys, struct\n"
    "r = sys.stdin.buffer\n"
    "while head := r.read(8):\n"
    "    left = struct.unpack('!Q', head)[0]\n"
    "    n = 0\n"
    "    while left:\n"
    "        got = r.read1(min(left, 1 << 20))\n"
    "        n += len(got); left -= len(got)\n"
    "    sys.stdout.buffer.write(b'%d\\n' % n); sys.stdout.buffer.flush()\n"
)


@dataclass
class Loopback:
    """The running sshd and the client HOME that reaches it as ``ALIAS``."""

    home: SSHHome
    server: OpenSSHServer

    def host(self) -> Host:
        return Host(ALIAS, python=sys.executable, workers=2)


@contextlib.contextmanager
def loopback() -> Iterator[Loopback]:
    """Start sshd on loopback with a temporary HOME pointing at it; stop it (by PID) after."""
    root = Path(tempfile.mkdtemp(prefix="cj-bench-ssh-"))
    saved = {name: os.environ.get(name) for name in ("HOME", "SSH_AUTH_SOCK")}
    server = None
    try:
        home = SSHHome(root / "home")
        home.ssh.mkdir(mode=0o700, parents=True)
        keygen(home.key)
        (home.ssh / "config").write_text("")
        home.known_hosts.write_text("")
        server = make_openssh_server(root / "sshd", home)
        home.add_alias(ALIAS, "127.0.0.1", server.port)
        home.trust("127.0.0.1", server.port, server.host_key.with_suffix(".pub"))
        os.environ["HOME"] = str(home.path)
        os.environ.pop("SSH_AUTH_SOCK", None)
        yield Loopback(home, server)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def ours(setup: Loopback) -> Executor:
    """Our executor on the loopback host, two workers."""
    executor: Executor = CeranubisExecutor([setup.host()])
    return executor


def cold_start(setup: Loopback, inc: w.IntFn) -> float:
    """W5 with an empty remote bundle cache."""
    reset_cache(setup.server.cache)
    return w.w5_startup(lambda: ours(setup), inc)


# ---------------------------------------------------------------------- bare asyncssh


async def _connect() -> Any:
    return await asyncssh.connect(ALIAS, encryption_algs=[PREFERRED_CIPHER])


async def _echo(calls: int, warmup: int) -> list[float]:
    async with await _connect() as conn:
        process = await conn.create_process(_remote(_ECHO), encoding=None)
        samples = []
        for index in range(warmup + calls):
            start = time.perf_counter()
            process.stdin.write(b"ping\n")
            await process.stdout.readline()
            if index >= warmup:
                samples.append((time.perf_counter() - start) * 1e6)
        process.stdin.write_eof()
        return samples


async def _throughput(payload: bytes, repeats: int) -> list[float]:
    async with await _connect() as conn:
        process = await conn.create_process(_remote(_SINK), encoding=None)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            process.stdin.write(struct.pack("!Q", len(payload)))
            process.stdin.write(payload)
            count = int(await process.stdout.readline())
            rates.append(count / 1e6 / (time.perf_counter() - start))
        process.stdin.write_eof()
        return rates


def _remote(source: str) -> str:
    return f"{sys.executable} -c {_shell_quote(source)}"


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def raw_echo() -> tuple[float, float]:
    """Bare asyncssh echo round trip: (median, p99) µs."""
    samples = asyncio.run(_echo(w.W3_CALLS, w.W3_WARMUP))
    return statistics.median(samples), w.percentile(samples, 99)


def raw_throughput(repeats: int) -> list[float]:
    """Raw asyncssh channel, 100 MB round trips (send, length back): MB/s each."""
    return asyncio.run(_throughput(bytes(w.W4_BYTES), repeats))


Record = Callable[[str, str, float], None]


def run_ssh(record: Record, inc: w.IntFn, repeats: int, progress: Callable[[str], None]) -> None:
    """Every SSH workload, ``repeats`` times, ours and bare asyncssh interleaved."""
    with loopback() as setup:
        progress("SSH W5 start-up (cold, warm)")
        for _ in range(repeats):
            record(OURS_SSH, "w5_cold", cold_start(setup, inc))
            record(OURS_SSH, "w5_warm", w.w5_startup(lambda: ours(setup), inc))
        executor = ours(setup)
        try:
            executor.submit(inc, 1).result()
            _latency(record, executor, inc, repeats, progress)
            _bandwidth(record, executor, repeats, progress)
            _versus_execnet(record, setup, executor, inc, repeats, progress)
        finally:
            executor.shutdown(wait=True)


def _versus_execnet(
    record: Record,
    setup: Loopback,
    ours_executor: Executor,
    inc: w.IntFn,
    repeats: int,
    progress: Callable[[str], None],
) -> None:
    if importlib.util.find_spec("execnet") is None:
        progress("SSH W1-W4 vs execnet skipped: execnet is not installed (pip install execnet)")
        return
    from execnet_peer import ExecnetExecutor

    progress("SSH W1-W4 vs execnet over ssh")
    config = str(setup.home.ssh / "config")
    peer = ExecnetExecutor(ALIAS, config, sys.executable, PREFERRED_CIPHER, workers=2)
    try:
        peer.submit(inc, 1).result()
        payload = w.w4_payloads()["bytes"]
        for _ in range(repeats):
            for system, executor in ((OURS_SSH, ours_executor), (EXECNET_SSH, peer)):
                record(system, "w1", w.w1_map(executor, inc))
                record(system, "w1_batched", w.w1_map(executor, inc, chunksize=1000))
                record(system, "w2", w.w2_submit(executor, inc))
                if system == EXECNET_SSH:  # ours was measured above, beside asyncssh
                    median, p99 = w.w3_latency(executor, inc)
                    record(system, "w3_median", median)
                    record(system, "w3_p99", p99)
                    record(system, "w4_bytes", w.w4_throughput(executor, payload))
    finally:
        peer.shutdown()


def _latency(
    record: Record, executor: Executor, inc: w.IntFn, repeats: int, progress: Callable[[str], None]
) -> None:
    progress("SSH W3 latency vs asyncssh echo")
    for _ in range(repeats):
        median, p99 = w.w3_latency(executor, inc)
        record(OURS_SSH, "w3_median", median)
        record(OURS_SSH, "w3_p99", p99)
        median, p99 = raw_echo()
        record(RAW, "w3_median", median)
        record(RAW, "w3_p99", p99)


def _bandwidth(
    record: Record, executor: Executor, repeats: int, progress: Callable[[str], None]
) -> None:
    progress("SSH W4 throughput vs raw asyncssh channel")
    payloads = w.w4_payloads()
    for rate in raw_throughput(repeats):
        record(RAW, "w4_bytes", rate)
    for kind, payload in payloads.items():
        for _ in range(repeats):
            record(OURS_SSH, f"w4_{kind}", w.w4_throughput(executor, payload))
