"""Futures as arguments: tasks that wait for tasks, their failures, cancels and memory."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from ceranubis_jupyter import (
    CeranubisExecutor,
    ConfigError,
    DependencyError,
    Host,
    RemoteTraceback,
)
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.waiting import gated, wait_for

# A DAG's task values stay below this, so sums of many inputs stay small ints.
MODULUS = 1_000_003


@by_value
def combine(seed: int, *inputs: Any) -> int:
    """A DAG node: its seed plus its inputs (nested lists flattened)."""
    total = seed
    for value in inputs:
        total += sum(value) if isinstance(value, list) else value
    return total % 1_000_003


@by_value
def shape(a: Any, items: list[Any], pair: tuple[Any, ...], mapping: dict[str, Any], k: Any) -> Any:
    return a, items, pair, mapping, k


@by_value
def fail_with(message: str) -> None:
    raise KeyError(message)


@by_value
def padded(seed: int, *inputs: Any) -> bytes:
    """A DAG node whose result carries 2 KB, so a held result shows in memory."""
    return bytes([seed % 256]) * 2048 + b"".join(bytes(x[:1]) for x in inputs)


@pytest.fixture
def executor() -> Iterator[CeranubisExecutor]:
    with CeranubisExecutor(max_workers=2) as ex:
        yield ex


def held_nothing(ex: CeranubisExecutor) -> bool:
    deps = ex.scheduler.dependencies
    return not deps.held and not deps.waiting


def test_futures_anywhere_in_the_arguments(executor: CeranubisExecutor) -> None:
    one, two = executor.submit(combine, 1), executor.submit(combine, 2)
    got = executor.submit(shape, one, [one, 5, [two]], (two,), {"x": one}, k=two).result()
    assert got == (1, [1, 5, [2]], (2,), {"x": 1}, 2)
    assert list(executor.map(combine, [one, two, 3])) == [1, 2, 3]
    assert list(executor.map(combine, [one, two, 3], chunksize=2)) == [1, 2, 3]
    wait_for(lambda: held_nothing(executor), 30, "held inputs dropped")


def test_a_finished_future_passes_its_value(executor: CeranubisExecutor) -> None:
    done = executor.submit(combine, 7)
    assert done.result() == 7
    assert executor.submit(combine, 1, done, done).result() == 15


def test_a_dag_of_1000_tasks_equals_a_serial_run(executor: CeranubisExecutor) -> None:
    rng = random.Random(15)
    inputs_of = _random_dag(rng, 1000)
    serial: list[int] = []
    for seed, inputs in enumerate(inputs_of):
        serial.append(combine(seed, *[serial[i] for i in inputs]))
    futures: list[cf.Future[Any]] = []
    for seed, inputs in enumerate(inputs_of):
        futures.append(executor.submit(combine, seed, *[futures[i] for i in inputs]))
    assert [f.result(timeout=120) for f in futures] == serial
    wait_for(lambda: held_nothing(executor), 30, "held inputs dropped")


def _random_dag(rng: random.Random, size: int) -> list[list[int]]:
    """Each task's inputs (earlier tasks): chains, fan-out, fan-in and diamonds mixed."""
    inputs_of: list[list[int]] = []
    for index in range(size):
        shape = index % 4
        if index < 4 or shape == 0:  # a root or a chain link
            inputs_of.append([] if index < 4 else [index - 1])
        elif shape == 1:  # fan-out: many tasks take one early task
            inputs_of.append([rng.randrange(0, max(1, index // 10))])
        elif shape == 2:  # fan-in: one task takes many
            inputs_of.append(rng.sample(range(index), min(index, 8)))
        else:  # diamond: two tasks of one input, joined
            inputs_of.append([index - 2, index - 3])
    return inputs_of


def test_a_failed_input_fails_its_dependents(executor: CeranubisExecutor) -> None:
    bad = executor.submit(fail_with, "no such key")
    child = executor.submit(combine, 1, bad)
    grandchild = executor.submit(combine, 2, [child])
    with pytest.raises(DependencyError) as caught:
        child.result()
    assert isinstance(caught.value.__cause__, KeyError)
    assert isinstance(caught.value.__cause__.__cause__, RemoteTraceback)
    assert "no such key" in str(caught.value.__cause__.__cause__)
    assert caught.value.input_task_id == executor.task_id_of(bad)
    with pytest.raises(DependencyError) as second:
        grandchild.result()
    assert second.value.__cause__ is caught.value
    late = executor.submit(combine, 3, bad)  # the input failed before this was given it
    with pytest.raises(DependencyError):
        late.result()
    wait_for(lambda: held_nothing(executor), 30, "held inputs dropped")


def test_a_cancelled_input_cancels_its_dependents(
    executor: CeranubisExecutor, tmp_path: Path
) -> None:
    gate = str(tmp_path / "gate")
    slow = executor.submit(gated, gate, 1)
    child = executor.submit(combine, 1, slow)
    grandchild = executor.submit(combine, 1, child)
    executor.cancel([slow])
    with pytest.raises(cf.CancelledError):
        slow.result(timeout=60)
    wait_for(lambda: child.done() and grandchild.done(), 60, "dependents ended")
    assert child.cancelled() and grandchild.cancelled()
    wait_for(lambda: held_nothing(executor), 30, "held inputs dropped")


def test_cancelling_a_dependent_leaves_its_inputs(
    executor: CeranubisExecutor, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    slow = executor.submit(gated, str(gate), 5)
    by_cancel = executor.submit(combine, 1, slow)
    by_executor = executor.submit(combine, 2, slow)
    kept = executor.submit(combine, 3, slow)
    assert by_cancel.cancel()
    executor.cancel([by_executor])
    wait_for(by_executor.done, 60, "the dependent cancelled by the executor ended")
    assert by_executor.cancelled()
    gate.touch()
    assert slow.result(timeout=60) == 5
    assert kept.result(timeout=60) == 8
    assert by_cancel.cancelled()
    wait_for(lambda: held_nothing(executor), 30, "held inputs dropped")


def test_futures_of_another_executor_are_refused(executor: CeranubisExecutor) -> None:
    with cf.ThreadPoolExecutor(1) as threads:
        foreign = threads.submit(int, 1)
        foreign.result()
    with CeranubisExecutor(max_workers=1) as other:
        theirs = other.submit(combine, 1)
        theirs.result()
        refused = executor.submit(combine, 1, theirs)
        with pytest.raises(ConfigError, match="another executor"):
            refused.result()


def test_a_future_does_not_pickle_by_itself(executor: CeranubisExecutor) -> None:
    future = executor.submit(combine, 1)
    with pytest.raises(TypeError, match="pass it to submit"):
        pickle.dumps(future)
    future.result()


def test_a_dependent_runs_where_its_largest_input_was_made() -> None:
    hosts = [Host("local", workers=1, group="a"), Host("local", workers=1, group="b")]
    with CeranubisExecutor(hosts) as ex, TaskRecords(ex) as records:
        for group in ("a", "b"):
            big = ex.options(group=group).submit(padded_big)
            small = ex.submit(combine, 1)
            child = ex.submit(len_of, big, small)
            assert child.result(timeout=60) == 1 << 20
            assert records.of(big).host == records.of(child).host == f"local:{group}"


@by_value
def padded_big() -> bytes:
    return b"x" * (1 << 20)


@by_value
def len_of(data: bytes, other: int) -> int:
    return len(data)


def test_memory_returns_to_its_baseline_after_a_10000_task_dag() -> None:
    """Run the same 10,000-task DAG twice: nothing is held after either, and the second
    adds no memory the first did not (a kept result would add 2 KB per task: 20 MB)."""
    process = psutil.Process(os.getpid())
    rng = random.Random(10_000)
    inputs_of = _random_dag(rng, 10_000)
    with CeranubisExecutor(max_workers=2) as ex:
        _run_dag(ex, inputs_of)
        gc.collect()
        baseline = process.memory_info().rss
        _run_dag(ex, inputs_of)
        gc.collect()
        grown = process.memory_info().rss - baseline
        assert held_nothing(ex)
    assert grown < 10 * 1024 * 1024, f"RSS grew {grown / 1e6:.1f} MB over a repeated DAG"


def _run_dag(ex: CeranubisExecutor, inputs_of: list[list[int]]) -> None:
    futures: list[cf.Future[Any]] = []
    for seed, inputs in enumerate(inputs_of):
        futures.append(ex.submit(padded, seed, *[futures[i] for i in inputs]))
    for future in futures:
        assert len(future.result(timeout=300)) >= 2048
    wait_for(lambda: held_nothing(ex), 30, "held inputs dropped")
