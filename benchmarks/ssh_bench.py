"""SSH workloads: ours over a real loopback sshd, against bare asyncssh on the same server.

The bench starts its own OpenSSH ``sshd`` on 127.0.0.1 (``sshd.py``), in a
temporary ``HOME`` whose ``~/.ssh/config`` names it and whose ``known_hosts`` holds its key:
host-key checking stays on. Then, one after the other:

- W3: our round trip vs a bare asyncssh echo to a remote Python (one message in flight);
- W4: our 100 MB round trip vs the raw asyncssh channel with the same cipher;
- W5: start to first result with an empty remote bundle cache (cold) and a filled one (warm);
- W1 (per item and chunksize=1000), W2, W3 and W4 against execnet over ssh with a minimal
  dill executor (``execnet_peer.py``), the SSH peer of benchmarks/README.md (left out, with a
  line saying so, where execnet is not installed: it comes with the dev extra).

Every SSH row is measured for ours twice: through asyncssh (the default) and through the
``ssh`` binary (``CERANUBIS_SSH_CLIENT=openssh``, the ``ceranubis-openssh`` column).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import asyncssh
import sshd
import workloads as w
from report import EXECNET_SSH, OURS_OPENSSH, OURS_SSH
from report import RAW_SSH as RAW

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.ssh import PREFERRED_CIPHER

ALIAS = "cj-bench-0"
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


class Loopback:
    """The running sshd (one) and the client HOME that reaches it as ``ALIAS``."""

    def __init__(self, hosts: sshd.Loopback) -> None:
        self.hosts = hosts

    def host(self) -> Host:
        return Host(ALIAS, python=sys.executable, workers=2)


@contextlib.contextmanager
def loopback() -> Iterator[Loopback]:
    """Start sshd on loopback with a temporary HOME pointing at it; stop it (by PID) after."""
    with sshd.loopback_hosts(1) as hosts:
        yield Loopback(hosts)


def ours(setup: Loopback) -> Executor:
    """Our executor on the loopback host, two workers."""
    executor: Executor = CeranubisExecutor([setup.host()])
    return executor


def ours_openssh(setup: Loopback) -> Executor:
    """Ours again, its node started through the ssh binary (``cluster/openssh.py``)."""
    from ceranubis_jupyter.cluster.openssh import SSH_CLIENT_ENV  # (ab.py imports this module
    # with an older tree's package too)

    os.environ[SSH_CLIENT_ENV] = "openssh"
    try:
        return ours(setup)
    finally:
        del os.environ[SSH_CLIENT_ENV]


def cold_start(setup: Loopback, inc: w.IntFn) -> float:
    """W5 with an empty remote bundle cache."""
    setup.hosts.reset_cache(0)
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


async def _throughput(payload: bytes, repeats: int) -> tuple[list[float], str]:
    async with await _connect() as conn:
        cipher = str(conn.get_extra_info("send_cipher"))
        process = await conn.create_process(_remote(_SINK), encoding=None)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            process.stdin.write(struct.pack("!Q", len(payload)))
            process.stdin.write(payload)
            count = int(await process.stdout.readline())
            rates.append(count / 1e6 / (time.perf_counter() - start))
        process.stdin.write_eof()
        return rates, cipher


def _remote(source: str) -> str:
    return f"{sys.executable} -c {_shell_quote(source)}"


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def raw_echo() -> tuple[float, float]:
    """Bare asyncssh echo round trip: (median, p99) µs."""
    samples = asyncio.run(_echo(w.W3_CALLS, w.W3_WARMUP))
    return statistics.median(samples), w.percentile(samples, 99)


def raw_throughput(repeats: int) -> tuple[list[float], str]:
    """Raw asyncssh channel, 100 MB round trips (send, length back): MB/s each, and the
    cipher negotiated."""
    return asyncio.run(_throughput(bytes(w.W4_BYTES), repeats))


Record = Callable[[str, str, float], None]


class CipherSeen(logging.Handler):
    """Catches the cipher our SSH transport logs once connected (``ssh.py``, debug)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.ciphers: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if "connected (cipher" in record.msg:
            self.ciphers.add(str(record.args[-1] if record.args else "?"))


