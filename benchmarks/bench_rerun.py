""" "Run All" after a kernel restart of a finished 20,000-argument sweep: how long until done.

``python benchmarks/bench_rerun.py [--store URL] [--repeats N]``. A first process commits
``%%ceranubis``'s path (``commit_function`` with the cell's code, ``name="sweep"``) and
waits for all 20,000 results. Then each sample starts a *new* process (a restarted kernel:
nothing in memory) that runs the same cell through the magic in a real IPython shell and
times it from the cell's start to the widget's snapshot showing ``done``. Also timed: a
re-run with ten arguments added (10 run, 20,000 reused). Prints the medians against the
targets (1 s SQLite, 2 s PostgreSQL); exits 1 when missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The sweep's size (the 20,000-argument sweep).
SWEEP_ITEMS = 20_000
# Samples per measurement: each is a fresh process, so a few suffice for a median.
REPEATS = 5
# Seconds from the cell's start to done, at most (the targets).
TARGETS = {"sqlite": 1.0, "postgresql": 2.0}

# A name and code of this run's own: a shared PostgreSQL store may hold an earlier run's
# sweep, whose results the first run would otherwise reuse (the default is in the digest).
NAME = f"bench_rerun_{os.getpid()}_{int(time.time())}"
CELL = f"def inc(x, run={NAME!r}):\n    return x + 1\n"

# Runs in a fresh interpreter: the magic in a real shell, timed to the final snapshot.
CHILD = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ceranubis_jupyter")
count, cell, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
start = time.perf_counter()
shell.run_cell_magic("ceranubis", f"inc over range({count}) --name {name} --out sweep", cell)
elapsed = time.perf_counter() - start
project = shell.user_ns["sweep"]
assert project.state == "done", project.counts()
print(json.dumps({"seconds": elapsed, "reused": project.reused, "version": project.version,
                  "total": project.status()[1]}))
shell.run_line_magic("unload_ext", "ceranubis_jupyter")
"""


def cell_run(count: int, env: dict[str, str]) -> dict[str, float]:
    """One restarted kernel's "Run All": the seconds to done, and what it reused."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(count), CELL, NAME],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = done.stdout.strip().splitlines()[-1]
    result: dict[str, float] = json.loads(line)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run, print the medians and the verdict; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="store URL or path (default: a temporary SQLite file)")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    kind = "postgresql" if args.store and "://" in args.store else "sqlite"
    with tempfile.TemporaryDirectory(prefix="cj-bench-") as tmp:
        store = args.store or str(Path(tmp) / "projects.sqlite")
        env = dict(os.environ, CERANUBIS_STORE=store, CERANUBIS_PROGRESS="text")
        first = cell_run(SWEEP_ITEMS, env)  # the sweep itself: every task runs
        again = [cell_run(SWEEP_ITEMS, env) for _ in range(args.repeats)]
        grown = cell_run(SWEEP_ITEMS + 10, env)
    assert first["reused"] == 0, first
    assert all(r["reused"] == 0 and r["version"] == 1 for r in again), again
    assert grown["reused"] == SWEEP_ITEMS and grown["version"] == 2, grown
    median = statistics.median(r["seconds"] for r in again)
    target = TARGETS[kind]
    verdict = "met" if median <= target else "NOT met"
    print(f"first run (20,000 tasks)   : {first['seconds']:6.2f} s  (store: {kind})")
    samples = ", ".join(f"{r['seconds']:.3f}" for r in again)
    print(
        f"Run All after a restart    : {median:6.3f} s  (median of {len(again)}: "
        f"{samples}; target <= {target} s: {verdict})"
    )
    print(f"+10 arguments (20,000 reused): {grown['seconds']:6.3f} s  (version 2, 10 tasks run)")
    return 0 if median <= target else 1


if __name__ == "__main__":
    sys.exit(main())
