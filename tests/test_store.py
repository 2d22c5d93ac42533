"""The store interface, run against both back ends (a real SQLite file, a real server)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ceranubis_jupyter.errors import ConfigError, StoreError
from ceranubis_jupyter.projects.records import Outcome, client_alive, this_client
from ceranubis_jupyter.projects.store import DONE_VALUES, Store
from ceranubis_jupyter.projects.stores import default_store_path, open_store


def _new(store: Store, name: str = "p", count: int = 3) -> int:
    row, _ = store.add_project(
        name,
        "def f(x): return x",
        "f",
        ["local"],
        None,
        [bytes([i % 256]) for i in range(count)],
        this_client(),
    )
    return row.id


def test_create_find_and_list(store_url: str) -> None:
    store = open_store(store_url)
    project_id = _new(store, "sweep_1", 4)
    row = store.find_project("sweep_1")
    assert row is not None and row.id == project_id
    assert store.find_project(project_id) == store.find_project(str(project_id)) == row
    assert (row.target, row.hosts, row.state, row.effective_state) == (
        "f",
        ["local"],
        "running",
        "running",
    )
    assert store.find_project("nope") is None
    [summary] = store.list_projects()
    assert (summary.name, summary.done, summary.total, summary.state) == (
        "sweep_1",
        0,
        4,
        "running",
    )
    rows = store.arguments(project_id, ["pending"])
    assert [r.args for r in rows] == [bytes([i]) for i in range(4)]
    assert [r.position for r in rows] == [0, 1, 2, 3]


def test_outcome_recorded_exactly_once(store_url: str) -> None:
    store = open_store(store_url)
    project_id = _new(store)
    first = store.arguments(project_id, ["pending"])[0]
    done = Outcome(first.id, "done", b"one", host="h1", attempts=1, started=1.0, finished=2.0)
    again = Outcome(first.id, "done", b"two", host="h2", attempts=2, started=3.0, finished=4.0)
    assert store.record_outcomes([done]) == 1
    assert store.record_outcomes([again]) == 0
    [row] = store.arguments(project_id, ["done"])
    assert (row.result, row.host, row.attempts) == (b"one", "h1", 1)
    assert store.counts(project_id) == dict(pending=2, running=0, done=1, failed=0, cancelled=0)


def test_running_reset_and_cancel(store_url: str) -> None:
    store = open_store(store_url)
    project_id = _new(store, count=4)
    a, b, c, d = (r.id for r in store.arguments(project_id, ["pending"]))
    assert store.mark_running([(a, "h", 1.0), (b, "h", 1.0)]) == 2
    store.record_outcomes([Outcome(b, "failed", error="boom"), Outcome(c, "done", b"x")])
    assert store.mark_running([(c, "h", 2.0)]) == 0  # finished arguments stay finished
    assert store.counts(project_id)["running"] == 1
    assert store.reset_unfinished(project_id) == 3
    assert store.counts(project_id) == dict(pending=3, running=0, done=1, failed=0, cancelled=0)
    assert store.cancel_unfinished(project_id) == 3
    assert store.counts(project_id)["cancelled"] == 3
    assert store.arguments(project_id, ["done"])[0].id == c and d


def test_duplicate_name_writes_nothing(store_url: str) -> None:
    store = open_store(store_url)
    _new(store, "same", 2)
    with pytest.raises(ConfigError, match=r"a project named 'same' \(version 1\) already exists"):
        _new(store, "same", 5)
    [summary] = store.list_projects()
    assert summary.total == 2


def test_claim_is_compare_and_swap(store_url: str) -> None:
    store = open_store(store_url)
    project_id = _new(store)
    row = store.find_project(project_id)
    assert row is not None
    assert store.claim(row, "elsewhere:1")
    assert not store.claim(row, "another:2")  # the row we read is out of date
    assert store.heartbeat(project_id, "elsewhere:1") == "running"
    assert store.heartbeat(project_id, "another:2") is None
    store.set_state(project_id, "cancelled", release=True)
    row = store.find_project(project_id)
    assert row is not None and (row.state, row.client) == ("cancelled", "")


def test_remove_and_reopen(store_url: str) -> None:
    store = open_store(store_url)
    keep, gone = _new(store, "keep"), _new(store, "gone")
    store.remove_project(gone)
    store.close()
    reopened = open_store(store_url)
    assert [s.name for s in reopened.list_projects()] == ["keep"]
    assert reopened.arguments(gone, ["pending"]) == []
    assert len(reopened.arguments(keep, ["pending"])) == 3


def test_client_liveness() -> None:
    now = time.time()
    assert client_alive(this_client(), now)
    assert not client_alive(this_client(), now - 3600)  # no heartbeat for an hour
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = this_client().rpartition(":")[0]
    assert not client_alive(f"{host}:{dead.pid}", now)
    assert client_alive(f"other-machine:{dead.pid}", now)  # trusted until its heartbeat ages
    assert not client_alive("", now)


def test_sqlite_file_modes_and_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERANUBIS_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", os.fspath(tmp_path))
    path = default_store_path()
    assert path == tmp_path / "ceranubis" / "projects.sqlite"
    store = open_store()
    _new(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store._read("PRAGMA journal_mode")[0][0] == "wal"
    monkeypatch.setenv("CERANUBIS_STORE", os.fspath(tmp_path / "env.sqlite"))
    assert open_store().url == os.fspath(tmp_path / "env.sqlite")


def test_sqlite_corrupt_or_unusable(tmp_path: Path) -> None:
    garbage = os.path.join(tmp_path, "garbage.sqlite")
    with open(garbage, "wb") as file:
        file.write(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a SQLite database"):
        open_store(garbage)
    with pytest.raises(StoreError, match="is a directory"):
        open_store(os.fspath(tmp_path))
    with pytest.raises(StoreError, match="unknown store URL"):
        open_store("mysql://x/y")


def test_sqlite_foreign_schema(tmp_path: Path) -> None:
    import sqlite3

    path = os.path.join(tmp_path, "other.sqlite")
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE projects (id INTEGER, title TEXT)")
    with pytest.raises(StoreError, match="tables of another shape"):
        open_store(path)


def test_postgres_unreachable_is_quick_and_redacted() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach the project store") as caught:
        open_store(f"postgresql://alice:s3cret@127.0.0.1:{port}/db")
    assert "s3cret" not in str(caught.value) and "alice:***@" in str(caught.value)
    assert time.monotonic() - started < 10


def test_many_processes_open_a_new_sqlite_store_at_once(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "projects.sqlite"
    script = (
        "import sys; from ceranubis_jupyter.projects.stores import open_store; "
        "open_store(sys.argv[1]).list_projects()"
    )
    openers = [subprocess.Popen([sys.executable, "-c", script, str(path)]) for _ in range(6)]
    assert [opener.wait(timeout=60) for opener in openers] == [0] * 6
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_add_project_returns_the_ids_and_never_reuses_one(store_url: str) -> None:
    store = open_store(store_url)
    blobs = [bytes([i % 256]) for i in range(5000)]  # more than one insert statement
    first, first_ids = store.add_project("a", "", "f", [], None, blobs, this_client())
    rows = store.arguments(first.id, ["pending"])
    assert list(first_ids) == [r.id for r in rows] and [r.args for r in rows] == blobs
    store.remove_project(first.id)  # its ids stay used: a new project gets higher ones
    second, second_ids = store.add_project("b", "", "f", [], None, blobs[:3], this_client())
    assert min(second_ids) > max(first_ids)
    assert list(second_ids) == [r.id for r in store.arguments(second.id, ["pending"])]
    third = _new(store, "c", 2)  # and a plain insert after it does not collide either
    assert min(r.id for r in store.arguments(third, ["pending"])) > max(second_ids)


def test_a_failing_start_hook_leaves_nothing(store_url: str) -> None:
    store = open_store(store_url)
    seen: list[int] = []

    def refuse(row: object) -> None:
        seen.append(row.id)  # type: ignore[attr-defined]
        raise RuntimeError("the run could not start")

    with pytest.raises(RuntimeError, match="could not start"):
        store.add_project("p", "", "f", [], None, [b"x", b"y"], this_client(), refuse)
    assert len(seen) == 1 and store.find_project("p") is None and store.list_projects() == []


def test_batched_results_land_on_their_own_arguments(store_url: str) -> None:
    # 700 results: more than one statement, the last one padded; and a second write of
    # the same arguments changes nothing (each result is recorded once).
    store = open_store(store_url)
    row, ids = store.add_project("p", "", "f", [], None, [b"a"] * 1000, this_client())
    chosen = list(ids)[100:800]
    values: list[object] = []
    for k, arg_id in enumerate(chosen):
        values += (arg_id, f"result {k}".encode(), f"h{k % 3}", 1 + k % 2, k + 0.5, k + 1.5)
    assert store.record_outcomes([], values) == 700
    assert store.record_outcomes([], values) == 0
    rows = store.arguments(row.id, ["done"])
    assert [r.id for r in rows] == chosen
    assert [r.result for r in rows] == [f"result {k}".encode() for k in range(700)]
    assert all(type(r.result) is bytes for r in rows)
    assert [(r.host, r.attempts, r.started) for r in rows[:3]] == [
        ("h0", 1, 0.5),
        ("h1", 2, 1.5),
        ("h2", 1, 2.5),
    ]
    assert store.counts(row.id) == dict(pending=300, running=0, done=700, failed=0, cancelled=0)


def test_an_unknown_state_is_refused_and_changes_nothing(store_url: str) -> None:
    store = open_store(store_url)
    project_id = _new(store, count=2)
    first, second = (r.id for r in store.arguments(project_id, ["pending"]))
    ok = Outcome(first, "done", b"r", host="h", attempts=1, started=1.0, finished=2.0)
    with pytest.raises(StoreError, match=r"(?i)check"):
        store.record_outcomes([ok, Outcome(second, "finished")])
    assert store.counts(project_id) == dict(pending=2, running=0, done=0, failed=0, cancelled=0)


def _done_values(ids: list[int]) -> list[object]:
    """``record_outcomes(done=...)`` values: a result per argument."""
    values: list[object] = []
    for arg_id in ids:
        values += (arg_id, b"r", "h", 1, 1.0, 2.0)
    return values


def _rows_examined(plan: dict[str, Any]) -> float:
    """Rows every node of an ``EXPLAIN (ANALYZE, FORMAT JSON)`` plan looked at."""
    rows = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
    rows += plan.get("Rows Removed by Join Filter", 0)
    own = rows * plan.get("Actual Loops", 1)
    return own + sum(_rows_examined(child) for child in plan.get("Plans", []))


@pytest.mark.parametrize("plans", ["auto", "force_generic_plan"])
def test_postgres_flush_reads_only_its_batch_whatever_the_statistics(
    pg_url: str, plans: str
) -> None:
    # Statistics taken when every argument was done: the planner then expects no
    # unfinished one, which once made it scan the store whole, or loop over the batch
    # once per unfinished argument. A generic plan (what a prepared statement may settle
    # on) knows neither the batch's size nor its id range.
    import psycopg

    store = open_store(pg_url)
    old = _new(store, "old", 20_000)
    store.record_outcomes([], _done_values([r.id for r in store.arguments(old, ["pending"])]))
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("ANALYZE arguments")
    new = _new(store, "new", 2000)
    batch = [r.id for r in store.arguments(new, ["pending"])][:500]
    with _plans_explained(store, plans) as explained:
        assert store.record_outcomes([], _done_values(batch)) == len(batch)
    [update] = [e for e in explained if e["Plan"].get("Operation") == "Update"]
    # A few passes over the batch (scan, hash, join), not the store: 44 times the batch.
    assert _rows_examined(update["Plan"]) <= 8 * len(batch), update
    assert store.counts(new)["done"] == len(batch)


@contextlib.contextmanager
def _plans_explained(store: Any, plans: str) -> Iterator[list[dict[str, Any]]]:
    """The plans (``EXPLAIN ANALYZE`` as JSON, from ``auto_explain``) of the statements
    ``store`` runs in the block, each prepared at once and planned as ``plans`` says."""
    connection = store._connection
    explained: list[dict[str, Any]] = []

    def keep(notice: Any) -> None:
        text = notice.message_primary or ""
        if "plan:" in text:
            explained.append(json.loads(text.split("plan:", 1)[1]))

    for setting in (
        "LOAD 'auto_explain'",
        "SET auto_explain.log_min_duration = 0",
        "SET auto_explain.log_analyze = on",
        "SET auto_explain.log_format = json",
        "SET auto_explain.log_level = notice",
        f"SET plan_cache_mode = {plans}",
    ):
        connection.execute(setting)
    threshold, connection.prepare_threshold = connection.prepare_threshold, 0  # prepare at once
    connection.add_notice_handler(keep)
    try:
        yield explained
    finally:
        connection.remove_notice_handler(keep)
        connection.prepare_threshold = threshold
        connection.execute("RESET ALL")


def test_postgres_flush_that_cannot_be_packed_stores_nothing(pg_url: str) -> None:
    # A value of the wrong type fails while the arrays are packed, before the statement:
    # none of the flush's outcomes is stored, and the next flush stores them all.
    store = open_store(pg_url)
    project_id = _new(store, "p", 4)
    ids = [r.id for r in store.arguments(project_id, ["pending"])]
    bad = _done_values(ids)
    bad[DONE_VALUES + 3] = "not a count"
    with pytest.raises(Exception):  # noqa: B017 - what fails is the packing, not the store
        store.record_outcomes([], bad)
    assert store.counts(project_id)["done"] == 0
    assert store.record_outcomes([], _done_values(ids)) == 4
    assert store.counts(project_id)["done"] == 4


def test_postgres_flush_past_a_statements_bytes_is_split_and_lands_whole(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A query parameter has a 1 GB limit: a flush of big results is written by several
    # statements of one transaction (a limit of 100 bytes here: results of 40, 40, 250, 40
    # and 40 bytes make three statements), each result on its own argument, once; and a
    # value that fails in the last statement's packing leaves the first two unwritten.
    from ceranubis_jupyter.projects import pg_binary

    monkeypatch.setattr(pg_binary, "STATEMENT_BYTES", 100)
    sizes = [40, 40, 250, 40, 40]
    store = open_store(pg_url)
    project_id = _new(store, "big", len(sizes))
    ids = [r.id for r in store.arguments(project_id, ["pending"])]
    values: list[object] = []
    for k, (arg_id, size) in enumerate(zip(ids, sizes, strict=True)):
        values += (arg_id, bytes([k]) * size, f"h{k}", 1, 1.0, 2.0)
    parts = list(pg_binary.outcome_slices(values))
    assert [len(part) // DONE_VALUES for part in parts] == [2, 1, 2]
    bad = list(values)
    bad[-3] = "not a count"  # the last outcome's attempts
    with pytest.raises(Exception):  # noqa: B017 - what fails is the packing, not the store
        store.record_outcomes([], bad)
    assert store.counts(project_id)["done"] == 0
    with _plans_explained(store, "auto") as explained:
        assert store.record_outcomes([], values) == len(sizes)
    assert sum(e["Plan"].get("Operation") == "Update" for e in explained) == 3
    assert store.record_outcomes([], values) == 0
    rows = store.arguments(project_id, ["done"])
    assert [(bytes(r.result or b""), r.host) for r in rows] == [
        (bytes([k]) * size, f"h{k}") for k, size in enumerate(sizes)
    ]


def test_an_existing_store_file_is_tightened_with_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "loose" / "projects.sqlite"
    open_store(path).close()
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.touch()
        name.chmod(0o644)
    store = open_store(path)
    try:
        store.list_projects()
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
    finally:
        store.close()


def test_outcomes_of_every_kind_and_plain_results_are_written_in_one_call(store_url: str) -> None:
    store = open_store(store_url)
    row, ids = store.add_project("p", "", "f", [], None, [b"a"] * 4, this_client())
    printed, plain, failed, flat = ids
    timing: dict[str, Any] = dict(host="h", attempts=1, started=1.0, finished=2.0)
    outcomes = [
        Outcome(printed, "done", b"x", output="hi\n", **timing),
        Outcome(plain, "done", b"y", **timing),  # joins the batched results
        Outcome(failed, "failed", error="boom", **timing),
    ]
    assert store.record_outcomes(outcomes, [flat, b"z", "h", 2, 3.0, 4.0]) == 4
    rows = {r.id: r for r in store.arguments(row.id, ["done", "failed"])}
    assert (rows[printed].result, rows[printed].output) == (b"x", "hi\n")
    assert (rows[plain].result, rows[plain].output, rows[plain].finished) == (b"y", None, 2.0)
    assert (rows[failed].state, rows[failed].error, rows[failed].result) == ("failed", "boom", None)
    assert (rows[flat].result, rows[flat].attempts, rows[flat].started) == (b"z", 2, 3.0)


def test_many_arguments_of_any_bytes_are_stored_in_order(store_url: str) -> None:
    # More arguments than one piece of PostgreSQL's binary COPY stream, and blobs of every
    # byte value and of several sizes (up to a 64 KiB one).
    blobs = [bytes([i % 256]) * (1 + i % 7) for i in range(20_000)]
    blobs[12_345] = bytes(range(256)) * 256
    store = open_store(store_url)
    row, _ = store.add_project("many", "def f(x): return x", "f", ["local"], None, blobs,
                               this_client())  # fmt: skip
    stored = store.arguments(row.id, ["pending"])
    assert [(a.position, bytes(a.args)) for a in stored] == list(enumerate(blobs))
    assert [a.id for a in stored] == sorted(a.id for a in stored)
    store.close()


def test_finished_outcomes_keep_every_field(store_url: str) -> None:
    # The writer's flat run of values: any host name, a result of any bytes, an unknown
    # end time (PostgreSQL takes them as binary arrays).
    store = open_store(store_url)
    project_id = _new(store, "fields", 4)
    ids = [a.id for a in store.arguments(project_id, ["pending"])]
    done = [ids[0], bytes(range(256)), "hôst-é 1", 2, 1.5, 2.25,
            ids[2], b"\x00", "h2", 1, 3.0, None,
            ids[3], b"", "", 7, None, None]  # fmt: skip
    assert store.record_outcomes([], done) == 3
    rows = {a.id: a for a in store.arguments(project_id, ["done", "pending"])}
    first, last = rows[ids[0]], rows[ids[2]]
    assert (bytes(first.result or b""), first.host, first.attempts, first.started,
            first.finished) == (bytes(range(256)), "hôst-é 1", 2, 1.5, 2.25)  # fmt: skip
    assert (bytes(last.result or b""), last.host, last.started, last.finished) == (
        b"\x00", "h2", 3.0, None)  # fmt: skip
    empty = rows[ids[3]]  # an empty result, host and no times: still a result
    assert empty.result is not None and bytes(empty.result) == b""
    assert (empty.host, empty.attempts, empty.started, empty.finished) == ("", 7, None, None)
    assert rows[ids[1]].state == "pending"
    store.close()


def test_the_oldest_psycopg_is_read_from_its_version() -> None:
    from ceranubis_jupyter.projects.store_pg import PSYCOPG_AT_LEAST, release

    assert release("3.2.10") == (3, 2) >= PSYCOPG_AT_LEAST
    assert release("3.3.0.dev1") == (3, 3) >= PSYCOPG_AT_LEAST
    assert release("3.1.19") < PSYCOPG_AT_LEAST
