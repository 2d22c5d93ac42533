"""Batches of a quick function's arguments in queue mode: each argument keeps its outcome.

The batch itself (``wire.batches.EachOutcome``) runs here in-process on real pickles; the
daemon's use of it runs in real ``ceranubis node`` processes on a real store (both back
ends), once with batches and once with ``CERANUBIS_FAST_PATHS_OFF=queue_batches``: each
argument ends the same (value, or the same exception), whether it ran in a batch, alone
after its batch's worker crashed, or again after a batch ran out of time.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from ceranubis_jupyter import commit_project
from ceranubis_jupyter.cluster.fastpaths import FAST_PATHS_OFF_ENV
from ceranubis_jupyter.daemon.batches import BATCH_BELOW_SECONDS, MAX_BATCH, Pace
from ceranubis_jupyter.projects.rows import decode, encode
from ceranubis_jupyter.wire import protocol as p
from ceranubis_jupyter.wire.batches import NOT_RUN, EachOutcome
from ceranubis_jupyter.wire.serialize import RemoteException, loads
from tests.queue_helpers import PROJECT_SECONDS, Daemons

# The project's code: ``batched`` says whether the call came from a batch (the frame that
# called it is the batch's), so a test can tell that batches happened.
CODE = """
import os, sys, time

def batched():
    return sys._getframe(2).f_code.co_name == "_run_one"

def work(x):
    if x == CRASH:
        os._exit(3)
    if x % 97 == 5:
        raise ValueError(f"bad {x}")
    if x % 101 == 7:
        print("hello", x)
    if SLOW_FROM <= x < SLOW_FROM + 20:
        time.sleep(0.03)
    return x * x, batched()
"""
# Arguments of the daemon test; the one whose call kills its worker; the first of twenty
# slow ones (a batch that reaches them runs out of time, and its rest runs again).
COUNT = 900
CRASH = 650
SLOW_FROM = 400


def _outcomes(blobs: list[Any], budget: float = 60.0) -> list[Any]:
    return EachOutcome(_square_or_fail)([encode(args) for args in blobs], budget)


def _square_or_fail(x: int) -> int:
    if x < 0:
        raise KeyError(x)
    if x == 3:
        print("three")
    if x == 4:
        return (i for i in range(x))  # type: ignore[return-value]  # will not pickle
    return x * x


def test_a_batch_gives_each_argument_its_own_outcome() -> None:
    outcomes = _outcomes([(2,), (-1,), (3,), (4,), (5,)])
    statuses = [outcome[0] for outcome in outcomes]
    assert statuses == [p.OK, p.RAISED, p.OK, p.UNPICKLABLE, p.OK]
    assert decode(outcomes[0][1]) == 4 and decode(outcomes[4][1]) == 25
    raised = loads(outcomes[1][1][0], outcomes[1][1][1:])
    assert isinstance(raised, RemoteException) and isinstance(raised.exception, KeyError)
    assert raised.frames[-1][2] == "_square_or_fail"  # the batch's own frame is left out
    assert outcomes[2][2] == "three\n" and outcomes[0][2] is None
    assert b"the result could not be pickled" in outcomes[3][1]
    assert all(o[3] <= o[4] for o in outcomes)


def test_arguments_that_do_not_unpickle_fail_alone() -> None:
    blobs = [encode((1,)), b"\x00not a pickle", encode((2,))]
    outcomes = EachOutcome(_square_or_fail)(blobs, 60.0)
    assert [o[0] for o in outcomes] == [p.OK, p.UNPICKLABLE, p.OK]
    assert b"could not be unpickled on the node" in outcomes[1][1]


def test_a_batch_out_of_time_leaves_the_rest_not_run() -> None:
    outcomes = _outcomes([(1,), (2,), (3,)], budget=-1.0)
    assert [o[0] for o in outcomes] == [p.OK, NOT_RUN, NOT_RUN]  # one runs at least


def test_the_batch_travels_by_its_function() -> None:
    batch = pickle.loads(pickle.dumps(EachOutcome(abs)))
    assert batch.fn is abs


def test_a_function_is_batched_only_once_measured_quick() -> None:
    pace = Pace()
    assert pace.batch_size(1, 1000, 2) == 1  # not measured yet
    pace.note(1, BATCH_BELOW_SECONDS * 2)
    assert pace.batch_size(1, 1000, 2) == 1  # slow
    pace.note(2, 1e-6)
    assert pace.batch_size(2, 100_000, 2) == MAX_BATCH
    assert pace.batch_size(2, 100, 4) == 25  # each worker gets some
    assert pace.batch_size(2, 1, 4) == 1


def _run_project(url: str, daemons: Daemons, name: str) -> dict[int, Any]:
    daemon = daemons.start(url, name)
    daemons.wait_serving(url, name)
    code = CODE.replace("CRASH", str(CRASH)).replace("SLOW_FROM", str(SLOW_FROM))
    project = commit_project(code, "work", [(i,) for i in range(COUNT)], store=url,
                             queue=True, name=name, reuse=False)  # fmt: skip
    try:
        assert project.wait(PROJECT_SECONDS), daemons.logs()
    finally:
        daemons.stop(daemon)
    rows = project.store.arguments(project.id, ["done", "failed", "pending", "running"])
    return {row.position: row for row in rows}


def _ended_as(row: Any) -> tuple[str, Any, str]:
    """What an argument ended as, without what differs between runs (ids, pids)."""
    if row.state == "done":
        return row.state, decode(row.result)[0], row.output or ""
    last = (row.error or "").strip().splitlines()[-1]
    return row.state, "died" in last or last, row.output or ""


def test_the_daemon_s_batches_end_each_argument_as_tasks_of_their_own(
    store_url: str, daemons: Daemons, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batched = _run_project(store_url, daemons, "batched")
    monkeypatch.setenv(FAST_PATHS_OFF_ENV, "queue_batches")
    alone = _run_project(store_url, daemons, "alone")
    assert sorted(batched) == sorted(alone) == list(range(COUNT))
    assert [_ended_as(batched[i]) for i in range(COUNT)] == [
        _ended_as(alone[i]) for i in range(COUNT)
    ]
    crashed = batched[CRASH]
    assert crashed.state == "failed" and "died" in crashed.error, crashed.error
    assert "ValueError: bad 5" in batched[5].error
    assert batched[7].output == "hello 7\n"
    in_batches = [i for i, row in batched.items() if row.state == "done" and decode(row.result)[1]]
    # (A batch with the crashing argument runs again a task per argument.)
    assert len(in_batches) > COUNT // 10, "the quick function's arguments ran in batches"
    assert not any(decode(row.result)[1] for row in alone.values() if row.state == "done")
