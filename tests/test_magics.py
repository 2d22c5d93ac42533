"""The magics in a real IPython shell (``InteractiveShell``) with real nodes."""

from __future__ import annotations

import linecache
import re
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from ceranubis_jupyter.jupyter import session
from ceranubis_jupyter.jupyter.magic_args import (
    CELL_USAGE,
    MAX_WORKERS,
    parse_cell_line,
    variable_name,
)
from ceranubis_jupyter.jupyter.widget import render_errors

SQUARE_CELL = "def square(x):\n    return x * x\n"


def test_load_registers_and_unload_removes_the_magics(ipshell: Any) -> None:
    magics = ipshell.magics_manager.magics
    assert "ceranubis" in magics["line"] and "ceranubis" in magics["cell"]
    ipshell.run_line_magic("unload_ext", "ceranubis_jupyter")
    assert "ceranubis" not in magics["line"] and "ceranubis" not in magics["cell"]
    ipshell.run_line_magic("load_ext", "ceranubis_jupyter")
    assert "ceranubis" in magics["cell"]


def test_parse_cell_line_splits_expression_and_options() -> None:
    fn, expression, options = parse_cell_line(
        "simulate over [(a, b) for a in range(3) for b in (1, 2)] --hosts h1,h2 "
        "--name sweep-7 --chunksize 4 --workers 2 --timeout 1.5 --no-wait --out p"
    )
    assert (fn, expression) == ("simulate", "[(a, b) for a in range(3) for b in (1, 2)]")
    assert (options.hosts, options.name, options.chunksize, options.workers) == (
        "h1,h2", "sweep-7", 4, 2)  # fmt: skip
    assert (options.timeout, options.no_wait, options.out) == (1.5, True, "p")
    assert variable_name("sweep-7") == "sweep_7"
    assert variable_name("7up") == "_7up"
    assert variable_name(None) == "_ceranubis"


@pytest.mark.parametrize(
    ("line", "cell"),
    [
        ("", SQUARE_CELL),
        ("square over", SQUARE_CELL),
        ("square range(3)", SQUARE_CELL),
        ("square over range(3) --chunksize 0", SQUARE_CELL),
        ("square over range(3) --timeout -1", SQUARE_CELL),
        ("square over range(3) --bogus", SQUARE_CELL),
        ("square over range(3) --out not-a-name", SQUARE_CELL),
        ("missing over range(3)", SQUARE_CELL),
        ("square over 42", SQUARE_CELL),
        ("square over undefined_name", SQUARE_CELL),
        ("not_callable over range(3)", "not_callable = 3\n"),
    ],
)
def test_cell_magic_misuse_raises_usage_error(ipshell: Any, line: str, cell: str) -> None:
    with pytest.raises(UsageError) as error:
        ipshell.run_cell_magic("ceranubis", line, cell)
    assert "usage" in str(error.value) or "ARGS" in str(error.value), error.value


@pytest.mark.parametrize(
    "line",
    [
        "",
        "frobnicate",
        "status",
        "results --hosts x",
        'status "unclosed',
        "hosts --workers 0",
        f"hosts --workers {MAX_WORKERS + 1}",
        "hosts --hosts ,",
        'resume some-project --hosts ""',
    ],
)
def test_line_magic_misuse_raises_usage_error(ipshell: Any, line: str) -> None:
    with pytest.raises(UsageError, match="usage"):
        ipshell.run_line_magic("ceranubis", line)


