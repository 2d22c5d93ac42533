"""Projects in one process, against both store back ends: commit, read, cancel, resume."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import __main__
from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.errors import ConfigError, StoreError
from ceranubis_jupyter.projects import rows, window
from ceranubis_jupyter.projects import run as project_run
from ceranubis_jupyter.projects.code import function_from_code
from ceranubis_jupyter.projects.commit import commit_function, commit_project
from ceranubis_jupyter.projects.project import Project, list_projects, remove_project
from ceranubis_jupyter.projects.rows import decode, encode, encode_many
from ceranubis_jupyter.projects.store import Store
from ceranubis_jupyter.projects.store_sqlite import SQLiteStore
from ceranubis_jupyter.projects.stores import open_store

CODE = """
import time
from typing import Any

class Point:
    def __init__(self, x):
        self.x = x

def work(x, delay=0.0):
    time.sleep(delay)
    print("working on", x)
    if x == 7:
        raise ValueError(f"seven is bad")
    return x * x + 1
"""

# Seconds any project in these tests may take (each is a few seconds at most).
DEADLINE = 60


def expected(x: int) -> int:
    return x * x + 1


def wait_for(predicate: object, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_commit_project_records_every_result(store_url: str) -> None:
    args = [(x,) for x in range(20) if x != 7]
    project = commit_project(CODE, "work", args, store=store_url, name="squares")
    assert project.wait(DEADLINE)
    assert project.state == "done"
    assert project.status() == (19, 19)
    assert project.results() == [((x,), expected(x)) for (x,) in args]
    assert project.errors() == []
    again = Project.load("squares", open_store(store_url))  # as another process sees it
    assert again is not project
    assert (again.state, again.status(), again.target) == ("done", (19, 19), "work")
    assert again.results() == project.results()
    assert again.hosts == [] and again.code == CODE
    assert len(again.recent(3)) == 3 and set(again.recent(3)) <= set(project.results())
    assert {host for host, _ in again.outputs(50)} == {"local"}
    assert any(line.startswith("working on") for _, line in again.outputs(5))
    assert again.elapsed() > 0


def test_failures_keep_the_remote_traceback(store_url: str) -> None:
    project = commit_project(CODE, "work", [(6,), (7,), (8,)], store=store_url)
    assert project.wait(DEADLINE)
    assert project.state == "failed"
    assert project.status() == (2, 3)
    [(args, text)] = project.errors()
    assert args == (7,)
    assert "ValueError: seven is bad" in text and 'raise ValueError(f"seven is bad")' in text
    assert project.results() == [((6,), 37), ((8,), 65)]
    loaded = Project.load(project.name, open_store(store_url))
    assert loaded.recent_errors(1) == [((7,), text)]


def test_chunks_and_listeners(store_url: str) -> None:
    calls: list[int] = []
    with CeranubisExecutor() as executor:
        project = commit_function(
            executor,
            lambda a, b: a * b,
            [(a, 3) for a in range(10)],
            store=store_url,
            chunksize=4,
        )
        project.add_listener(lambda p: calls.append(p.status()[0]))
        assert project.wait(DEADLINE)
        assert project.results() == [((a, 3), a * 3) for a in range(10)]
        assert project.state == "done"
        assert list(executor.map(abs, [-1])) == [1]  # not ours: still running
    assert len(calls) >= 1 and max(calls) <= 10


def test_executor_commit_stores_the_function(store_url: str) -> None:
    offset = 100

    def shifted(x: int) -> int:
        return x + offset

    with CeranubisExecutor() as executor:
        project = executor.commit(shifted, [(1,), (2,)], name="shift", store=store_url)
        assert project.executor is executor or project.wait(DEADLINE)
        assert project.wait(DEADLINE)
    assert project.results() == [((1,), 101), ((2,), 102)]
    assert project.executor is None
    assert "def shifted" in project.code and project.hosts == ["local"]


# Any constant: the advisory lock a held insert waits on in PostgreSQL.
_HOLD_KEY = 4242


def _slow_argument_insert(
    store: Store, url: str, action: str, release: threading.Event | None = None
) -> None:
    """Make the store's insert of a new project's arguments, at position 50, wait until
    ``release`` is set (``action='hold'``) or fail (``'fail'``): a real trigger in the real
    database."""
    if isinstance(store, SQLiteStore):
        # SQLite cannot wait in SQL: the connection that inserts gets a function that does.
        store._connection.create_function("hold", 0, lambda: bool(release and release.wait(60)))
        body = "SELECT hold();" if action == "hold" else "SELECT RAISE(ABORT, 'no room');"
        store._connection.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON arguments WHEN NEW.position = 50 "
            f"BEGIN {body} END"
        )
        return
    import psycopg

    body = (
        f"PERFORM pg_advisory_xact_lock({_HOLD_KEY});"
        if action == "hold"
        else ("RAISE EXCEPTION 'no room';")
    )
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            f"CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} "
            "RETURN NEW; END $$"
        )
        admin.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON arguments FOR EACH ROW "
            "WHEN (NEW.position = 50) EXECUTE FUNCTION slow()"
        )
    if release is not None:
        threading.Thread(target=_hold_lock_until, args=(url, release), daemon=True).start()


def _hold_lock_until(url: str, release: threading.Event) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute(f"SELECT pg_advisory_lock({_HOLD_KEY})")
        _lock_taken.set()
        release.wait(60)
        holder.execute(f"SELECT pg_advisory_unlock({_HOLD_KEY})")


_lock_taken = threading.Event()


def test_tasks_that_finish_while_the_insert_is_open_are_recorded_once(store_url: str) -> None:
    # The run submits as soon as the project's row is in; results that arrive before the
    # arguments' insert commits wait for it (written earlier, PostgreSQL would drop them).
    # The insert is held open until a task of the project has finished.
    store = open_store(store_url)
    release = threading.Event()
    _lock_taken.clear()
    _slow_argument_insert(store, store_url, "hold", release)
    assert isinstance(store, SQLiteStore) or _lock_taken.wait(30)
    args = [(x,) for x in range(200)]
    with CeranubisExecutor() as executor:
        list(executor.map(abs, range(10)))  # nodes up
        executor.scheduler.add_listener(lambda record: release.set())
        project = commit_function(executor, expected, args, store=store, name="early")
        committed = time.time()
        assert release.is_set()  # the insert was held until a task had finished
        assert project.wait(DEADLINE)
    assert project.state == "done"
    assert project.results() == [((x,), expected(x)) for x in range(200)]
    rows = open_store(store_url).arguments(project.id, ["done"])
    assert len(rows) == 200 and all(row.attempts == 1 for row in rows)
    assert min(row.finished or committed for row in rows) < committed  # ran meanwhile


def test_a_failed_insert_stores_nothing_and_stops_its_tasks(store_url: str) -> None:
    store = open_store(store_url)
    _slow_argument_insert(store, store_url, "fail")
    args = [(x, 0.05) for x in range(200) if x != 7]  # ~5 s of work on two workers
    with CeranubisExecutor() as executor:
        list(executor.map(abs, range(10)))
        with pytest.raises(StoreError, match="no room"):
            commit_project(CODE, "work", args, store=store)
        work = function_from_code(CODE, "work", "work")
        with pytest.raises(StoreError, match="no room"):
            commit_function(executor, work, args, store=store, name="never")
        wait_for(lambda: executor.scheduler.outstanding == 0)
        ran = sum(info.done for info in executor.hosts()) - 10  # past the map's 10
        assert ran < len(args), f"{ran} of {len(args)} tasks ran: they were not stopped"
        assert list(executor.map(abs, [-1, -2])) == [1, 2]  # the executor still works
    assert list_projects(store) == [] and list_projects(store_url) == []


def test_a_project_bigger_than_its_submit_window_records_everything_once(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(window, "SUBMIT_AHEAD", 40)  # many refills, each on a wake
    in_flight: list[int] = []
    args = [(x,) for x in range(1500)]
    with CeranubisExecutor() as executor:
        project = commit_function(executor, expected, args, store=store_url, name="window")
        run = project._live.run  # type: ignore[union-attr]
        project.add_listener(lambda p: in_flight.append(run.in_flight))
        assert project.wait(DEADLINE)
    assert project.state == "done" and project.results() == [(a, expected(a[0])) for a in args]
    rows = open_store(store_url).arguments(project.id, ["done"])
    assert len(rows) == 1500 and all(row.attempts == 1 for row in rows)
    assert in_flight and max(in_flight) <= 40


def test_long_tasks_show_as_running_in_the_store(store_url: str) -> None:
    # Only tasks still in flight after RUNNING_MARK_SECONDS are marked; these are (they
    # run until cancelled).
    args = [(x, float(DEADLINE)) for x in range(4)]
    project = commit_project(CODE, "work", args, store=store_url)
    reader = open_store(store_url)
    wait_for(lambda: reader.counts(project.id)["running"] >= 1)
    rows = reader.arguments(project.id, ["running"])
    assert all(row.host == "local" and row.started for row in rows)
    project.cancel()


class _PauseLog(threading.Event):
    """The run's wake event, keeping the pause of every cycle (its ``wait`` timeouts)."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(timeout)
        return super().wait(timeout)


