"""Each fast path turned off: the executor contract holds with the same results.

The contract tests of ``test_executor_contract.py`` and ``test_map_buffersize.py`` that
take only an executor run here again, once per switch (and with all of them off), on the
embedded default. The switches
themselves are shown to take effect in ``test_relay.py`` (cut-through) and below
(submits from the submitting thread).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

import tests.test_executor_contract as contract
import tests.test_map_buffersize as buffered
from ceranubis_jupyter import CeranubisExecutor, ConfigError
from ceranubis_jupyter.cluster.fastpaths import FAST_PATHS_OFF_ENV, FastPaths
from tests.remote import by_value

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


@by_value
def plus_one(x: int) -> int:
    return x + 1


def test_with_inline_submit_off_the_loop_thread_sends_every_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    off = FastPaths.without("inline_submit")
    with CeranubisExecutor(max_workers=2, fast_paths=off) as executor:
        assert executor.submit(plus_one, 0).result(30) == 1
        inline: list[bool] = []
        scheduler = executor.scheduler
        original = scheduler._take_incoming_directly
        monkeypatch.setattr(
            scheduler, "_take_incoming_directly", lambda: inline.append(original()) or True
        )
        assert [executor.submit(plus_one, i).result(30) for i in range(20)] == list(range(1, 21))
    assert inline == []


def test_switches_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAST_PATHS_OFF_ENV, "cut_through, direct_writes")
    assert FastPaths.from_env() == FastPaths(direct_writes=False, cut_through=False)
    monkeypatch.setenv(FAST_PATHS_OFF_ENV, "all")
    assert FastPaths.from_env() == FastPaths(False, False, False, False, False, False)
    monkeypatch.setenv(FAST_PATHS_OFF_ENV, "warp_drive")
    with pytest.raises(ConfigError, match="unknown fast paths warp_drive"):
        FastPaths.from_env()
