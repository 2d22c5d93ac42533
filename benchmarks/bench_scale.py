"""How cost grows: a 10,000,000-item ``map`` and a 1,000,000-argument project on SQLite.

- ``map(inc, range(10_000_000), chunksize=1000)`` consumed as it streams, with the default
  (every call read and queued in ``map()``, the stdlib contract) and with ``buffersize``:
  peak client RSS growth (target <= 200 MB).
- A 1,000,000-argument project (chunksize 1000) on SQLite: peak client RSS growth while it
  is committed and run (target <= 200 MB), the store's size per argument, and the commit
  time per argument (``ex.commit`` returning) and the run's time per argument.

``.venv/bin/python benchmarks/bench_scale.py [--items N] [--arguments N]``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.projects.stores import open_store

MAP_ITEMS = 10_000_000
PROJECT_ARGUMENTS = 1_000_000
CHUNKSIZE = 1000
# The buffered map's buffersize, in chunks: enough to keep 2 workers busy.
BUFFERSIZE = 256
# Seconds between RSS samples of the watcher thread (it sees peaks between our own checks).
SAMPLE_SECONDS = 0.05
# Seconds the project may take to finish before the benchmark calls it stuck.
PROJECT_TIMEOUT = 1800.0
_MB = 1e6


def inc(x: int) -> int:
    """The tiny task (in ``__main__``: it travels by value)."""
    return x + 1


class PeakRSS:
    """Samples this process's RSS in a thread; ``growth`` is the peak over the baseline."""

    def __init__(self) -> None:
        gc.collect()
        self.process = psutil.Process()
        self.baseline = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PeakRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _watch(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> float:
        return (self.peak - self.baseline) / _MB


def map_growth(ex: CeranubisExecutor, items: int, buffersize: int | None) -> tuple[float, float]:
    """Peak RSS growth (MB) and seconds of a streamed map over ``items``."""
    start = time.perf_counter()
    with PeakRSS() as rss:
        results = ex.map(inc, range(items), chunksize=CHUNKSIZE, buffersize=buffersize)
        count = sum(1 for _ in results)
    if count != items:
        raise RuntimeError(f"the map lost items: {count} of {items}")
    return rss.growth, time.perf_counter() - start


def project_costs(ex: CeranubisExecutor, arguments: int, folder: Path) -> None:
    """Commit and run a project of ``arguments`` on SQLite; print its costs."""
    path = folder / "projects.sqlite"
    store = open_store(path)
    args = [(i,) for i in range(arguments)]
    with PeakRSS() as rss:
        start = time.perf_counter()
        project = ex.commit(inc, args, store=store, chunksize=CHUNKSIZE, name="scale")
        committed = time.perf_counter() - start
        del args
        if not project.wait(PROJECT_TIMEOUT):
            raise RuntimeError(f"the project did not finish within {PROJECT_TIMEOUT:g} s")
        ran = time.perf_counter() - start
    done = project.status()
    store.close()
    size = sum(p.stat().st_size for p in folder.glob("projects.sqlite*"))
    print(
        f"project of {arguments:,} arguments (SQLite, chunksize {CHUNKSIZE}): client RSS "
        f"growth {rss.growth:,.0f} MB (target <= 200; the argument list itself included); "
        f"store {size / arguments:,.1f} bytes/argument; commit {committed / arguments * 1e6:.2f} "
        f"µs/argument; commit to done {ran / arguments * 1e6:.2f} µs/argument; status {done}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=MAP_ITEMS)
    parser.add_argument("--arguments", type=int, default=PROJECT_ARGUMENTS)
    args = parser.parse_args(argv)
    with CeranubisExecutor(max_workers=2) as ex:
        list(ex.map(inc, range(1000)))  # nodes up, inc shipped
        for buffersize in (BUFFERSIZE, None):
            growth, took = map_growth(ex, args.items, buffersize)
            print(
                f"map over {args.items:,} items, chunksize {CHUNKSIZE}, buffersize "
                f"{buffersize}: client RSS growth {growth:,.0f} MB (target <= 200), "
                f"{args.items / took:,.0f} items/s"
            )
        with tempfile.TemporaryDirectory(prefix="cj-bench-scale-") as tmp:
            project_costs(ex, args.arguments, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
