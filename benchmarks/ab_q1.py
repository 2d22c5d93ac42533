"""Q1 and the PostgreSQL server's CPU per task, A/B against another tree in one run.

``python benchmarks/ab_q1.py --base /path/to/other/tree [--blocks N] [--tasks T]``: blocks
alternate which tree goes first; each block runs ``q1_server.py --plain --map`` once per
tree (a fresh server, 2 daemons x 1 worker, 3 rounds of Q1, our ``map`` of the same tasks)
with that tree's package, and the summary gives each tree's medians: Q1 tasks/s, the
server's CPU per task, Q1 / map.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Rounds of Q1 per tree per block (the first is not dropped: the daemons are warm).
ROUNDS = 3
# Seconds one tree's block may take.
BLOCK_TIMEOUT = 900


def run_tree(tree: str, tasks: int) -> tuple[float, list[tuple[float, float]]]:
    """One tree's block: its map rate and (Q1 rate, server us/task) per round."""
    done = subprocess.run(
        [sys.executable, str(HERE / "q1_server.py"), str(tasks), str(ROUNDS), "--plain", "--map"],
        capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
        env={**os.environ, "PYTHONPATH": tree}, cwd=tree,  # python -m looks in cwd first
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{tree}: q1_server failed:\n{done.stderr[-2000:]}")
    found = re.search(r"^map ([\d,]+)/s", done.stdout, re.M)
    assert found, done.stdout
    rounds = [
        (float(rate.replace(",", "")), float(server))
        for rate, server in re.findall(r"^Q1 ([\d,]+)/s  server ([\d.]+)", done.stdout, re.M)
    ]
    return float(found.group(1).replace(",", "")), rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the other tree (e.g. /work/main)")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=20_000)
    options = parser.parse_args()
    trees = {"base": options.base, "this": str(HERE.parent)}
    seen: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    for block in range(options.blocks):
        order = list(trees) if block % 2 == 0 else list(reversed(trees))
        for name in order:
            mapped, rounds = run_tree(trees[name], options.tasks)
            for rate, server in rounds:
                seen[name].append((rate, server, rate / mapped))
            shown = ", ".join(f"{r:,.0f}/s {s:.1f} us" for r, s in rounds)
            print(f"block {block + 1} {name}: map {mapped:,.0f}/s; Q1 {shown}", flush=True)
    for name, samples in seen.items():
        rate, server, ratio = (statistics.median(s[i] for s in samples) for i in range(3))
        print(f"{name}: Q1 {rate:,.0f}/s, server {server:.1f} us/task, Q1/map {ratio:.2f} "
              f"(medians of {len(samples)})")  # fmt: skip


if __name__ == "__main__":
    main()
