"""Each fast path turned off: the executor contract holds with the same results.

The contract tests of ``test_executor_contract.py`` and ``test_map_buffersize.py`` that
take only an executor run here again, once per switch (and with all of them off), on the
embedded default. The switches
themselves are shown to take effect in ``test_relay.py`` (cut-through) and below
(submits from the submitting thread).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import tests.test_executor_contract as contract
import tests.test_map_buffersize as buffered
from ceranubis_jupyter import CeranubisExecutor, ConfigError
from ceranubis_jupyter.cluster.fastpaths import FAST_PATHS_OFF_ENV, FastPaths
from tests.remote import nap_then_plus_one, plus_one

# The executor's switches (queue_batches is the queue daemon's: tests/test_queue_batches.py).
SWITCHES = [*(name for name in FastPaths.names() if name != "queue_batches"), "all"]


@pytest.fixture(params=SWITCHES)
def ex(request: pytest.FixtureRequest) -> Iterator[CeranubisExecutor]:
    executor = CeranubisExecutor(max_workers=2, fast_paths=FastPaths.without(request.param))
    yield executor
    executor.shutdown(wait=True, stop_running=True)


def _executor_only(name: str, test: Any) -> bool:
    return name.startswith("test_") and list(inspect.signature(test).parameters)[:1] == ["ex"]


for _name, _test in [*vars(contract).items(), *vars(buffered).items()]:
    if (
        callable(_test)
        and _executor_only(_name, _test)
        and "hosts" not in str(inspect.signature(_test))
    ):
        globals()[_name] = _test


@contextlib.contextmanager
def _warm_executor_without(switch: str) -> Iterator[CeranubisExecutor]:
    """An executor with one fast path off, its node up and ``plus_one`` shipped."""
    with CeranubisExecutor(max_workers=2, fast_paths=FastPaths.without(switch)) as executor:
        assert executor.submit(plus_one, 0).result(30) == 1
        yield executor


def test_with_inline_submit_off_the_loop_thread_sends_every_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _warm_executor_without("inline_submit") as executor:
        inline: list[bool] = []
        scheduler = executor.scheduler
        original = scheduler._take_incoming_directly
        monkeypatch.setattr(
            scheduler, "_take_incoming_directly", lambda: inline.append(original()) or True
        )
        assert [executor.submit(plus_one, i).result(30) for i in range(20)] == list(range(1, 21))
    assert inline == []


def _threads_that_receive(
    executor: CeranubisExecutor, monkeypatch: pytest.MonkeyPatch, calls: int, stop: bool
) -> set[int]:
    """The threads that handled results over ``calls`` sequential round trips (ending
    early once a round trip was received by the calling thread, if ``stop``)."""
    scheduler = executor.scheduler
    threads: set[int] = set()
    original = scheduler.on_results

    def on_results(link: Any, results: Any) -> None:
        threads.add(threading.get_ident())
        original(link, results)

    monkeypatch.setattr(scheduler, "on_results", on_results)
    for i in range(calls):
        assert executor.submit(plus_one, i).result(30) == i + 1
        if stop and threading.get_ident() in threads:
            break
    return threads


def test_with_inline_receive_the_waiting_thread_reads_its_lone_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with CeranubisExecutor(max_workers=2) as executor:
        assert executor.submit(plus_one, 0).result(30) == 1
        # A round trip longer than INLINE_WAIT_SECONDS on a loaded machine is read by the
        # loop thread instead: bounded tries until one was read inline.
        threads = _threads_that_receive(executor, monkeypatch, 500, stop=True)
        assert threading.get_ident() in threads
        # A task longer than the inline wait, and a timeout, still end as they should.
        assert executor.submit(nap_then_plus_one, 1).result(30) == 2
        with pytest.raises(TimeoutError):
            executor.submit(nap_then_plus_one, 1).result(timeout=0.001)


def test_with_inline_receive_off_the_loop_thread_reads_every_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _warm_executor_without("inline_receive") as executor:
        threads = _threads_that_receive(executor, monkeypatch, 50, stop=False)
    assert threads and threading.get_ident() not in threads


def test_switches_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAST_PATHS_OFF_ENV, "cut_through, direct_writes")
    assert FastPaths.from_env() == FastPaths(direct_writes=False, cut_through=False)
    monkeypatch.setenv(FAST_PATHS_OFF_ENV, "all")
    assert FastPaths.from_env() == FastPaths(*[False] * len(FastPaths.names()))
    monkeypatch.setenv(FAST_PATHS_OFF_ENV, "warp_drive")
    with pytest.raises(ConfigError, match="unknown fast paths warp_drive"):
        FastPaths.from_env()
