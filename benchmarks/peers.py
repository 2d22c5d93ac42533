"""The systems measured side by side: ours (the embedded default) and its local peers.

Each :class:`System` is a name plus a factory for a fresh ``Executor`` with ``WORKERS``
workers. Peers that are not installed (loky is an optional dev extra) are left out, and
the report says so.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass

from ceranubis_jupyter import CeranubisExecutor

# Workers per system: one per core of the 2-core reference machine (benchmarks/README.md).
WORKERS = 2

OURS = "ceranubis"
PPE = "ppe-fork"
LOKY = "loky"


@dataclass(frozen=True)
class System:
    """A named way to build an executor."""

    name: str
    factory: Callable[[], Executor]


def _ours() -> Executor:
    executor: Executor = CeranubisExecutor(max_workers=WORKERS)
    return executor


def _ppe() -> Executor:
    return ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))


def _loky() -> Executor:
    import loky

    executor: Executor = loky.ProcessPoolExecutor(WORKERS)
    return executor


def systems() -> list[System]:
    """Ours first, then every peer available here."""
    found = [System(OURS, _ours), System(PPE, _ppe)]
    if importlib.util.find_spec("loky") is not None:
        found.append(System(LOKY, _loky))
    return found
