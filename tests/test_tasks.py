"""``ResultSlot``, a project task's stand-in for a future, against a real ``Future``."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest

from ceranubis_jupyter.cluster.tasks import ResultSlot
from ceranubis_jupyter.wire import protocol as p
from ceranubis_jupyter.wire.serialize import SCAN_LIMIT, dumps, loads

Step = Callable[[Any], Any]
STEPS: dict[str, Step] = {
    "run": lambda f: f.set_running_or_notify_cancel(),
    "cancel": lambda f: f.cancel(),
    "done": lambda f: f.done(),
    "result": lambda f: f.set_result(3),
}
# The sequences the scheduler can call in (cancel may come at any point).
SEQUENCES = [
    ["run", "result", "done", "cancel"],
    ["cancel", "run", "done"],
    ["cancel", "cancel", "done"],
    ["run", "cancel", "done", "result", "done"],
    ["done", "run", "done", "result", "done", "cancel", "done"],
]


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_slot_answers_as_a_future_does(sequence: list[str]) -> None:
    future: Future[Any] = Future()
    slot = ResultSlot()
    for step in sequence:
        assert STEPS[step](slot) == STEPS[step](future), (step, sequence)


def test_slot_keeps_the_result_bytes_only_when_they_decode_as_stored() -> None:
    small = dumps({"a": 1})
    slot = ResultSlot()
    slot.keep_bytes(p.Result(1, p.OK, small[0], small[1], ()))
    assert slot.blob is not None and loads(slot.blob[0], slot.blob[1:]) == {"a": 1}
    codec, payload, buffers = dumps(b"x" * (1 << 17))  # out-of-band: not one payload
    assert buffers
    slot = ResultSlot()
    slot.keep_bytes(p.Result(2, p.OK, codec, payload, tuple(b.raw() for b in buffers)))
    assert slot.blob is None
    slot.keep_bytes(p.Result(3, p.OK, p.PICKLE, b"\x80" * (SCAN_LIMIT + 1), ()))
    assert slot.blob is None  # not scanned for __main__ by the worker: re-encoded
