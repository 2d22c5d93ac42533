"""Re-running a project: the same one attaches, other code or arguments make a new version,
finished results are reused by content (never from other code), and the store stays
bounded. Against both back ends; every call of the function is logged to a file, so "no
task ran" is counted, not guessed."""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.errors import ConfigError
from ceranubis_jupyter.projects.commit import commit_project
from ceranubis_jupyter.projects.digest import function_digest
from ceranubis_jupyter.projects.project import Project, list_projects, remove_project
from ceranubis_jupyter.projects.store import Store
from ceranubis_jupyter.projects.stores import open_store

DEADLINE = 60

CODE = """
LOG = {log!r}

def work(x):
    with open(LOG, "a") as log:
        log.write(f"{{x}}\\n")
    return x * x + {offset}
"""


def code(log: Path, offset: int = 1) -> str:
    return CODE.format(log=str(log), offset=offset)


def calls(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def stored_results(store: Store) -> int:
    """Result BLOBs in the store: reuse must not add any."""
    return int(store._read("SELECT COUNT(*) FROM arguments WHERE result IS NOT NULL")[0][0])


def run(source: str, args: list[tuple[Any, ...]], store: Store, **options: Any) -> Project:
    project = commit_project(source, "work", args, store=store, **options)
    assert project.wait(DEADLINE), project.counts()
    return project


def forget(project: Project) -> int:
    """Drop this process's handle (as a kernel restart does); returns the project's id."""
    project_id = project.id
    del project
    gc.collect()
    return project_id


def test_the_same_project_again_attaches_and_runs_nothing(store_url: str, tmp_path: Path) -> None:
    store, log = open_store(store_url), tmp_path / "calls"
    args = [(x,) for x in range(30)]
    first_id = forget(run(code(log), args, store, name="sweep"))
    assert sorted(calls(log)) == list(range(30))
    again = commit_project(code(log), "work", args, store=store, name="sweep")
    assert (again.id, again.version, again.state, again.executor) == (first_id, 1, "done", None)
    assert again.wait(0) and len(calls(log)) == 30, "an attached finished project runs nothing"
    assert again.results() == [((x,), x * x + 1) for x in range(30)]
    assert [(s.name, s.version) for s in list_projects(store, every_version=True)] == [("sweep", 1)]


def test_the_same_unfinished_project_resumes_what_has_no_result(
    store_url: str, tmp_path: Path
) -> None:
    store, log = open_store(store_url), tmp_path / "calls"
    args = [(x,) for x in range(10)]
    first = run(code(log), args, store, name="part")
    store.reset_unfinished(first.id)  # as if 3 had been interrupted
    arg_ids = [row.id for row in store.arguments(first.id, ["done"])][:3]
    store._write("UPDATE arguments SET state = 'pending', result = NULL WHERE id = ?",
                 [(i,) for i in arg_ids])  # fmt: skip
    store.set_state(first.id, "stopped", release=True)
    forget(first)
    log.unlink()
    again = run(code(log), args, store, name="part", reuse=False)
    assert again.version == 1 and sorted(calls(log)) == [0, 1, 2]
    assert again.results() == [((x,), x * x + 1) for x in range(10)]


def test_changed_code_is_a_new_version_that_runs_every_task(store_url: str, tmp_path: Path) -> None:
    store, log = open_store(store_url), tmp_path / "calls"
    args = [(x,) for x in range(20)]
    run(code(log), args, store, name="sweep")
    log.unlink()
    second = run(code(log, offset=2), args, store, name="sweep")
    assert (second.version, second.changes, second.reused) == (2, "code changed", 0)
    assert sorted(calls(log)) == list(range(20)), "no result of other code is reused"
    assert second.results() == [((x,), x * x + 2) for x in range(20)]
    assert Project.load("sweep", store, version=1).results()[3] == ((3,), 10)
    assert Project.load("sweep", store).id == second.id
    summaries = list_projects(store, every_version=True)
    assert [(s.name, s.version, s.done) for s in summaries] == [("sweep", 1, 20), ("sweep", 2, 20)]
    assert [(s.name, s.version) for s in list_projects(store)] == [("sweep", 2)]


def test_added_arguments_run_alone_and_reuse_adds_no_copy(store_url: str, tmp_path: Path) -> None:
    store, log = open_store(store_url), tmp_path / "calls"
    run(code(log), [(x,) for x in range(100)], store, name="grow")
    log.unlink()
    blobs_before = stored_results(store)
    bigger = run(code(log), [(x,) for x in range(110)], store, name="grow")
    assert sorted(calls(log)) == list(range(100, 110))
    assert (bigger.version, bigger.changes, bigger.reused) == (2, "10 arguments added", 100)
    assert bigger.reused_arguments() == [(x,) for x in range(100)]
    assert stored_results(store) == blobs_before + 10, "reused results are referenced"
    assert bigger.results() == [((x,), x * x + 1) for x in range(110)]
    assert "100 reused" in repr(bigger._repr_html_())


def test_unnamed_projects_reuse_across_names(store_url: str, tmp_path: Path) -> None:
    store, log = open_store(store_url), tmp_path / "calls"
    run(code(log), [(x,) for x in range(5)], store)
    log.unlink()
    other = run(code(log), [(x,) for x in range(3, 8)], store)
    assert sorted(calls(log)) == [5, 6, 7] and other.reused == 2 and other.version == 1
    assert other.results() == [((x,), x * x + 1) for x in range(3, 8)]


def test_no_reuse_runs_everything_and_offers_nothing(store_url: str, tmp_path: Path) -> None:
    store, log = open_store(store_url), tmp_path / "calls"
    run(code(log), [(x,) for x in range(5)], store, reuse=False)
    assert len(calls(log)) == 5
    run(code(log), [(x,) for x in range(5)], store, reuse=False)
    assert len(calls(log)) == 10, "reuse=False takes no stored result"
    run(code(log), [(x,) for x in range(5)], store)
    assert len(calls(log)) == 15, "results of reuse=False projects are never offered"


def test_replace_removes_the_old_versions_and_keeps_what_the_new_one_reuses(
    store_url: str, tmp_path: Path
) -> None:
    store, log = open_store(store_url), tmp_path / "calls"
    run(code(log), [(x,) for x in range(10)], store, name="swap")
    run(code(log), [(x,) for x in range(12)], store, name="swap")
    log.unlink()
    third = run(code(log), [(x,) for x in range(14)], store, name="swap", replace=True)
    assert sorted(calls(log)) == [12, 13] and third.version == 3 and third.reused == 12
    assert [(s.name, s.version) for s in list_projects(store, every_version=True)] == [("swap", 3)]
    with pytest.raises(ConfigError, match="no project 'swap' version 1"):
        Project.load("swap", store, version=1)
    assert third.results() == [((x,), x * x + 1) for x in range(14)], "results handed down"
    assert stored_results(store) == 14
    assert remove_project("swap", store) == 1 and stored_results(store) == 0


def test_the_same_code_attaches_whatever_the_reuse_option(store_url: str, tmp_path: Path) -> None:
    store, log = open_store(store_url), tmp_path / "calls"
    first_id = forget(run(code(log), [(1,), (2,)], store, name="same", reuse=False))
    again = run(code(log), [(1,), (2,)], store, name="same")
    assert again.id == first_id and len(calls(log)) == 2


def test_a_changed_global_or_helper_changes_the_code_digest() -> None:
    namespace: dict[str, Any] = {}
    exec("K = 3\ndef helper(x):\n    return x + K\ndef f(x):\n    return helper(x)\n", namespace)
    before = function_digest(namespace["f"], "f")
    namespace["K"] = 4
    assert function_digest(namespace["f"], "f") != before
    namespace["K"] = 3
    assert function_digest(namespace["f"], "f") == before
    exec("def helper(x):\n    return x - K\n", namespace)
    assert function_digest(namespace["f"], "f") != before


def test_a_changed_local_module_changes_the_code_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "rerun_helper_mod.py"
    module.write_text("def helper(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("import rerun_helper_mod\ndef f(x):\n    return rerun_helper_mod.helper(x)\n", namespace)
    before = function_digest(namespace["f"], "f")
    module.write_text("def helper(x):\n    return x + 2\n")
    assert function_digest(namespace["f"], "f") != before


OLD_SQLITE_SCHEMA = """
CREATE TABLE projects (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    code TEXT NOT NULL, target TEXT NOT NULL, created REAL NOT NULL, hosts TEXT NOT NULL,
    state TEXT NOT NULL, client TEXT NOT NULL DEFAULT '', heartbeat REAL NOT NULL DEFAULT 0,
    function BLOB);
CREATE TABLE arguments (id INTEGER PRIMARY KEY AUTOINCREMENT,
    project INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, args BLOB NOT NULL, result BLOB,
    state TEXT NOT NULL DEFAULT 'pending', host TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, error TEXT, output TEXT);
CREATE INDEX arguments_project ON arguments (project);
INSERT INTO projects VALUES (7, 'old', 'def work(x): return x', 'work', 1.0, '[]', 'done',
    '', 0, NULL);
INSERT INTO arguments (project, position, args, result, state, host, attempts, started,
    finished) VALUES (7, 0, X'0180054b012e', X'0180054b022e', 'done', 'h', 1, 1.0, 2.0);
"""


def test_a_store_made_before_versions_is_upgraded_at_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SQLITE_SCHEMA)
    store = open_store(path)
    old = Project.load("old", store)
    assert (old.id, old.version, old.state, old.results()) == (7, 1, "done", [(1, 2)])
    log = tmp_path / "calls"
    second = run(code(log), [(1,)], store, name="old")
    assert second.version == 2 and len(calls(log)) == 1
    store.close()
    reopened = open_store(path)  # a second open finds the new shape and changes nothing
    assert [s.version for s in reopened.list_projects(every_version=True)] == [1, 2]
    assert remove_project("old", reopened, version=1) == 1
    assert [s.version for s in reopened.list_projects(every_version=True)] == [2]


def test_a_postgres_store_made_before_versions_is_upgraded_at_open(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as connection:
        for statement in OLD_SQLITE_SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                                                   "BIGSERIAL PRIMARY KEY").replace(
            "REAL", "DOUBLE PRECISION").replace("BLOB", "BYTEA").replace(
            "X'0180054b012e'", "'\\x0180054b012e'").replace(
            "X'0180054b022e'", "'\\x0180054b022e'").split(";"):  # fmt: skip
            if statement.strip():
                connection.execute(statement)
    store = open_store(pg_url)
    assert Project.load("old", store).results() == [(1, 2)]
    store.add_project("old", "", "work", [], None, [b"x"], "c", version=2)
    assert [s.version for s in store.list_projects(every_version=True)] == [1, 2]
    with pytest.raises(ConfigError, match=r"'old' \(version 2\) already exists"):
        store.add_project("old", "", "work", [], None, [b"x"], "c", version=2)


def test_an_executor_commit_attaches_too(store_url: str) -> None:
    store = open_store(store_url)
    import __main__

    source = "def cube(x):\n    return x ** 3\n"
    exec(source, __main__.__dict__)
    with CeranubisExecutor() as ex:
        first = ex.commit(__main__.cube, [(2,), (3,)], name="cubes", store=store)
        assert first.wait(DEADLINE)
        again = ex.commit(__main__.cube, [(2,), (3,)], name="cubes", store=store)
        assert again is first and again.results() == [((2,), 8), ((3,), 27)]
        more = ex.commit(__main__.cube, [(2,), (3,), (4,)], name="cubes", store=store)
        assert more.wait(DEADLINE) and (more.version, more.reused) == (2, 2)


def test_the_command_line_lists_shows_and_removes_versions(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ceranubis_jupyter.cli.main import main

    store, log = open_store(store_url), tmp_path / "calls"
    run(code(log), [(1,), (2,)], store, name="cli")
    run(code(log), [(1,), (2,), (3,)], store, name="cli")
    capsys.readouterr()
    assert main(["projects", "--store", store_url]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:2] == ["name", "version"] and len(listed) == 2, listed
    assert listed[1].split()[:2] == ["cli", "2"], listed
    assert main(["projects", "--all", "--store", store_url]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]] == ["1", "2"]
    assert main(["show", "cli", "--store", store_url]) == 0
    shown = capsys.readouterr().out
    assert "version  2 (1 argument added)" in shown and "reused   2 stored results" in shown
    assert main(["rm", "cli", "--version", "1", "--store", store_url]) == 0
    assert capsys.readouterr().out.strip() == "removed cli version 1"
    assert Project.load("cli", store).results() == [((x,), x * x + 1) for x in (1, 2, 3)]
    assert main(["rm", "cli", "--store", store_url]) == 0
    assert list_projects(store, every_version=True) == []
