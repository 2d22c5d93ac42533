"""Our side of the queue benchmark: ``map`` on the embedded default, and queue mode.

Queue mode (``ceranubis node`` daemons pulling from the store) lands with the
``ceranubis_jupyter.daemon`` sub-package; until it is there ``available()`` is false and
the benchmark measures only the peers and our ``map``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

from ceranubis_jupyter import CeranubisExecutor

# Tasks that start the executor's nodes and ship the function before the timed map.
WARM_UP = 1000


def available() -> bool:
    """Whether queue mode (the daemon) is in this checkout."""
    return not why_unavailable()


def why_unavailable() -> str:
    """Why our queue rows cannot be measured ("" when they can)."""
    if importlib.util.find_spec("ceranubis_jupyter.daemon") is None:
        return "ceranubis_jupyter.daemon (queue mode) is not in this checkout yet"
    return ""


def map_rate(fn: Callable[[int], int], tasks: int) -> float:
    """Our executor's ``map`` of ``tasks`` tiny calls on the embedded default: tasks/s
    (start-up and the function's first trip excluded)."""
    with CeranubisExecutor() as ex:
        list(ex.map(fn, range(WARM_UP)))
        started = time.perf_counter()
        values = list(ex.map(fn, range(tasks)))
        elapsed = time.perf_counter() - started
    assert values[-1] == tasks, "map returned wrong values"
    return tasks / elapsed


async def measure_q1_q2(bench: Any, fn: Callable[[int], int], tasks: int, samples: int) -> None:
    """Q1 and Q2 through our queue (needs the daemon)."""
    raise NotImplementedError("queue mode is not in this checkout yet")


async def idle_daemons(url: str) -> Any:
    """Start Q3's idle daemons; returns a handle with ``async stop()``."""
    raise NotImplementedError("queue mode is not in this checkout yet")
