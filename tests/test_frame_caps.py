"""The data-frame cap as a user sets it: executor argument, environment, and a real node
that takes it from ``Configure`` and splits its result batches to fit."""

from __future__ import annotations

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.framecap import MAX_DATA_FRAME_ENV, MIN_DATA_FRAME, data_frame_cap
from ceranubis_jupyter.errors import ConfigError
from ceranubis_jupyter.wire import protocol as p
from tests.remote import by_value

# Seconds for a batch of tasks on the local node.
TIMEOUT = 60.0
# A cap small enough that a batch of a few arguments or results exceeds it.
SMALL_CAP = MIN_DATA_FRAME
# Bytes per argument and per result: three of them are over SMALL_CAP, one is under.
ITEM = 300 << 10


@by_value
def echo_bigger(data: bytes) -> bytes:
    return data + b"!"


def test_the_default_cap_is_the_wire_default_and_the_environment_overrides_it() -> None:
    assert data_frame_cap(None, {}) == p.MAX_DATA_FRAME
    assert data_frame_cap(None, {MAX_DATA_FRAME_ENV: "8G"}) == 8 << 30
    assert data_frame_cap(None, {MAX_DATA_FRAME_ENV: "64 MiB"}) == 64 << 20
    assert data_frame_cap(None, {MAX_DATA_FRAME_ENV: "2000000"}) == 2_000_000
    assert data_frame_cap(1 << 30, {MAX_DATA_FRAME_ENV: "8G"}) == 1 << 30


@pytest.mark.parametrize("value", [0, 1024, -1, True, 2.5])
def test_a_cap_too_small_or_not_bytes_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="max_data_frame"):
        CeranubisExecutor(max_workers=1, max_data_frame=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["lots", "8X", "1.5G", "-3"])
def test_a_bad_environment_value_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=MAX_DATA_FRAME_ENV):
        data_frame_cap(None, {MAX_DATA_FRAME_ENV: text})


def test_batches_over_a_small_cap_still_travel_both_ways() -> None:
    """Tasks and results of 300 KiB under a 1 MiB cap: the client splits its Tasks
    batches, the node (told the cap by Configure) its Results batches."""
    items = [bytes([n]) * ITEM for n in range(12)]
    with CeranubisExecutor(max_workers=2, max_data_frame=SMALL_CAP) as executor:
        assert executor.scheduler.max_data_frame == SMALL_CAP
        futures = [executor.submit(echo_bigger, item) for item in items]
        assert [f.result(timeout=TIMEOUT) for f in futures] == [item + b"!" for item in items]
        assert {info.state for info in executor.hosts()} == {"ready"}


def test_a_task_too_large_for_one_frame_fails_at_submit_with_its_own_error() -> None:
    from ceranubis_jupyter import CeranubisExecutor, TaskTooLarge

    with CeranubisExecutor(max_workers=1, max_data_frame=1 << 20) as executor:
        future = executor.submit(len, bytes(2 << 20))
        with pytest.raises(TaskTooLarge, match="more than one frame may carry") as caught:
            future.result(timeout=30)
        assert isinstance(caught.value, ValueError) and caught.value.task_id
        assert executor.submit(len, bytes(100 << 10)).result(timeout=30) == 100 << 10
        with pytest.raises(TaskTooLarge):
            list(executor.map(len, [b"small", bytes(2 << 20)], timeout=30))
