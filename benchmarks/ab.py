"""A/B: this checkout against an earlier commit, in alternating blocks of one run.

``make bench-ab BASE=<rev>`` (or ``.venv/bin/python benchmarks/ab.py --base <rev>``). The
earlier commit is exported with ``git archive`` into a temporary folder; each block
measures both trees, each in a fresh process that imports its own package, in the order
A B, then B A, then A B...: drift on a shared machine hits both alike. The report gives the
median of every figure per tree and the ratio new/old (above 1 is better for rates, below 1
for times).

``--ssh-w3`` measures W3 alone over a loopback sshd (``sshd.py``), each tree's median
beside the bare asyncssh echo's measured right after it in the same child, and reports the
ratio ours/echo per tree (the issue-18 target: at most 1.3), with the client's CPU per round
trip; and the same through the ``ssh`` binary (``CERANUBIS_SSH_CLIENT=openssh``) where the
tree has it, with W1 per item for both (the ``w*_openssh`` figures).

``--project-pg`` measures W1 as a project against ``map`` on one throwaway PostgreSQL
server (``pg.py``), a fresh database per tree and block, with the server's CPU per stored
result (the issue-18 target: a ratio of at least 0.8).

``--ssh-w2`` measures W2 alone over a loopback sshd, each tree's beside execnet's over
ssh in the same child, and reports the ratio ours/execnet per tree (the issue-18 target:
at least 2).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Blocks of (A, B) pairs: 4 gives medians of 4 per figure in about 4 minutes.
BLOCKS = 4
# Workers of each executor: one per core of the 2-core reference machine.
WORKERS = 2
# Seconds one tree's measurement may take before the run is stopped.
MEASURE_TIMEOUT = 300.0
# W3 medians per tree and block with --ssh-w3 (each beside an echo median).
SSH_W3_ROUNDS = 3
# Projects per tree and block with --project-pg (each beside a plain map).
PG_PROJECT_REPEATS = 5
# What each figure is: a rate (higher is better) or a time (lower is better).
HIGHER_IS_BETTER = {
    "w1_per_s": True,
    "w1_batched_per_s": True,
    "w2_per_s": True,
    "w3_median_us": False,
    "w4_mb_per_s": True,
    "project_map_ratio": True,
    "pg_project_map_ratio": True,
    "pg_server_us_per_result": False,
    "w3_ssh_us": False,
    "w3_echo_us": False,
    "w3_ssh_per_echo": False,
    "w3_client_cpu_us": False,
    "w1_ssh_per_s": True,
    "w3_openssh_us": False,
    "w3_openssh_per_echo": False,
    "w3_openssh_client_cpu_us": False,
    "w1_openssh_per_s": True,
    "w2_ssh_per_s": True,
    "w2_execnet_per_s": True,
    "w2_ssh_per_execnet": True,
}
# The ssh-binary figures of the new tree, each against the old tree's asyncssh figure.
OPENSSH_VERSUS = {
    "w3_openssh_us": "w3_ssh_us",
    "w3_openssh_per_echo": "w3_ssh_per_echo",
    "w3_openssh_client_cpu_us": "w3_client_cpu_us",
    "w1_openssh_per_s": "w1_ssh_per_s",
}
_PROJECT_LINE = re.compile(r"ratio project/map:\s+([0-9.]+)")


def inc(x: int) -> int:
    """The tiny task (in ``__main__``, so it travels by value in both trees)."""
    return x + 1


def measure() -> dict[str, float]:
    """One tree's figures, from the package found on ``sys.path`` (run in a child)."""
    sys.path.insert(0, str(HERE))
    import workloads as w

    from ceranubis_jupyter import CeranubisExecutor

    with CeranubisExecutor(max_workers=WORKERS) as ex:
        w.w1_map(ex, inc)  # warm: nodes up, function shipped
        figures = {
            "w1_per_s": w.w1_map(ex, inc),
            "w1_batched_per_s": w.w1_map(ex, inc, w.W1_CHUNKSIZE),
            "w2_per_s": w.w2_submit(ex, inc),
            "w3_median_us": w.w3_latency(ex, inc)[0],
            "w4_mb_per_s": w.w4_throughput(ex, bytes(w.W4_BYTES)),
        }
    return figures


