"""Stored projects whose arguments are another project's results (``ResultOf``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ceranubis_jupyter import CeranubisExecutor, ConfigError, ResultOf
from ceranubis_jupyter.projects.project import Project
from ceranubis_jupyter.projects.stores import open_store
from tests.remote import by_value
from tests.waiting import gated, wait_for

COUNT = 6


@by_value
def double(x: int) -> int:
    if x < 0:
        raise ValueError(f"{x} is negative")
    return 2 * x


@by_value
def plus(value: int, extra: int) -> int:
    return value + extra


def test_a_second_stage_starts_as_the_first_stage_finishes(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store.sqlite"))
    gate = tmp_path / "gate"
    with CeranubisExecutor(max_workers=2) as ex:
        args = [(str(tmp_path), x) for x in range(1, COUNT)] + [(str(gate), 10)]
        first = ex.commit(gated, args, name="first", store=store)
        second = ex.commit(plus, [(ref, 100) for ref in first.result_refs()],
                           name="second", store=store)  # fmt: skip
        # The second stage runs while the first one's last, gated argument still runs (not
        # all of it: the node may queue one of its tasks behind the gated one).
        wait_for(lambda: second.status()[0] >= 1, 60, "second stage follows")
        assert first.state == "running" and second.state == "running"
        gate.touch()
        assert first.wait(60) and second.wait(60)
    results = dict(second.results())
    assert sorted(results.values()) == sorted([110] + [x + 100 for x in range(1, COUNT)])
    assert all(isinstance(args[0], ResultOf) for args in results)  # stored as refs


def test_a_failed_result_fails_the_argument_that_refers_to_it(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store.sqlite"))
    with CeranubisExecutor(max_workers=2) as ex:
        first = ex.commit(double, [(1,), (-1,), (3,)], name="first", store=store)
        second = ex.commit(plus, [(r, 0) for r in first.result_refs()], name="second",
                           store=store)  # fmt: skip
        first.wait(60)
        second.wait(60)
    assert sorted(value for _, value in second.results()) == [2, 6]
    [(args, error)] = second.errors()
    assert args == (ResultOf(first.id, 1), 0)
    assert "DependencyError" in error and "failed" in error and "negative" in error


def test_refs_need_chunksize_1(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store.sqlite"))
    with CeranubisExecutor(max_workers=1) as ex:
        first = ex.commit(double, [(1,)], name="first", store=store)
        with pytest.raises(ConfigError, match="chunksize=1"):
            ex.commit(plus, [(r, 0) for r in first.result_refs()], chunksize=2, store=store)
        first.wait(60)


# Commits both stages (the first waits on a gate), says so, then waits to be killed.
PIPELINE = """
import sys, time
from ceranubis_jupyter.projects.commit import commit_project
store, gate = sys.argv[1], sys.argv[2]
code = '''
import os, time
def slow(x, gate):
    while not os.path.exists(gate):
        time.sleep(0.01)
    return x * 3
def plus(value, extra):
    return value + extra
'''
first = commit_project(code, "slow", [(x, gate) for x in range(6)], name="first", store=store)
refs = [(ref, 1) for ref in first.result_refs()]
second = commit_project(code, "plus", refs, name="second", store=store)
print("committed", flush=True)
time.sleep(600)
"""


def test_a_pipeline_resumes_after_its_client_is_gone(store_url: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    client = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PIPELINE), store_url, str(gate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        assert line.startswith("committed"), client.stderr.read() if client.stderr else ""
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(30)
    store = open_store(store_url)
    second = Project.load("second", store)
    first = Project.load("first", store)
    gate.touch()
    wait_for(lambda: first.state != "running" and second.state != "running", 60,
             "the killed client's projects are seen as stopped")  # fmt: skip
    second.resume()  # before the first stage: its arguments wait for those results
    first.resume()
    assert first.wait(90) and second.wait(90)
    assert sorted(value for _, value in second.results()) == [x * 3 + 1 for x in range(6)]
