"""The benchmark workloads W1-W6 and the memory check, each against any ``Executor``.

Every workload takes an executor (or a factory for W5) plus the task functions, which the
caller defines in ``__main__`` so that they must travel by value, and returns one number.
The caller repeats and takes medians; nothing here retries or filters.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, wait
from typing import Any

import psutil

# Items of W1 (map): enough that per-item cost dominates start-up effects.
W1_ITEMS = 20_000
# The batched W1 knob, as benchmarks/README.md fixes it.
W1_CHUNKSIZE = 1000
# Tasks of W2 (submit then wait).
W2_ITEMS = 5_000
# Sequential round trips of W3, and the warm-up calls before them (not timed).
W3_CALLS = 200
W3_WARMUP = 20
# Size of the W4 payloads in bytes (MB = 10**6 bytes throughout).
W4_BYTES = 100_000_000
# W6: tasks and the CPU time each one should take.
W6_TASKS = 40
W6_TASK_SECONDS = 0.050
# The memory check: items, chunksize, and how often (in items) client RSS is sampled.
MEMORY_ITEMS = 1_000_000
MEMORY_CHUNKSIZE = 1000
MEMORY_SAMPLE_EVERY = 10_000
_MB = 1e6

IntFn = Callable[[int], int]


def w1_map(ex: Executor, inc: IntFn, chunksize: int = 1) -> float:
    """W1: ``list(ex.map(inc, range(20_000), chunksize=...))``; returns tasks/s."""
    start = time.perf_counter()
    values = list(ex.map(inc, range(W1_ITEMS), chunksize=chunksize))
    elapsed = time.perf_counter() - start
    _check(values[-1] == W1_ITEMS, "W1 returned wrong values")
    return W1_ITEMS / elapsed


def w2_submit(ex: Executor, inc: IntFn) -> float:
    """W2: 5,000 x ``ex.submit(inc, i)`` then wait for all; returns tasks/s."""
    start = time.perf_counter()
    futures = [ex.submit(inc, i) for i in range(W2_ITEMS)]
    wait(futures)
    elapsed = time.perf_counter() - start
    _check(futures[-1].result() == W2_ITEMS, "W2 returned wrong values")
    return W2_ITEMS / elapsed


def w3_latency(ex: Executor, inc: IntFn) -> tuple[float, float]:
    """W3: sequential ``ex.submit(inc, 1).result()``; returns (median, p99) in µs."""
    for _ in range(W3_WARMUP):
        ex.submit(inc, 1).result()
    samples = []
    for _ in range(W3_CALLS):
        start = time.perf_counter()
        ex.submit(inc, 1).result()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples), percentile(samples, 99)


def w4_throughput(ex: Executor, payload: Any) -> float:
    """W4: ``ex.submit(len, payload).result()``; returns MB/s of payload per round trip."""
    size = memoryview(payload).nbytes
    start = time.perf_counter()
    length = ex.submit(len, payload).result()
    elapsed = time.perf_counter() - start
    _check(length == len(payload), "W4 returned a wrong length")
    return size / _MB / elapsed


def w4_payloads() -> dict[str, Any]:
    """The two W4 payloads: 100 MB of bytes and a 100 MB numpy array."""
    import numpy as np

    return {
        "bytes": bytes(W4_BYTES),
        "numpy": np.ones(W4_BYTES // 8, dtype=np.float64),
    }


def w5_startup(factory: Callable[[], Executor], inc: IntFn) -> float:
    """W5: construct an executor and get a first trivial result; returns seconds.

    The shutdown that follows is not timed.
    """
    start = time.perf_counter()
    ex = factory()
    try:
        ex.submit(inc, 1).result()
        return time.perf_counter() - start
    finally:
        ex.shutdown(wait=True)


def calibrate_spin(spin: IntFn) -> int:
    """The ``spin`` argument that takes about ``W6_TASK_SECONDS`` of CPU here."""
    n = 10_000
    while True:
        start = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - start
        if elapsed > 0.01 or n > 10**9:
            return max(1, int(n * W6_TASK_SECONDS / elapsed))
        n *= 4


def serial_seconds(spin: IntFn, n: int) -> float:
    """The W6 work run serially in this process."""
    start = time.perf_counter()
    for _ in range(W6_TASKS):
        spin(n)
    return time.perf_counter() - start


def w6_efficiency(ex: Executor, spin: IntFn, n: int, serial: float, workers: int) -> float:
    """W6: 40 CPU-bound tasks; returns (serial / workers) / wall (1.0 is perfect)."""
    start = time.perf_counter()
    futures = [ex.submit(spin, n) for _ in range(W6_TASKS)]
    wait(futures)
    elapsed = time.perf_counter() - start
    for future in futures:
        future.result()
    return (serial / workers) / elapsed


def memory_growth(ex: Executor, inc: IntFn) -> float:
    """The memory check: peak client RSS growth (MB) while a 1M-item map streams."""
    gc.collect()
    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    count = 0
    for count, _ in enumerate(ex.map(inc, range(MEMORY_ITEMS), chunksize=MEMORY_CHUNKSIZE), 1):
        if count % MEMORY_SAMPLE_EVERY == 0:
            peak = max(peak, process.memory_info().rss)
    _check(count == MEMORY_ITEMS, "the memory check lost items")
    return float(peak - baseline) / _MB


def percentile(samples: list[float], pct: float) -> float:
    """The ``pct``-th percentile by nearest rank."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)