def run_ssh(
    record: Record, inc: w.IntFn, repeats: int, progress: Callable[[str], None]
) -> list[str]:
    """Every SSH workload, ``repeats`` times, ours and bare asyncssh interleaved; returns
    notes (the ciphers each side negotiated)."""
    seen = CipherSeen()
    logger = logging.getLogger("ceranubis")
    logger.addHandler(seen)
    logger.setLevel(logging.DEBUG)
    try:
        raw_cipher = _run_ssh(record, inc, repeats, progress)
    finally:
        logger.removeHandler(seen)
    ours_cipher = ", ".join(sorted(seen.ciphers)) or "?"
    return [f"SSH cipher: ours {ours_cipher}; raw asyncssh channel {raw_cipher}"]


def _run_ssh(record: Record, inc: w.IntFn, repeats: int, progress: Callable[[str], None]) -> str:
    with loopback() as setup:
        progress("SSH W5 start-up (cold, warm)")
        for _ in range(repeats):
            record(OURS_SSH, "w5_cold", cold_start(setup, inc))
            record(OURS_SSH, "w5_warm", w.w5_startup(lambda: ours(setup), inc))
        executor, openssh = ours(setup), ours_openssh(setup)
        try:
            executor.submit(inc, 1).result()
            openssh.submit(inc, 1).result()
            _latency(record, executor, openssh, inc, repeats, progress)
            cipher = _bandwidth(record, executor, openssh, repeats, progress)
            _versus_execnet(record, setup, executor, openssh, inc, repeats, progress)
        finally:
            executor.shutdown(wait=True)
            openssh.shutdown(wait=True)
        return cipher


def _versus_execnet(
    record: Record,
    setup: Loopback,
    ours_executor: Executor,
    openssh: Executor,
    inc: w.IntFn,
    repeats: int,
    progress: Callable[[str], None],
) -> None:
    if importlib.util.find_spec("execnet") is None:
        progress("SSH W1-W4 vs execnet skipped: execnet is not installed (pip install execnet)")
        return
    from execnet_peer import ExecnetExecutor

    progress("SSH W1-W4 vs execnet over ssh")
    config = str(setup.hosts.ssh_config)
    peer = ExecnetExecutor(ALIAS, config, sys.executable, PREFERRED_CIPHER, workers=2)
    try:
        peer.submit(inc, 1).result()
        payload = w.w4_payloads()["bytes"]
        for _ in range(repeats):
            systems = ((OURS_SSH, ours_executor), (EXECNET_SSH, peer), (OURS_OPENSSH, openssh))
            for system, executor in systems:
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
    record: Record,
    executor: Executor,
    openssh: Executor,
    inc: w.IntFn,
    repeats: int,
    progress: Callable[[str], None],
) -> None:
    progress("SSH W3 latency vs asyncssh echo")
    for _ in range(repeats):
        for system, ours_executor in ((OURS_SSH, executor), (OURS_OPENSSH, openssh)):
            median, p99 = w.w3_latency(ours_executor, inc)
            record(system, "w3_median", median)
            record(system, "w3_p99", p99)
        median, p99 = raw_echo()
        record(RAW, "w3_median", median)
        record(RAW, "w3_p99", p99)


def _bandwidth(
    record: Record,
    executor: Executor,
    openssh: Executor,
    repeats: int,
    progress: Callable[[str], None],
) -> str:
    """W4 ours and raw, interleaved (one raw round trip per connection: its first transfer
    is counted, as ours after the executor's warm-up); returns the raw side's cipher."""
    progress("SSH W4 throughput vs raw asyncssh channel")
    payloads = w.w4_payloads()
    cipher = "?"
    for _ in range(repeats):
        rates, cipher = raw_throughput(1)
        record(RAW, "w4_bytes", rates[0])
        for kind, payload in payloads.items():
            record(OURS_SSH, f"w4_{kind}", w.w4_throughput(executor, payload))
            record(OURS_OPENSSH, f"w4_{kind}", w.w4_throughput(openssh, payload))
    return cipher