def measure_ssh_w3() -> dict[str, float]:
    """W3 over the loopback sshd that the parent started (its ``HOME`` names it), then
    the bare asyncssh echo to the same remote Python, three times each, interleaved."""
    sys.path.insert(0, str(HERE))
    import ssh_bench
    import workloads as w

    from ceranubis_jupyter import CeranubisExecutor
    from ceranubis_jupyter.cluster.hosts import Host

    host = Host(ssh_bench.ALIAS, python=sys.executable, workers=WORKERS)
    kinds = ["ssh"]
    if importlib.util.find_spec("ceranubis_jupyter.cluster.openssh") is not None:
        kinds.append("openssh")
    executors = {}
    for kind in kinds:
        os.environ["CERANUBIS_SSH_CLIENT"] = "openssh" if kind == "openssh" else "asyncssh"
        executors[kind] = CeranubisExecutor([host])
        executors[kind].submit(inc, 1).result()
    samples: dict[str, list[float]] = {kind: [] for kind in [*kinds, "echo"]}
    cpu = dict.fromkeys(kinds, 0.0)
    for _ in range(SSH_W3_ROUNDS):
        for kind in kinds:
            started = _client_cpu()
            samples[kind].append(w.w3_latency(executors[kind], inc)[0])
            cpu[kind] += _client_cpu() - started
        samples["echo"].append(ssh_bench.raw_echo()[0])
    figures = {"w3_echo_us": statistics.median(samples["echo"])}
    calls = SSH_W3_ROUNDS * (w.W3_CALLS + w.W3_WARMUP)
    for kind in kinds:
        median = statistics.median(samples[kind])
        figures[f"w3_{kind}_us"] = median
        figures[f"w3_{kind}_per_echo"] = median / figures["w3_echo_us"]
        prefix = "w3_" if kind == "ssh" else f"w3_{kind}_"
        figures[f"{prefix}client_cpu_us"] = cpu[kind] / calls * 1e6
        figures[f"w1_{kind}_per_s"] = w.w1_map(executors[kind], inc)
        executors[kind].shutdown(wait=True)
    return figures


def measure_ssh_w2() -> dict[str, float]:
    """W2 over the loopback sshd that the parent started (its ``HOME`` names it), ours
    and execnet's over ssh, three times each, interleaved."""
    sys.path.insert(0, str(HERE))
    import ssh_bench
    import workloads as w
    from execnet_peer import ExecnetExecutor

    from ceranubis_jupyter import CeranubisExecutor
    from ceranubis_jupyter.cluster.hosts import Host

    config = str(Path(os.environ["HOME"]) / ".ssh" / "config")
    ours = CeranubisExecutor([Host(ssh_bench.ALIAS, python=sys.executable, workers=WORKERS)])
    peer = ExecnetExecutor(
        ssh_bench.ALIAS, config, sys.executable, ssh_bench.PREFERRED_CIPHER, WORKERS
    )
    samples: dict[str, list[float]] = {"ours": [], "execnet": []}
    try:
        ours.submit(inc, 1).result()
        peer.submit(inc, 1).result()
        for _ in range(SSH_W3_ROUNDS):
            samples["ours"].append(w.w2_submit(ours, inc))
            samples["execnet"].append(w.w2_submit(peer, inc))
    finally:
        ours.shutdown(wait=True)
        peer.shutdown()
    mine, theirs = (statistics.median(samples[name]) for name in ("ours", "execnet"))
    return {"w2_ssh_per_s": mine, "w2_execnet_per_s": theirs, "w2_ssh_per_execnet": mine / theirs}


def _client_cpu() -> float:
    """CPU seconds of this process and its children that are ``ssh`` clients."""
    import psutil

    seconds = time.process_time()
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.name() == "ssh":
                times = child.cpu_times()
                seconds += times.user + times.system
    return seconds


def _export(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    tree = into / "base"
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _run_tree(tree: Path, with_project: bool, mode: str = "--measure") -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    child = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), mode],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=MEASURE_TIMEOUT,
        check=True,
    )
    figures: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    if with_project:
        figures["project_map_ratio"] = _project_ratio(tree, env)
    return figures


def _pg_project(tree: Path, server: Any, database: str) -> dict[str, float]:
    """One tree's W1 project/map ratio on a fresh database of ``server``, and the server's
    CPU per stored result meanwhile."""
    import bench_project
    import pg_server

    url = pg_server.create_database(server.url, database)
    before = server.cpu_seconds()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    ratio = _project_ratio(tree, env, "--store", url, repeats=PG_PROJECT_REPEATS)
    spent = server.cpu_seconds() - before
    per_result = spent / (PG_PROJECT_REPEATS * bench_project.W1_ITEMS) * 1e6
    return {"pg_project_map_ratio": ratio, "pg_server_us_per_result": per_result}


