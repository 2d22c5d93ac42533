"""Data sync: ``ex.sync()`` against ``rsync -a`` over ssh, to the same loopback sshd.

The directory is the acceptance test's: 1,000 small files and one 200 MB file. Both
systems run in alternating blocks within one run (cold, then no-op, each block flipping
which goes first), and the medians are compared:

- cold: the host holds nothing and every source file is new (its mtime touched, so our
  client hashes it again, as it would new data); ours is ``ex.sync`` on a running executor,
  rsync is a fresh ``rsync -a`` (its ssh connection included: that is how it is used);
- no-op: nothing changed since the last sync; ours is ``ex.sync()`` again (the client
  stats its files, the host compares names, sizes and hashes), rsync's a second run.

Both use the same cipher (``aes128-gcm@openssh.com``, ours by default). Run with
``.venv/bin/python benchmarks/bench_sync.py`` (``make bench`` runs it too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ssh_bench

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.ssh import PREFERRED_CIPHER

# Blocks of (cold, no-op) per system, as the other workloads take medians of 5: with 3, a
# cold sync of either system ranged 0.53-1.3 s from block to block on a quiet machine, and
# the median of 3 swung the ratio from 0.77 to 1.17 between runs of the same code.
REPEATS = 5
SMALL_FILES = 1000
BIG_FILE_MB = 200
# Seconds a sync may take before the bench gives up.
SYNC_TIMEOUT = 600.0
# What the issue asks: cold throughput at least this fraction of rsync's, a no-op within
# this multiple of rsync's time.
COLD_TARGET = 0.8
NOOP_TARGET = 1.5


def make_data(root: Path) -> int:
    """``root/data`` as in the acceptance test; returns its bytes."""
    small = root / "data" / "small"
    small.mkdir(parents=True)
    for i in range(SMALL_FILES):
        (small / f"{i:04d}.txt").write_text(f"file {i}\n")
    block = os.urandom(1 << 20)
    with open(root / "data" / "big.bin", "wb") as out:
        for _ in range(BIG_FILE_MB):
            out.write(block)
    return sum(p.stat().st_size for p in (root / "data").rglob("*") if p.is_file())


def touch_all(root: Path) -> None:
    now = time.time()
    for path in (root / "data").rglob("*"):
        os.utime(path, (now, now))


class Rsync:
    """``rsync -a data/ ALIAS:dest/`` with our loopback's ssh config and cipher."""

    def __init__(self, setup: ssh_bench.Loopback, dest: Path) -> None:
        config = setup.hosts.ssh_config
        self.ssh = f"ssh -F {config} -c {PREFERRED_CIPHER}"
        self.dest = dest

    def run(self, source: Path) -> float:
        start = time.perf_counter()
        subprocess.run(
            ["rsync", "-a", "-e", self.ssh, f"{source}/", f"{ssh_bench.ALIAS}:{self.dest}/"],
            check=True,
            timeout=SYNC_TIMEOUT,
        )
        return time.perf_counter() - start


def ours_sync(executor: CeranubisExecutor) -> float:
    start = time.perf_counter()
    executor.sync(timeout=SYNC_TIMEOUT)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, list[float]]:  # long: one setup, then the blocks
    samples: dict[str, list[float]] = {
        k: [] for k in ("ours_cold", "rsync_cold", "ours_noop", "rsync_noop")
    }
    root = Path(tempfile.mkdtemp(prefix="cj-bench-sync-"))
    saved_cwd = os.getcwd()
    try:
        total = make_data(root)
        os.chdir(root)
        with ssh_bench.loopback() as setup:
            rsync = Rsync(setup, root / "rsync-dest")
            ours_dir = setup.hosts.servers[0].cache / "ceranubis" / "files"
            with CeranubisExecutor([setup.host()], files=["data"]) as executor:
                ssh_bench_ready(executor)
                for block in range(repeats):
                    touch_all(root)
                    shutil.rmtree(ours_dir, ignore_errors=True)
                    shutil.rmtree(rsync.dest, ignore_errors=True)
                    cold = [
                        ("ours_cold", lambda: ours_sync(executor)),
                        ("rsync_cold", lambda: rsync.run(root / "data")),
                    ]
                    noop = [
                        ("ours_noop", lambda: ours_sync(executor)),
                        ("rsync_noop", lambda: rsync.run(root / "data")),
                    ]
                    for pairs in (cold, noop):
                        for key, run in pairs if block % 2 == 0 else reversed(pairs):
                            samples[key].append(run())
        samples["bytes"] = [float(total)]
        return samples
    finally:
        os.chdir(saved_cwd)
        shutil.rmtree(root, ignore_errors=True)


def ssh_bench_ready(executor: CeranubisExecutor) -> None:
    """Wait (bounded) until the node is up, so the first sync is not a start-up."""
    deadline = time.monotonic() + 60
    while not any(info.state == "ready" for info in executor.hosts()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the loopback host did not come up: {executor.hosts()}")
        time.sleep(0.05)


def report(samples: dict[str, list[float]]) -> str:
    total = samples["bytes"][0]
    med = {k: statistics.median(v) for k, v in samples.items() if k != "bytes"}
    mb = total / (1 << 20)
    ours_tp, rsync_tp = mb / med["ours_cold"], mb / med["rsync_cold"]
    cold_ratio = ours_tp / rsync_tp
    noop_ratio = med["ours_noop"] / med["rsync_noop"]
    lines = [
        f"data sync: {SMALL_FILES} small files + {BIG_FILE_MB} MB ({mb:.0f} MB), loopback sshd, "
        f"medians of {len(samples['ours_cold'])} alternating blocks",
        f"  cold   ours {med['ours_cold']:.2f} s ({ours_tp:.0f} MB/s)   rsync -a "
        f"{med['rsync_cold']:.2f} s ({rsync_tp:.0f} MB/s)   throughput ours/rsync "
        f"{cold_ratio:.2f} (target >= {COLD_TARGET})",
        f"  no-op  ours {med['ours_noop'] * 1000:.0f} ms   rsync -a "
        f"{med['rsync_noop'] * 1000:.0f} ms   time ours/rsync {noop_ratio:.2f} "
        f"(target <= {NOOP_TARGET})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    if shutil.which("rsync") is None:
        print("bench_sync: rsync is missing (make system-deps)")
        return 1
    print(report(measure(max(1, args.repeats))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