def test_cell_magic_runs_the_function_over_the_arguments(
    ipshell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ipshell.run_cell_magic(
        "ceranubis", "square over [(i,) for i in range(12)] --name sq-test --workers 2",
        SQUARE_CELL,
    )  # fmt: skip
    project = ipshell.user_ns["sq_test"]
    assert ipshell.user_ns["_ceranubis"] is project
    assert ipshell.user_ns["square"](3) == 9  # the cell ran in the user namespace
    assert project.state == "done"
    assert project.status() == (12, 12)
    assert sorted(value for _args, value in project.results()) == [i * i for i in range(12)]
    # the text fallback (no widget front end in a plain shell) ended on the final line
    lines = [line for line in capsys.readouterr().out.splitlines() if "sq-test" in line]
    assert lines and "12/12 done" in lines[-1] and "done:" in lines[-1], lines


# A task that waits (at most a minute) until the file ``gate`` exists.
HELD_CELL = (
    "import os, time\ndef held(gate):\n    deadline = time.monotonic() + 60\n"
    "    while not os.path.exists(gate) and time.monotonic() < deadline:\n"
    "        time.sleep(0.01)\n    return gate\n"
)


def test_no_wait_and_out_return_at_once(ipshell: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ipshell.user_ns["GATE"] = str(gate)
    ipshell.run_cell_magic("ceranubis", "held over [GATE] * 6 --no-wait --out p --workers 2",
                           HELD_CELL)  # fmt: skip
    project = ipshell.user_ns["p"]
    assert project.state == "running"  # the gate is shut: nothing can be done yet
    gate.touch()
    assert project.wait(timeout=60)
    assert project.status() == (6, 6)


def test_repeated_cells_reuse_the_executor(ipshell: Any) -> None:
    line = "square over range(4) --workers 2 --out first"
    ipshell.run_cell_magic("ceranubis", line, SQUARE_CELL)
    executor = session.POOL.get(None, 2)
    pids = sorted(info.pid for info in executor.hosts())
    ipshell.run_cell_magic("ceranubis", line.replace("first", "second"), SQUARE_CELL)
    assert session.POOL.get(None, 2) is executor
    assert sorted(info.pid for info in executor.hosts()) == pids
    assert ipshell.user_ns["second"].status() == (4, 4)


def test_remote_traceback_shows_the_cells_own_lines(ipshell: Any) -> None:
    cell = "def fragile(x):\n    if x == 2:\n        raise ValueError(f'bad {x}')\n    return x\n"
    ipshell.run_cell_magic("ceranubis", "fragile over range(4) --out fr", cell)
    project = ipshell.user_ns["fr"]
    assert project.status()[0] == 3
    ((args, text),) = project.errors()
    assert tuple(args) == (2,)
    # line 4 of the cell as the user sees it: line 1 is the %%ceranubis line
    match = re.search(r'File "([^"]+)", line 4, in fragile\n\s+raise ValueError', text)
    assert match, text
    assert linecache.getline(match.group(1), 1).startswith("%%ceranubis fragile over")
    assert "ValueError: bad 2" in text
    # the widget names the file as IPython does for cells
    shown = render_errors(((repr(args), text),))
    assert re.search(r"Cell In\[\d+\], line 4, in fragile", shown), shown


def test_a_failing_cell_commits_nothing(ipshell: Any) -> None:
    result = ipshell.run_cell("%%ceranubis square over range(3) --name never\n1 / 0\n")
    assert isinstance(result.error_in_exec, Exception)
    assert "never" not in ipshell.user_ns
    listing = ipshell.run_line_magic("ceranubis", "projects")
    assert "never" not in [row[0] for row in listing.rows]


def test_timeout_option_fails_only_the_slow_task(ipshell: Any) -> None:
    cell = "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n"
    ipshell.run_cell_magic("ceranubis", "nap over [0.1, 0.1, 30] --timeout 1 --out naps", cell)
    counts = ipshell.user_ns["naps"].counts()
    assert (counts["done"], counts["failed"]) == (2, 1)


def test_chunksize_option(ipshell: Any) -> None:
    ipshell.run_cell_magic("ceranubis", "square over range(10) --chunksize 4 --out ch",
                           SQUARE_CELL)  # fmt: skip
    assert sorted(v for _a, v in ipshell.user_ns["ch"].results()) == [i * i for i in range(10)]


def test_line_magics_hosts_projects_status_results_cancel(ipshell: Any) -> None:
    table = ipshell.run_line_magic("ceranubis", "hosts --workers 2")
    ((host, state, workers, python, *_rest),) = table.rows
    assert (host, state, workers) == ("local", "ready", 2)
    assert python.startswith("3.")
    assert "<table" in table._repr_html_()

    ipshell.run_cell_magic("ceranubis", "square over range(5) --name listed", SQUARE_CELL)
    names = [row[0] for row in ipshell.run_line_magic("ceranubis", "projects").rows]
    assert "listed" in names
    status = ipshell.run_line_magic("ceranubis", "status listed")
    assert status.status() == (5, 5)
    assert "listed" in status._repr_html_() and "done" in repr(status)
    results = ipshell.run_line_magic("ceranubis", "results listed")
    assert sorted(v for _a, v in results) == [0, 1, 4, 9, 16]

    ipshell.user_ns["GATE"] = "/nonexistent/never-opened"
    ipshell.run_cell_magic("ceranubis", "held over [GATE] * 20 --name to-cancel --no-wait "
                           "--workers 2", HELD_CELL)  # fmt: skip
    cancelled = ipshell.run_line_magic("ceranubis", "cancel to-cancel")
    assert cancelled.wait(timeout=30)
    assert cancelled.state == "cancelled"
    assert cancelled.counts()["running"] == 0 and cancelled.counts()["pending"] == 0
    with pytest.raises(UsageError):
        ipshell.run_line_magic("ceranubis", "status no-such-project")


def test_usage_line_is_in_the_error() -> None:
    with pytest.raises(UsageError) as error:
        parse_cell_line("nonsense")
    assert CELL_USAGE in str(error.value)


def test_store_option_keeps_the_project_in_that_store(ipshell: Any, tmp_path: Any) -> None:
    other = tmp_path / "other.sqlite"
    ipshell.run_cell_magic(
        "ceranubis", f"square over range(3) --name elsewhere --store {other}", SQUARE_CELL
    )
    assert "elsewhere" not in [r[0] for r in ipshell.run_line_magic("ceranubis", "projects").rows]
    rows = ipshell.run_line_magic("ceranubis", f"projects --store {other}").rows
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("elsewhere", 1, "done", "3/3")]
    assert other.exists()


def test_unusable_hosts_stop_the_project_with_an_explanation(
    ipshell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.jupyter_support import free_port

    host = f"nobody@127.0.0.1:{free_port()}"  # loopback, nothing listens: refused
    ipshell.run_cell_magic("ceranubis", f"square over range(3) --hosts {host} --out p",
                           SQUARE_CELL)  # fmt: skip
    project = ipshell.user_ns["p"]
    assert project.state == "stopped" and project.counts()["pending"] == 3
    err = capsys.readouterr().err
    assert "stopped with 3 arguments left" in err and host in err, err
    assert "%ceranubis resume p" not in err and f"resume {project.name}" in err
    # the broken executor is not reused: the next cell gets a fresh one
    ipshell.run_cell_magic("ceranubis", "square over range(3) --out q", SQUARE_CELL)
    assert ipshell.user_ns["q"].status() == (3, 3)


# A cell body that leaves a mark: a refused line must not run it.
MARKED_CELL = "ran_the_body = True\n" + SQUARE_CELL


@pytest.mark.parametrize(
    "options",
    [
        '--name "unclosed',
        "--timeout nan",
        "--timeout inf",
        "--timeout -inf",
        "--timeout -1",
        f"--workers {MAX_WORKERS + 1}",
        "--workers 100000",
        "--hosts ,",
        '--hosts ""',
        "--out __builtins__",
        "--out print",
        "--out class",
        "--name __builtins__",
        "--name len",
        "--name 'bad name!' --out ok",
        "--store {not_a_store}",
    ],
)
def test_bad_options_are_refused_before_the_cell_runs(
    ipshell: Any, tmp_path: Any, options: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = "square over range(3) " + options.format(not_a_store=blocker / "store.sqlite")
    with pytest.raises(UsageError, match="usage"):
        ipshell.run_cell_magic("ceranubis", line, MARKED_CELL)
    assert "ran_the_body" not in ipshell.user_ns
    assert session.POOL.latest() is None  # no node was started
    # the namespace still works: later cells run as usual
    assert ipshell.run_cell("x = len([1, 2])").success and ipshell.user_ns["x"] == 2


def test_options_inside_string_literals_and_brackets_belong_to_args() -> None:
    fn, expression, options = parse_cell_line(
        """f.g over ["a --name b", 'c --out d', g(x, --y)] --name real --out v"""
    )
    assert fn == "f.g"
    assert expression == """["a --name b", 'c --out d', g(x, --y)]"""
    assert (options.name, options.out) == ("real", "v")
    _fn, expression, options = parse_cell_line('f over """x --hosts y""" --hosts local')
    assert (expression, options.hosts) == ('"""x --hosts y"""', "local")


@pytest.mark.parametrize("line", ['f over ["a', "f over (1, 2 --name x", "f over 'abc --name x"])
def test_unclosed_quote_or_bracket_in_args_is_a_usage_error(line: str) -> None:
    with pytest.raises(UsageError, match="unclosed quote or bracket"):
        parse_cell_line(line)


def test_string_arguments_with_dashes_run(ipshell: Any) -> None:
    ipshell.run_cell_magic(
        "ceranubis", """echo over ["a --name b", "--workers 3"] --out echoed --workers 1""",
        "def echo(s):\n    return s.upper()\n",
    )  # fmt: skip
    assert [v for _a, v in ipshell.user_ns["echoed"].results()] == ["A --NAME B", "--WORKERS 3"]


def test_hosts_line_magic_reuses_the_cells_executor(ipshell: Any) -> None:
    ipshell.run_cell_magic("ceranubis", "square over range(3) --workers 1 --out one", SQUARE_CELL)
    executor = session.POOL.latest()
    assert executor is not None and executor.hosts()[0].workers == 1
    table = ipshell.run_line_magic("ceranubis", "hosts")
    assert session.POOL.latest() is executor  # no second executor was started
    ((_host, state, workers, *_rest),) = table.rows
    assert (state, workers) == ("ready", 1)


def test_resume_with_new_hosts_records_them(ipshell: Any) -> None:
    from ceranubis_jupyter.projects.project import Project
    from tests.jupyter_support import free_port

    host = f"nobody@127.0.0.1:{free_port()}"  # loopback, nothing listens: refused
    ipshell.run_cell_magic(
        "ceranubis", f"square over range(3) --hosts {host} --name moved", SQUARE_CELL
    )
    assert Project.load("moved").state == "stopped"
    ipshell.run_line_magic("ceranubis", "resume moved --hosts local --workers 1")
    project = Project.load("moved")
    assert project.state == "done" and project.status() == (3, 3)
    assert project.hosts == ["local"]