def _project_ratio(tree: Path, env: dict[str, str], *extra: str, repeats: int = 3) -> float:
    command = [sys.executable, str(tree / "benchmarks" / "bench_project.py")]
    child = subprocess.run(
        [*command, "--repeats", str(repeats), *extra],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=MEASURE_TIMEOUT,
    )
    found = _PROJECT_LINE.search(child.stdout)
    if found is None:
        raise RuntimeError(f"bench_project.py in {tree} printed no ratio:\n{child.stdout}")
    return float(found.group(1))


def _report(samples: dict[str, dict[str, list[float]]], rev: str) -> None:
    old, new = samples["old"], samples["new"]
    blocks = len(next(iter(old.values())))
    print(f"\nA/B: old = {rev}, new = this checkout; medians of {blocks} blocks")
    print(f"{'figure':<20}{'old':>14}{'new':>14}{'new/old':>10}   better")
    for key, higher in HIGHER_IS_BETTER.items():
        if key not in old:
            continue
        a, b = statistics.median(old[key]), statistics.median(new[key])
        ratio = b / a if a else float("nan")
        better = "higher" if higher else "lower"
        print(f"{key:<20}{a:>14,.2f}{b:>14,.2f}{ratio:>10.2f}   {better}")
    for key, base in OPENSSH_VERSUS.items():
        if key in new and key not in old and base in old:
            a, b = statistics.median(old[base]), statistics.median(new[key])
            print(f"{key:<26}{b:>14,.2f}   old {base}: {a:,.2f}, new/old {b / a:.2f}")


def main(argv: list[str] | None = None) -> int:
    """Measure both trees in alternating blocks and print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="the earlier commit (git rev)")
    parser.add_argument("--blocks", type=int, default=BLOCKS)
    parser.add_argument("--no-project", action="store_true", help="skip bench_project.py")
    parser.add_argument("--ssh-w3", action="store_true", help="W3 over a loopback sshd only")
    parser.add_argument("--ssh-w2", action="store_true", help="W2 over a loopback sshd only")
    parser.add_argument(
        "--project-pg", action="store_true", help="W1 as a project on PostgreSQL only"
    )
    for mode in MEASURES:
        parser.add_argument(mode, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for mode, measure_it in MEASURES.items():
        if getattr(args, mode.removeprefix("--").replace("-", "_")):
            print(json.dumps(measure_it()))
            return 0
    if args.ssh_w3 or args.ssh_w2:
        sys.path.insert(0, str(HERE))
        import sshd

        with sshd.loopback_hosts(1):
            _blocks(args, "--measure-ssh-w3" if args.ssh_w3 else "--measure-ssh-w2")
        return 0
    if args.project_pg:
        sys.path.insert(0, str(HERE))
        import pg

        with pg.postgres() as server:
            if server is None:
                raise SystemExit("no PostgreSQL server binaries: run .ci/install-system-deps")
            _blocks(args, "--project-pg", server)
        return 0
    _blocks(args, "--measure")
    return 0


# What a child measures, by its (hidden) option.
MEASURES: dict[str, Callable[[], dict[str, float]]] = {
    "--measure": measure,
    "--measure-ssh-w3": measure_ssh_w3,
    "--measure-ssh-w2": measure_ssh_w2,
}


def _blocks(args: argparse.Namespace, mode: str, server: Any = None) -> None:
    samples: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    with tempfile.TemporaryDirectory(prefix="cj-ab-") as tmp:
        trees = {"old": _export(args.base, Path(tmp)), "new": ROOT}
        for block in range(args.blocks):
            order = ["old", "new"] if block % 2 == 0 else ["new", "old"]
            for name in order:
                started = time.monotonic()
                if mode == "--project-pg":
                    figures = _pg_project(trees[name], server, f"ab_{name}_{block}")
                else:
                    with_project = mode == "--measure" and not args.no_project
                    figures = _run_tree(trees[name], with_project, mode)
                for key, value in figures.items():
                    samples[name].setdefault(key, []).append(value)
                took = time.monotonic() - started
                print(f"block {block + 1} {name}: {json.dumps(figures)} ({took:.0f} s)")
    _report(samples, args.base)


if __name__ == "__main__":
    sys.exit(main())