def _wait_for_gate(gate: str) -> str:
    wait_for(lambda: Path(gate).exists())
    return gate


def test_a_run_waiting_on_long_tasks_wakes_at_the_flush_period(
    store_url: str, tmp_path: Path
) -> None:
    # Writes come every 10 ms only while results flow in the tail; a run whose tasks
    # return nothing for a while must not spin at that rate: once the one result has been
    # written, every cycle pauses for the flush period (counted per cycle, not per second).
    gate = tmp_path / "gate"
    with CeranubisExecutor(max_workers=2) as executor:
        args = [(str(tmp_path),), (str(gate),)]  # open already; shut until the end
        project = commit_function(executor, _wait_for_gate, args, store=store_url)
        assert project._live is not None
        run = project._live.run
        run._wake = pauses = _PauseLog()
        wait_for(lambda: project.status()[0] == 1)
        seen = len(pauses.pauses)
        wait_for(lambda: len(pauses.pauses) >= seen + 5)  # it does wake, and goes on
        assert not project.wait(0) and project.status()[0] == 1, "the long task still runs"
        quiet = pauses.pauses[seen + 1 : seen + 5]  # past the write that took the result
        assert quiet == [project_run.FLUSH_SECONDS] * 4, pauses.pauses[seen:]
        gate.touch()
        assert project.wait(DEADLINE) and project.status() == (2, 2)


