"""A/B of W2 over SSH (5,000 ``submit`` then wait), ours beside execnet, in alternating
blocks: this checkout against another tree.

``.venv/bin/python benchmarks/ab_w2_ssh.py --base DIR [--blocks N]``, where ``DIR`` holds
an earlier tree (``git archive <rev> | tar -x -C DIR``). Each block runs each tree in a
fresh process that imports its own package, starts a loopback sshd (``ssh_bench.py``),
and measures W2 three times for ours and for execnet over ssh, alternately; the report
gives each tree's medians and its ratio to execnet in the same processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# W2 measurements per system in each child.
ROUNDS = 3
# Seconds one child may take.
CHILD_TIMEOUT = 300.0


def inc(x: int) -> int:
    """The tiny task (in ``__main__``, so it travels by value in both trees)."""
    return x + 1


def child(tree: str) -> dict[str, list[float]]:
    """W2 per second over SSH, ours and execnet's, with ``tree``'s package."""
    sys.path[:0] = [tree, str(Path(tree) / "benchmarks")]
    import ssh_bench
    import workloads as w
    from execnet_peer import ExecnetExecutor

    got: dict[str, list[float]] = {"ours": [], "execnet": []}
    with ssh_bench.loopback() as setup:
        ours = ssh_bench.ours(setup)
        config = str(setup.hosts.ssh_config)
        peer = ExecnetExecutor(
            ssh_bench.ALIAS, config, sys.executable, ssh_bench.PREFERRED_CIPHER, workers=2
        )
        try:
            ours.submit(inc, 1).result()
            peer.submit(inc, 1).result()
            for _ in range(ROUNDS):
                got["ours"].append(w.w2_submit(ours, inc))
                got["execnet"].append(w.w2_submit(peer, inc))
        finally:
            ours.shutdown(wait=True)
            peer.shutdown()
    return got


def _run_child(tree: str) -> dict[str, list[float]]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", tree],
        capture_output=True,
        text=True,
        cwd=tree,
        env=dict(os.environ, PYTHONPATH=tree),
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise RuntimeError(f"the child for {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, list[float]] = json.loads(lines[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the other tree's folder")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(options.child)))
        return 0
    trees = {"new": str(Path(__file__).resolve().parent.parent), "old": options.base}
    got: dict[str, dict[str, list[float]]] = {n: {"ours": [], "execnet": []} for n in trees}
    for block in range(options.blocks):
        for name in ("old", "new") if block % 2 == 0 else ("new", "old"):
            figures = _run_child(trees[name])
            for system, values in figures.items():
                got[name][system] += values
            ours, theirs = (statistics.median(figures[s]) for s in ("ours", "execnet"))
            print(f"block {block + 1} {name}: ours {ours:,.0f}/s, execnet {theirs:,.0f}/s")
    for name, figures in got.items():
        ours, theirs = (statistics.median(figures[s]) for s in ("ours", "execnet"))
        print(f"{name}: ours {ours:,.0f}/s, execnet {theirs:,.0f}/s, ratio {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
