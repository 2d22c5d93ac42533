"""A project's run holds a bounded part of its arguments and results in memory."""

from __future__ import annotations

import hashlib
import pickle
import struct
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.projects import digest, rows, window
from ceranubis_jupyter.projects import run as project_run
from ceranubis_jupyter.projects.commit import commit_function
from ceranubis_jupyter.projects.digest import arguments_digest
from ceranubis_jupyter.projects.rows import decode, encode, encode_many
from ceranubis_jupyter.projects.stores import open_store

# Seconds any project in these tests may take (each is a few seconds at most).
DEADLINE = 60


def triple(x: int) -> int:
    return 3 * x


def test_the_digest_fed_in_steps_is_the_digest_of_the_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blobs = [pickle.dumps((i, "x" * (i % 5))) for i in range(10)]
    whole = hashlib.sha256(struct.pack("<10Q", *map(len, blobs)) + b"".join(blobs))
    monkeypatch.setattr(digest, "_DIGEST_STEP", 3)
    assert arguments_digest(blobs) == whole.hexdigest()


def test_encode_many_in_steps_finds_the_one_that_needs_dill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rows, "_SCAN_STEP", 2)
    items: list[tuple[Any, ...]] = [(1,), (2,), (3,), ("__main__",), (5,)]
    blobs = encode_many(items)
    assert blobs == [encode(item) for item in items]
    assert [decode(blob) for blob in blobs] == items


def test_a_chunked_run_keeps_bounded_tasks_and_results_and_no_stored_bytes(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(window, "SUBMIT_AHEAD_ARGUMENTS", 20)  # 4 tasks of 5
    monkeypatch.setattr(project_run, "UNCOLLECTED_ARGUMENTS", 20)  # and 4 more finished
    monkeypatch.setattr(rows, "COLLECT_ARGUMENTS", 10)  # 2 tasks per write
    held: list[int] = []
    args = [(x,) for x in range(503)]
    with CeranubisExecutor() as executor:
        project = commit_function(
            executor, triple, args, store=store_url, name="bounded", chunksize=5
        )
        run = project._live.run  # type: ignore[union-attr]
        assert len(run.plan.blobs) == 0  # chunks pickle their tuples: no stored bytes kept
        project.add_listener(lambda p: held.append(run._submitted - run.outcomes.resolved_tasks()))
        assert project.wait(DEADLINE)
    assert project.state == "done" and project.results() == [(a, triple(a[0])) for a in args]
    stored = open_store(store_url).arguments(project.id, ["done"])
    assert len(stored) == 503 and all(row.attempts == 1 for row in stored)
    assert held and max(held) <= 8
