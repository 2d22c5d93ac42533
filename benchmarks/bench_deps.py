"""Tasks that depend on tasks, and joblib: ours side by side with dask.distributed and loky.

``.venv/bin/python benchmarks/bench_deps.py`` (``make bench`` runs it). In one run, in
alternating blocks (A B, then B A, ...) so drift on a shared machine hits both alike:

- chain: 100 tiny tasks, each given the previous one's future; per-hop latency (µs).
- diamonds: 2,500 diamonds of 4 tasks (a root, two tasks of it, a join of both): a
  10,000-task DAG submitted at once; tasks/s.
- joblib: ``Parallel(n_jobs=2)`` of 10,000 tiny calls with our backend and with loky;
  calls/s.

Ours is the embedded default, dask a ``LocalCluster`` of as many single-threaded worker
processes. Medians per system, and the ratios the targets are about.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

# Workers of every system: one per core of the 2-core reference machine.
WORKERS = 2
# Blocks of (A, B) measurements: medians of 5 resist two noisy samples.
BLOCKS = 5
CHAIN_LENGTH = 100
DIAMONDS = 2_500  # x 4 tasks
JOBLIB_CALLS = 10_000


def inc(x: int) -> int:
    """The tiny task (in ``__main__``: it travels by value)."""
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def chain_ours(ex: Any) -> float:
    started = time.perf_counter()
    future = ex.submit(inc, 0)
    for _ in range(CHAIN_LENGTH - 1):
        future = ex.submit(inc, future)
    assert future.result() == CHAIN_LENGTH
    return (time.perf_counter() - started) / CHAIN_LENGTH * 1e6


def chain_dask(client: Any) -> float:
    started = time.perf_counter()
    future = client.submit(inc, 0, pure=False)
    for _ in range(CHAIN_LENGTH - 1):
        future = client.submit(inc, future, pure=False)
    assert future.result() == CHAIN_LENGTH
    return (time.perf_counter() - started) / CHAIN_LENGTH * 1e6


def diamonds(submit: Callable[..., Any], gather: Callable[[list[Any]], list[Any]]) -> float:
    started = time.perf_counter()
    joins = []
    for i in range(DIAMONDS):
        root = submit(inc, i)
        joins.append(submit(add, submit(inc, root), submit(inc, root)))
    values = gather(joins)
    assert values == [2 * (i + 2) for i in range(DIAMONDS)]
    return 4 * DIAMONDS / (time.perf_counter() - started)


def joblib_calls(backend: str, **options: Any) -> float:
    import joblib

    with joblib.parallel_config(backend=backend, **options):
        started = time.perf_counter()
        out = joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(inc)(i) for i in range(JOBLIB_CALLS))
        elapsed = time.perf_counter() - started
    assert out[-1] == JOBLIB_CALLS
    return JOBLIB_CALLS / elapsed


def _measure(blocks: int) -> dict[str, dict[str, list[float]]]:  # long: one block each
    from dask.distributed import Client, LocalCluster

    from ceranubis_jupyter import CeranubisExecutor

    samples: dict[str, dict[str, list[float]]] = {"ours": {}, "dask": {}, "loky": {}}

    def note(system: str, key: str, value: float) -> None:
        samples[system].setdefault(key, []).append(value)

    cluster = LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with Client(cluster) as client, CeranubisExecutor(max_workers=WORKERS) as ex:
        client.submit(inc, 1, pure=False).result()
        ex.submit(inc, 1).result()
        joblib_calls("loky")  # warm: loky's workers start
        our_submit = ex.submit
        dask_submit = lambda fn, *a: client.submit(fn, *a, pure=False)  # noqa: E731
        runs = {
            "ours": [
                ("chain_us", lambda: chain_ours(ex)),
                ("diamonds_per_s", lambda: diamonds(our_submit, _results)),
                ("joblib_per_s", lambda: joblib_calls("ceranubis", executor=ex)),
            ],
            "dask": [
                ("chain_us", lambda: chain_dask(client)),
                ("diamonds_per_s", lambda: diamonds(dask_submit, client.gather)),
            ],
            "loky": [("joblib_per_s", lambda: joblib_calls("loky"))],
        }
        for block in range(blocks):
            order = ["ours", "dask", "loky"] if block % 2 == 0 else ["loky", "dask", "ours"]
            for system in order:
                for key, run in runs[system]:
                    note(system, key, run())
            print(f"block {block + 1}/{blocks} done", file=sys.stderr, flush=True)
        logging.getLogger("distributed").setLevel(logging.CRITICAL)  # its shutdown chatter
    cluster.close()
    return samples


def _results(futures: list[Any]) -> list[Any]:
    return [future.result() for future in futures]


def report(samples: dict[str, dict[str, list[float]]]) -> str:
    """The medians, then the three ratios against their targets."""
    med = {s: {k: statistics.median(v) for k, v in m.items()} for s, m in samples.items()}
    lines = [f"{'system':8} {'figure':16} {'median':>12}"]
    for system, figures in med.items():
        for key, value in figures.items():
            lines.append(f"{system:8} {key:16} {value:12,.1f}")
    chain = med["dask"]["chain_us"] / med["ours"]["chain_us"]
    dag = med["ours"]["diamonds_per_s"] / med["dask"]["diamonds_per_s"]
    jl = med["ours"]["joblib_per_s"] / med["loky"]["joblib_per_s"]
    lines += [
        f"chain per hop, dask/ours:        {chain:5.2f}x (target >= 1)",
        f"diamond DAG tasks/s, ours/dask:  {dag:5.2f}x (target >= 3)",
        f"joblib 10,000 calls, ours/loky:  {jl:5.2f}x (target >= 1)",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=BLOCKS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # dask's start-up chatter is not a figure
    print(report(_measure(max(1, args.blocks))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