def test_cancel_stops_and_keeps_finished(store_url: str) -> None:
    args = [(x, 0.2) for x in range(40) if x != 7]
    project = commit_project(CODE, "work", args, store=store_url)
    wait_for(lambda: project.status()[0] >= 4)
    started = time.monotonic()
    project.cancel()
    assert time.monotonic() - started < 10
    assert project.state == "cancelled"
    counts = project.counts()
    assert counts["pending"] == counts["running"] == counts["failed"] == 0
    assert counts["done"] >= 4 and counts["cancelled"] > 0
    assert counts["done"] + counts["cancelled"] == len(args)
    results = project.results()
    assert len(results) == counts["done"]
    assert [a for a, _ in results] == [a for a in args if a in dict(results)]  # in order
    assert all(result == expected(x) for (x, _), result in results)
    assert project.wait(1)


def test_cancel_from_another_process_view(store_url: str) -> None:
    project = commit_project(CODE, "work", [(x, 0.2) for x in range(30)], store=store_url)
    wait_for(lambda: project.status()[0] >= 2)
    elsewhere = Project.load(project.name, open_store(store_url))
    assert elsewhere is not project and elsewhere.state == "running"
    elsewhere.cancel()
    assert project.wait(DEADLINE)  # the live run notices within a heartbeat
    assert project.state == "cancelled" and elsewhere.state == "cancelled"
    assert project.counts()["pending"] == 0
    finished = commit_project(CODE, "work", [(1,)], store=store_url)
    assert finished.wait(DEADLINE)
    Project.load(finished.name, open_store(store_url)).cancel()
    assert finished.state == "done"  # nothing left to cancel: it stays done


def test_stopped_then_resumed_in_process(store_url: str) -> None:
    executor = CeranubisExecutor()
    args = [(x, 0.05) for x in range(30) if x != 7]
    project = commit_function(executor, _slow_square, args, store=store_url, name="halted")
    wait_for(lambda: project.status()[0] >= 5)
    executor.shutdown(wait=True, stop_running=True)
    assert project.wait(DEADLINE) is False
    assert project.state == "stopped"
    done_before = dict(project.results())
    assert 5 <= len(done_before) < len(args)
    project.resume()
    assert project.wait(DEADLINE)
    assert project.state == "done"
    results = project.results()
    assert [a for a, _ in results] == args
    assert all(r == x * x for (x, _), r in results)
    assert all(dict(results)[a] == r for a, r in done_before.items())


