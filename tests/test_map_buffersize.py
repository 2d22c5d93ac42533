"""``Executor.map(..., buffersize=N)`` as Python 3.14 defines it, on every Python we support.

At most ``N`` tasks (chunks with ``chunksize``) queued whose results were not handed out; the
iterables read lazily as results are taken; results in order; the timeout still applies.
Every test waits on states (how far an iterable was read, marker files), never the clock.
Also here: a map's result that does not unpickle in the client fails at its place with the
same error whether the ``lazy_results`` fast path unpickles it late or the loop thread now.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.mapping import MAP_BATCH
from ceranubis_jupyter.errors import UnpicklableError
from tests.remote import by_value
from tests.waiting import gated, wait_for


@by_value
def add(a: int, b: int = 0) -> int:
    return a + b


@by_value
def mark_then_wait(directory: str, i: int) -> int:
    """Touch ``directory/ran-<i>``, then wait for ``directory/gate`` (bounded)."""
    import os
    import pathlib
    import time

    pathlib.Path(directory, f"ran-{i}").touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(directory, "gate")):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return i


@by_value
def unpicklable_at(x: int, bad: int) -> Any:
    """``x``, but at ``bad`` a value whose unpickling fails in the client (``int("x")``)."""

    class Refused:
        def __reduce__(self) -> Any:
            return (int, ("not a number",))

    return Refused() if x == bad else x


class Counting:
    """An endless iterable that records how many items were read from it."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.read = 0
        self.fail_at = fail_at

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            if i == self.fail_at:
                raise ValueError(f"item {i} cannot be read")
            self.read = i + 1
            yield i


@pytest.fixture
def ex(hosts: Any) -> Iterator[CeranubisExecutor]:
    executor = CeranubisExecutor(hosts, max_workers=2)
    yield executor
    executor.shutdown(wait=True, stop_running=True)


def test_an_endless_iterable_is_read_only_as_results_are_taken(ex: CeranubisExecutor) -> None:
    source = Counting()
    results = ex.map(add, source, buffersize=4)
    assert source.read == 4, "the first buffersize calls are queued at once"
    for taken in range(1, 41):
        assert next(results) == taken - 1 + 0
        assert taken <= source.read <= taken + 4
    results.close()  # type: ignore[attr-defined]
    read = source.read
    assert ex.scheduler.wait_idle_threadsafe(timeout=60.0)
    assert source.read == read, "a closed map reads no more"


def test_no_more_than_buffersize_calls_run_before_results_are_taken(
    ex: CeranubisExecutor, tmp_path: Path
) -> None:
    source = Counting()
    results = ex.map(mark_then_wait, itertools.repeat(str(tmp_path)), source, buffersize=2)
    both = [tmp_path / "ran-0", tmp_path / "ran-1"]
    wait_for(lambda: all(p.exists() for p in both), 60, "the two buffered calls started")
    assert source.read == 2
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-0", "ran-1"]
    (tmp_path / "gate").touch()
    assert [next(results) for _ in range(10)] == list(range(10))
    assert source.read <= 12
    results.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("chunksize", "buffersize"), [(1, 1), (1, 7), (3, 1), (64, 2)])
def test_results_come_in_order(ex: CeranubisExecutor, chunksize: int, buffersize: int) -> None:
    got = ex.map(add, range(250), range(250), chunksize=chunksize, buffersize=buffersize)
    assert list(got) == [2 * x for x in range(250)]


def test_buffersize_counts_chunks(ex: CeranubisExecutor) -> None:
    source = Counting()
    results = ex.map(add, source, chunksize=10, buffersize=3)
    assert source.read == 30
    assert [next(results) for _ in range(5)] == list(range(5))
    results.close()  # type: ignore[attr-defined]


def test_the_timeout_still_applies(ex: CeranubisExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # shut until the timeout fired
    results = ex.map(gated, itertools.repeat(str(gate)), buffersize=2, timeout=0.5)
    with pytest.raises(cf.TimeoutError):
        next(results)
    gate.touch()


def test_an_error_of_the_iterable_comes_where_it_is_read(ex: CeranubisExecutor) -> None:
    source = Counting(fail_at=5)
    got: list[int] = []
    with pytest.raises(ValueError, match="item 5 cannot be read"):
        for value in ex.map(add, source, buffersize=2):
            got.append(value)
    assert got == list(range(len(got))) and 3 <= len(got) <= 5


def test_without_buffersize_every_call_is_read_and_queued_at_once(ex: CeranubisExecutor) -> None:
    source = Counting(fail_at=50)
    with pytest.raises(ValueError, match="item 50 cannot be read"):
        ex.map(add, source)  # as concurrent.futures: the iterable is read in map()


def test_options_take_a_buffersize(ex: CeranubisExecutor) -> None:
    source = Counting()
    results = ex.options(priority=3).map(add, source, buffersize=5)
    assert source.read == 5
    assert [next(results) for _ in range(20)] == list(range(20))
    results.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("bad", "error"), [("3", TypeError), (1.5, TypeError), (0, ValueError)])
def test_a_bad_buffersize_is_refused_as_the_stdlib_refuses_it(
    ex: CeranubisExecutor, bad: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="buffersize must be"):
        ex.map(add, range(3), buffersize=bad)


@pytest.mark.parametrize("chunksize", [1, 2])
def test_a_result_that_does_not_unpickle_fails_at_its_place(
    ex: CeranubisExecutor, chunksize: int
) -> None:
    results = ex.map(unpicklable_at, range(6), [3] * 6, chunksize=chunksize)
    before = 3 if chunksize == 1 else 2  # a chunk's result is one pickle: [2, 3] fails whole
    assert [next(results) for _ in range(before)] == list(range(before))
    with pytest.raises(UnpicklableError, match="could not be unpickled here: ValueError"):
        next(results)


def test_a_chunk_that_came_back_while_map_read_fails_at_its_place(ex: CeranubisExecutor) -> None:
    # The iterable waits until the first chunk ([0, 1], whose 1 does not unpickle) is back,
    # so its result arrives while map() still reads (kept pickled with lazy_results). The
    # calls go out MAP_BATCH at a time: the first batch is read in full before the wait.
    first_batch = 2 * MAP_BATCH

    def items() -> Iterator[int]:
        yield from range(first_batch)
        wait_for(lambda: sum(h.done for h in ex.hosts()) >= 1, 60, "the first chunk is back")
        yield from range(first_batch, first_batch + 4)

    results = ex.map(unpicklable_at, items(), itertools.repeat(1), chunksize=2)
    with pytest.raises(UnpicklableError, match="could not be unpickled here: ValueError"):
        next(results)
