"""Q2 alone, A/B, traced: commit of one task with idle daemons -> the task starts.

``python benchmarks/bench_q2.py [--base DIR] [--blocks N] [--samples N]``: one throwaway
PostgreSQL server; pgqueuer (2 consumers, as in ``bench_queue.py``), this checkout's queue
(2 daemons x 1 worker) and, with ``--base``, another tree's (``git archive main | tar -x
-C DIR``), each in its own database, sampled in alternating blocks (A B pgqueuer, then
the reverse...) so drift on a shared machine hits them alike. Our daemons run traced
(``q2_child.py``): the report gives, per tree, the median of each stage in ms after the
commit began (the commit returned, the NOTIFY heard, the claim done, the task handed over
to the local node (written to its pipe), the task started); pgqueuer's line adds when its
enqueue returned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pg_server
import queue_peers as qp
from bench_queue import Consumers

HERE = Path(__file__).resolve().parent
# Blocks of samples per system; each block takes SAMPLES of each.
BLOCKS = 3
SAMPLES = 20
# Seconds between pgqueuer samples (as bench_queue's Q2_IDLE and q2_child's IDLE).
IDLE = 0.1
# Seconds a daemon or child may take to start.
START_TIMEOUT = 180.0
# Daemons per tree (1 worker each), as bench_queue's Q2.
DAEMONS = 2
# pgqueuer's enqueue times (ms from the call to its return), as the stage "committed".
ENQUEUED: list[float] = []


class Tree:
    """One tree's queue: its database, 2 traced daemons, a committing child."""

    def __init__(self, label: str, root: Path, url: str, trace_dir: Path) -> None:
        self.label, self.url = label, url
        self.trace = trace_dir / f"{label}.trace"
        self.env = {**os.environ, "PYTHONPATH": str(root)}
        child = str(HERE / "q2_child.py")
        subprocess.run([sys.executable, "-m", "ceranubis_jupyter.cli", "node", "--store", url,
                        "--init"], env=self.env, check=True, capture_output=True)  # fmt: skip
        self.daemons = [
            subprocess.Popen([sys.executable, child, "node", url, f"{label}-{i}", str(self.trace)],
                             env=self.env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(DAEMONS)
        ]  # fmt: skip
        self.committer = subprocess.Popen(
            [sys.executable, child, "commit", url], env=self.env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self.samples: list[list[float]] = []

    def wait_running(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        with psycopg.connect(self.url, autocommit=True) as connection:
            while time.monotonic() < deadline:
                row = connection.execute("SELECT count(*) FROM nodes WHERE state = 'running'")
                if row.fetchone()[0] == DAEMONS:
                    return
                time.sleep(0.1)
        raise RuntimeError(f"{self.label}: daemons not running")

    def run(self, count: int, keep: bool = True) -> None:
        assert self.committer.stdin and self.committer.stdout
        self.committer.stdin.write(f"{count}\n")
        self.committer.stdin.flush()
        found = json.loads(self.committer.stdout.readline())
        if keep:
            self.samples += found

    def stop(self) -> None:
        if self.committer.stdin:
            self.committer.stdin.close()
        self.committer.wait(START_TIMEOUT)
        for daemon in self.daemons:
            daemon.terminate()
        for daemon in self.daemons:
            daemon.wait(START_TIMEOUT)

    def stages(self) -> dict[str, float]:
        """Median ms after the commit began of each traced stage."""
        events: defaultdict[int, dict[str, float]] = defaultdict(dict)
        for line in self.trace.read_text().splitlines():
            stage, what, begun, ended = json.loads(line)
            _note(events, stage, what, begun, ended)
        per: defaultdict[str, list[float]] = defaultdict(list)
        for project, sent, committed, started in self.samples:
            seen = events.get(int(project), {})
            marks = {"committed": committed, **seen, "started": started}
            for stage, when in marks.items():
                per[stage].append((when - sent) * 1000)
        return {stage: statistics.median(values) for stage, values in per.items()}


def _note(events: Any, stage: str, what: Any, begun: float, ended: float) -> None:
    def first(project: int, key: str, when: float) -> None:
        events[project].setdefault(key, when)

    if stage == "heard" and str(what).startswith("commit:"):
        first(int(str(what).split(":")[1].split()[0]), "heard", begun)
    elif stage in ("claim", "woken") and what[1]:
        first(int(what[0]), "claim begun", begun)
        first(int(what[0]), "claim done", ended)
    elif stage == "run":
        first(int(what), "handed over", ended)
    elif stage == "look":
        for project in what:
            first(int(project), "look done", ended)


async def pgqueuer_block(url: str, consumers: Consumers, producer: Any, count: int) -> list[float]:
    found = []
    for _ in range(count):
        await asyncio.sleep(IDLE)
        sent = time.time()
        await producer.enqueue([qp.Q2_MARK])
        ENQUEUED.append((time.time() - sent) * 1000)
        _, stamp = (await consumers.line()).split()
        found.append((float(stamp) - sent) * 1000)
    return found


async def run(args: argparse.Namespace, server: pg_server.Server, trace_dir: Path) -> None:
    roots = {"new": HERE.parent} | ({"base": Path(args.base)} if args.base else {})
    trees = [Tree(label, root, pg_server.create_database(server.url, label), trace_dir)
             for label, root in roots.items()]  # fmt: skip
    url = pg_server.create_database(server.url, "pgqueuer")
    await qp.SETUP["pgqueuer"](url)
    consumers = await Consumers.start("pgqueuer", url, 2)
    producer = qp.PRODUCERS["pgqueuer"](url)
    await producer.open()
    pgq: list[float] = []
    try:
        for tree in trees:
            tree.wait_running()
            tree.run(3, keep=False)  # warm: the function loaded on the daemons
        await pgqueuer_block(url, consumers, producer, 3)
        for block in range(args.blocks):
            order: list[Any] = [*trees, None]
            for tree in order if block % 2 == 0 else reversed(order):
                if tree is None:
                    pgq += await pgqueuer_block(url, consumers, producer, args.samples)
                else:
                    tree.run(args.samples)
        report(trees, pgq)
    finally:
        await producer.close()
        await consumers.stop()
        for tree in trees:
            tree.stop()


def report(trees: list[Tree], pgq: list[float]) -> None:
    print(f"pgqueuer: median {statistics.median(pgq):.2f} ms (n={len(pgq)}), "
          f"enqueued {statistics.median(ENQUEUED):.2f}")  # fmt: skip
    for tree in trees:
        total = [(s[3] - s[1]) * 1000 for s in tree.samples]
        med = statistics.median(total)
        print(f"{tree.label}: median {med:.2f} ms = {med / statistics.median(pgq):.2f}x "
              f"pgqueuer (n={len(total)})")  # fmt: skip
        stages = sorted(tree.stages().items(), key=lambda item: item[1])
        print("   " + ", ".join(f"{stage} {ms:.1f}" for stage, ms in stages))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="another tree to measure beside this one")
    parser.add_argument("--blocks", type=int, default=BLOCKS)
    parser.add_argument("--samples", type=int, default=SAMPLES)
    args = parser.parse_args()
    with pg_server.running_server() as server, tempfile.TemporaryDirectory() as trace_dir:
        asyncio.run(run(args, server, Path(trace_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