def _slow_square(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def test_default_names_are_unique_identifiers(store_url: str) -> None:
    first = commit_project(CODE, "work", [(1,)], store=store_url)
    second = commit_project(CODE, "work", [(2,)], store=store_url)
    assert (first.name, second.name) == ("work_1", "work_2")
    assert first.wait(DEADLINE) and second.wait(DEADLINE)
    summaries = list_projects(store_url)
    assert [(s.name, s.state, s.done, s.total) for s in summaries] == [
        ("work_1", "done", 1, 1),
        ("work_2", "done", 1, 1),
    ]
    remove_project("work_1", store_url)
    assert [s.name for s in list_projects(store_url)] == ["work_2"]
    with pytest.raises(ConfigError, match="no project 'work_1'"):
        Project.load("work_1", store_url)


@pytest.mark.parametrize(
    ("code", "target", "args", "message"),
    [
        (CODE, "work", 5, "args must be a list of tuples"),
        (CODE, "work", [1, 2], r"item 0 is 1 \(int\); write \(1,\)"),
        (CODE, "work", [], "args is empty"),
        ("def work(x:\n  return x", "work", [(1,)], "does not compile"),
        (CODE, "nothing", [(1,)], "defines no function named 'nothing'; it defines: work"),
        ("raise RuntimeError('at import')", "work", [(1,)], "running the project code raised"),
        (
            CODE,
            "work",
            [(1,), (2, (i for i in range(3)))],
            "argument 2 of call 2 .* cannot be pickled",
        ),
    ],
)
def test_bad_input_fails_before_anything_is_stored(
    tmp_path: Path, code: str, target: str, args: object, message: str
) -> None:
    store = str(tmp_path / "projects.sqlite")
    with pytest.raises(ConfigError, match=message):
        commit_project(code, target, args, store=store)  # type: ignore[arg-type]
    assert list_projects(store) == []


def test_a_name_again_with_other_arguments_is_a_new_version_and_bad_names_fail(
    tmp_path: Path,
) -> None:
    store = str(tmp_path / "projects.sqlite")
    project = commit_project(CODE, "work", [(1,)], name="same", store=store)
    assert project.wait(DEADLINE)
    second = commit_project(CODE, "work", [(2,), (3,)], name="same", store=store)
    assert (second.version, second.changes) == (2, "2 arguments added, 1 removed")
    assert second.wait(DEADLINE)
    for bad in ("", "12", "has space", "x" * 101):
        with pytest.raises(ConfigError, match="bad project name"):
            commit_project(CODE, "work", [(1,)], name=bad, store=store)
    assert [(s.name, s.version, s.total) for s in list_projects(store)] == [("same", 2, 2)]


def test_unusable_stores_fail_before_running(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError, match="not a SQLite database"):
        commit_project(CODE, "work", [(1,)], store=str(corrupt))
    with pytest.raises(StoreError, match="cannot reach the project store"):
        commit_project(CODE, "work", [(1,)], store="postgresql://nobody@127.0.0.1:1/none")


def test_resume_refuses_a_live_project(store_url: str) -> None:
    project = commit_project(CODE, "work", [(x, 0.1) for x in range(20)], store=store_url)
    elsewhere = Project.load(project.name, open_store(store_url))
    with pytest.raises(StoreError, match="is still running"):
        elsewhere.resume()
    with pytest.raises(ConfigError, match="already running in this process"):
        project.resume()
    project.cancel()


CRASH_ONCE = """
import os

def fragile(x, marker):
    if x == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker dies; the scheduler re-runs the task
    return x * 10
"""


def test_rerun_after_a_worker_crash_is_recorded_once(store_url: str, tmp_path: Path) -> None:
    marker = str(tmp_path / "crashed")
    args = [(x, marker) for x in range(6)]
    project = commit_project(CRASH_ONCE, "fragile", args, store=store_url)
    assert project.wait(DEADLINE)
    assert project.state == "done"
    assert project.results() == [((x, marker), x * 10) for x in range(6)]
    rows = open_store(store_url).arguments(project.id, ["done"])
    assert len(rows) == 6
    assert {row.position: row.attempts for row in rows}[3] == 2  # crashed once, then ran
    assert all(row.attempts == 1 for row in rows if row.position != 3)
    assert all(row.host == "local" and row.finished and row.started for row in rows)
    assert all(row.finished >= row.started for row in rows)  # type: ignore[operator]


def test_postgres_connections_dropped_mid_run(pg_url: str) -> None:
    import psycopg

    args = [(x, 0.05) for x in range(40) if x != 7]
    project = commit_project(CODE, "work", args, store=pg_url)
    wait_for(lambda: project.status()[0] >= 5)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed is not None and killed[0] >= 2  # the reader's and the writer's connections
    assert project.wait(DEADLINE)
    assert project.state == "done"
    assert project.results() == [(a, expected(a[0])) for a in args]


def test_a_client_that_lost_its_claim_stops_without_touching_the_rest(store_url: str) -> None:
    args = [(x, 0.1) for x in range(30) if x != 7]
    project = commit_project(CODE, "work", args, store=store_url)
    wait_for(lambda: project.status()[0] >= 2)
    other = open_store(store_url)
    row = other.find_project(project.id)
    assert row is not None and other.claim(row, "another-machine:4242")  # resumed elsewhere
    assert project.wait(DEADLINE) is False  # it stopped within a heartbeat, work left
    counts = other.counts(project.id)
    assert counts["cancelled"] == counts["failed"] == 0  # the new client's work untouched
    assert counts["done"] >= 2 and counts["pending"] + counts["running"] > 0
    row = other.find_project(project.id)
    assert row is not None and (row.client, row.state) == ("another-machine:4242", "running")
    assert all(result == expected(x) for (x, _), result in project.results())


def test_a_task_timeout_fails_only_its_argument(store_url: str) -> None:
    with CeranubisExecutor() as executor:
        project = commit_function(
            executor, _slow_square, [(1, 0.0), (2, 30.0), (3, 0.0)], store=store_url, timeout=1
        )
        assert project.wait(DEADLINE)
    assert project.state == "failed"
    assert project.results() == [((1, 0.0), 1), ((3, 0.0), 9)]
    [(args, text)] = project.errors()
    assert args == (2, 30.0) and "TaskTimeout" in text and "timeout of 1 s" in text


def _shaped(kind: str) -> Any:
    """A result of each form a worker can send: plain pickle, an out-of-band buffer, dill
    (pickle refuses a lambda), with printed output, ``None``."""
    if kind == "int":
        return 41
    if kind == "big-bytes":
        return bytes(range(256)) * 512  # 128 KiB: travels out-of-band
    if kind == "closure":
        offset = 5
        return lambda x: x + offset
    if kind == "printed":
        print("said something")
        return [1, 2]
    return None


def test_results_of_every_form_read_back_equal_in_another_process(store_url: str) -> None:
    kinds = [("int",), ("big-bytes",), ("closure",), ("printed",), ("none",)]
    with CeranubisExecutor() as executor:
        project = commit_function(executor, _shaped, kinds, store=store_url)
        assert project.wait(DEADLINE) and project.state == "done"
    for view in (project, Project.load(project.name, open_store(store_url))):
        values = {args[0]: value for args, value in view.results()}
        assert values["int"] == 41 and values["big-bytes"] == bytes(range(256)) * 512
        assert values["closure"](1) == 6 and values["printed"] == [1, 2]
        assert values["none"] is None and len(values) == 5


def _square_slowly(x: int) -> int:
    time.sleep(0.001)
    return x * x


def test_map_and_projects_of_the_same_function_share_an_executor(store_url: str) -> None:
    # Every task of the function reaches each run's listener: each keeps to its own.
    args = [(x,) for x in range(600)]
    with CeranubisExecutor() as executor:
        first = commit_function(executor, _square_slowly, args, store=store_url)
        second = commit_function(executor, _square_slowly, args[:300], store=store_url)
        assert list(executor.map(_square_slowly, range(600))) == [x * x for x in range(600)]
        assert first.wait(DEADLINE) and second.wait(DEADLINE)
    assert first.results() == [((x,), x * x) for (x,) in args]
    assert second.results() == [((x,), x * x) for (x,) in args[:300]]
    assert (first.state, second.state) == ("done", "done")


def _apply(fn: Any, x: int) -> Any:
    return fn(x)


def test_arguments_that_need_dill_travel_as_stored(store_url: str) -> None:
    # pickle refuses a lambda: the stored argument is dill, and the task carries it as is.
    offset = 10
    args = [(lambda x: x + offset, 1), (abs, -2)]
    with CeranubisExecutor() as executor:
        project = commit_function(executor, _apply, args, store=store_url)
        assert project.wait(DEADLINE) and project.state == "done"
    assert [result for _, result in project.results()] == [11, 2]
    stored = Project.load(project.name, open_store(store_url)).results()
    assert stored[0][0][0](5) == 15 and stored[1] == ((abs, -2), 2)


def test_a_big_argument_travels_as_stored(store_url: str) -> None:
    # A view of the stored bytes, not a copy, goes out in a frame of its own (> 1 MiB).
    big = bytes(range(256)) * 12_000  # 3 MB
    with CeranubisExecutor() as executor:
        project = commit_function(executor, len, [(big,), (b"ab",)], store=store_url)
        assert project.wait(DEADLINE) and project.state == "done"
    assert [result for _, result in project.results()] == [len(big), 2]


def test_small_arguments_travel_as_untracked_copies_big_ones_as_views(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A view costs two objects the garbage collector tracks per task in flight; a copy of
    # a small pickle costs none. A big argument is still never doubled in memory.
    payloads: list[Any] = []
    prepared = CeranubisExecutor.prepared_task

    def spy(self: CeranubisExecutor, *args: Any) -> Any:
        payloads.append(args[-1])
        return prepared(self, *args)

    monkeypatch.setattr(CeranubisExecutor, "prepared_task", spy)
    big = b"x" * (rows.VIEW_ARGUMENT_BYTES + 1)
    with CeranubisExecutor() as executor:
        project = commit_function(executor, len, [(b"ab",), (big,)], store=store_url)
        assert project.wait(DEADLINE) and project.state == "done"
    small_payload, big_payload = payloads
    assert isinstance(small_payload, bytes) and not gc.is_tracked(small_payload)
    assert isinstance(big_payload, memoryview) and big_payload.nbytes > len(big)
    assert project.results() == [((b"ab",), 2), ((big,), len(big))]


def test_encode_many_stores_arguments_as_encode_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # The batch path must choose dill exactly where encode does: for what pickle refuses
    # (a lambda), and for what it would only refer to by name in __main__.
    class Local:
        def __init__(self, x: int) -> None:
            self.x = x

    Local.__module__, Local.__qualname__ = "__main__", "Local"
    monkeypatch.setattr(__main__, "Local", Local, raising=False)
    plain = [(i, "s", b"b") for i in range(300)]
    with_main = [*plain[:5], (Local(3),), *plain[5:]]
    with_lambda = [(lambda x: x,), *plain]
    for items in (plain, with_main, with_lambda):
        blobs = encode_many(items)
        assert blobs == [encode(item) for item in items]
    assert len({blob[0] for blob in encode_many(with_main)}) == 2  # pickle and dill codecs
    assert decode(encode_many(with_main)[5])[0].x == 3
    with pytest.raises(TypeError, match="generator"):
        encode_many([(1,), ((i for i in range(3)),)])


def test_executor_commit_takes_chunksize_and_timeout(store_url: str) -> None:
    with CeranubisExecutor() as executor:
        before = executor.scheduler.next_task_id()
        chunked = executor.commit(abs, [(-x,) for x in range(6)], chunksize=3, store=store_url)
        assert chunked.wait(DEADLINE)
        assert executor.scheduler.next_task_id() - before == 3  # two tasks of three, then ours
        timed = executor.commit(
            _slow_square, [(1, 0.0), (2, 30.0)], timeout=1, name="timed", store=store_url
        )
        assert timed.wait(DEADLINE)
    assert chunked.results() == [((-x,), x) for x in range(6)]
    assert timed.results() == [((1, 0.0), 1)]
    [(args, text)] = timed.errors()
    assert args == (2, 30.0) and "TaskTimeout" in text
