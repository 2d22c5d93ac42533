"""``ceranubis run`` as a subprocess, on local cores and a real sshd, with a real store:
ranges and argument files, output files written whole, failures summed up, bad input
refused in one line."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ceranubis_jupyter.cli.main import build_parser
from ceranubis_jupyter.projects.project import Project
from tests.cli_support import FREE, Workdir, make_workdir
from tests.fixtures_ssh import OPENSSH_ALIAS, TEST_PYTHON, OpenSSHServer, SSHHome

BIG_RANGE = 1_000_000
BIG_CHUNK = 10_000
# Options that put the run on local cores and the loopback sshd (our interpreter there).
BOTH_HOSTS = ["--hosts", f"local,{OPENSSH_ALIAS}", "--python", TEST_PYTHON]


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    return make_workdir(tmp_path)


@pytest.fixture
def ssh_host(ssh_env: SSHHome, openssh_server: OpenSSHServer) -> str:
    """The loopback sshd's alias, with HOME pointed at the test home (the command inherits
    it, and finds the alias in its ssh config)."""
    return OPENSSH_ALIAS


def _others(directory: Path, *keep: str) -> list[str]:
    """Files left in ``directory`` besides the work files and ``keep``."""
    known = {"work.py", "projects.sqlite", "projects.sqlite-wal", "projects.sqlite-shm"}
    known |= {"config", "data", "__pycache__", *keep}
    return sorted(p.name for p in directory.iterdir() if p.name not in known)


def test_a_million_over_local_and_ssh_into_json(workdir: Workdir, ssh_host: str) -> None:
    run = workdir.run(
        "run", "work:square", "--range", str(BIG_RANGE), "--chunksize", str(BIG_CHUNK),
        *BOTH_HOSTS, "-o", "out.json", "--name", "big", "--quiet",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert f"big: done, {BIG_RANGE}/{BIG_RANGE} done; {BIG_RANGE} results written" in run.stdout
    rows = json.loads((workdir.path / "out.json").read_text())
    assert rows == [{"args": [i], "result": i * i} for i in range(BIG_RANGE)]
    assert _others(workdir.path, "out.json") == []  # no temporary file left
    assert Project.load("big", workdir.store).hosts == ["local", ssh_host]


ARG_FILES = {
    "tasks.json": "[[1, 2], [3, 4], [5], [6, 7]]",
    "tasks.jsonl": "[1, 2]\n\n[3, 4]\n[5]\n[6, 7]\n",
    "tasks.csv": "a,b\n1,2\n3,4\n5,0\n6,7\n",
}


@pytest.mark.parametrize("name", sorted(ARG_FILES))
@pytest.mark.parametrize("output", ["out.json", "out.jsonl", "out.csv"])
def test_arguments_from_json_jsonl_and_csv_on_local_and_ssh(
    workdir: Workdir, ssh_host: str, name: str, output: str
) -> None:
    (workdir.path / name).write_text(ARG_FILES[name])
    run = workdir.run("run", "work:add", "--args", name, *BOTH_HOSTS, "-o", output, "--quiet")
    assert run.returncode == 0, run.stderr
    sums = [3, 7, 5, 13]
    text = (workdir.path / output).read_text()
    if output.endswith(".csv"):
        rows = list(csv.DictReader(text.splitlines()))
        assert [int(row["result"]) for row in rows] == sums
        assert list(rows[0])[-1] == "result"
        return
    records = (
        json.loads(text) if output == "out.json" else [json.loads(x) for x in text.splitlines()]
    )
    assert [r["result"] for r in records] == sums
    if name == "tasks.csv":  # a header row: keyword arguments, numbers parsed
        assert records[0] == {"kwargs": {"a": 1, "b": 2}, "result": 3}
    else:
        assert records[2] == {"args": [5], "result": 5}


def test_csv_cells_are_typed(workdir: Workdir) -> None:
    (workdir.path / "mixed.csv").write_text('a,b\n1,2.5\nx,"3"\n-4,\n')
    run = workdir.run("run", "work:add", "--args", "mixed.csv", "-o", "out.json", "--quiet")
    assert run.returncode == 1  # "x" + 3 and -4 + "" fail
    records = json.loads((workdir.path / "out.json").read_text())
    assert records == [{"kwargs": {"a": 1, "b": 2.5}, "result": 3.5}]
    assert "2 of 3 arguments failed:" in run.stderr
    assert "TypeError" in run.stderr


def test_failures_give_a_summary_and_a_non_zero_exit(workdir: Workdir) -> None:
    run = workdir.run("run", "work:fails", "--range", "1", "11", "-o", "out.jsonl", "--quiet")
    assert run.returncode == 1
    assert "fails_1: failed, 7/10 done; 7 results written to out.jsonl" in run.stdout
    lines = run.stderr.splitlines()
    assert lines[0] == "3 of 10 arguments failed:"
    assert lines[1] == "  3x ValueError: 3 is bad"  # one kind: the numbers differ
    assert lines[-1] == "`ceranubis show fails_1` shows them in full"
    results = [
        json.loads(x)["args"][0] for x in (workdir.path / "out.jsonl").read_text().splitlines()
    ]
    assert results == [1, 2, 4, 5, 7, 8, 10]


def test_timeout_chunksize_and_retries_reach_the_tasks(workdir: Workdir) -> None:
    # held(x) waits a minute for a gate that never opens when x >= FREE: its timeout hits.
    run = workdir.run(
        "run", "work:held", "--range", str(FREE + 2), "--timeout", "10", "--retries", "0",
        "--chunksize", "1", "-o", "out.json", "--quiet", "--name", "timed",
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.splitlines()[:2] == [
        "2 of 8 arguments failed:",
        f"  2x TaskTimeout: task {FREE + 1} on local ran longer than its timeout of 10 s; "
        "its worker was killed and replaced",
    ]
    assert [r["result"] for r in json.loads((workdir.path / "out.json").read_text())] == [
        -x for x in range(FREE)
    ]


def test_a_file_target_travels_by_value_to_the_ssh_host(workdir: Workdir, ssh_host: str) -> None:
    sub = workdir.path / "elsewhere"
    sub.mkdir()
    (sub / "mine.py").write_text("def triple(x):\n    return 3 * x\n")
    run = workdir.run(
        "run", "elsewhere/mine.py:triple", "--range", "4", "--hosts", ssh_host,
        "--python", TEST_PYTHON, "-o", "out.json", "--quiet",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert [r["result"] for r in json.loads((workdir.path / "out.json").read_text())] == [
        0,
        3,
        6,
        9,
    ]


def test_files_travel_and_tasks_read_them_by_relative_path(workdir: Workdir, ssh_host: str) -> None:
    data = workdir.path / "data"
    data.mkdir(exist_ok=True)
    (data / "scale.txt").write_text("7\n")
    (workdir.path / "reader.py").write_text(
        "import os\n"
        "def scaled(x):\n"
        "    with open('data/scale.txt') as f:\n"
        "        return (x * int(f.read()), os.getcwd())\n"
    )
    run = workdir.run(
        "run", "reader.py:scaled", "--range", "3", "--hosts", ssh_host, "--python", TEST_PYTHON,
        "--files", "data", "-o", "out.json", "--quiet",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [r["result"] for r in json.loads((workdir.path / "out.json").read_text())]
    assert [value for value, _ in rows] == [0, 7, 14]
    assert all(Path(cwd) != workdir.path for _, cwd in rows)  # a copy on the host, not here


def test_an_installed_module_travels_by_reference(workdir: Workdir) -> None:
    run = workdir.run("run", "math:factorial", "--range", "5", "-o", "out.json", "--quiet")
    assert run.returncode == 0, run.stderr
    assert [r["result"] for r in json.loads((workdir.path / "out.json").read_text())] == [
        1, 1, 2, 6, 24,
    ]  # fmt: skip


def test_verbose_logs_each_ssh_step(workdir: Workdir, ssh_host: str) -> None:
    run = workdir.run("-v", "run", "work:square", "--range", "2", "--hosts", ssh_host,
                      "--python", TEST_PYTHON, "--quiet")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"[host={ssh_host}] connecting" in run.stderr
    assert f"[host={ssh_host}] connected" in run.stderr
    assert f"[host={ssh_host}] node started" in run.stderr


BAD_INPUT = [
    (["nosuchmodule:f", "--range", "3"], "no such module 'nosuchmodule'"),
    (["work:nofn", "--range", "3"], "work has no function 'nofn' (its functions: add, fails"),
    (["work:VALUE", "--range", "3"], "work:VALUE is not callable (it is a int)"),
    (["missing.py:f", "--range", "3"], "no such file 'missing.py'"),
    (["work:square", "--range", "5", "1"], "bad range: range(5, 1) is empty"),
    (["work:square", "--range", "1", "x"], "bad range: 'x' is not a whole number"),
    (["work:square", "--range", "0", "9", "0"], "bad range: STEP must not be 0"),
    (["work:square", "--range", "1", "2", "3", "4"], "bad range: give STOP, START STOP"),
    (["work:square", "--args", "bad.json"], "is not valid JSON: Expecting ',' delimiter"),
    (["work:square", "--args", "bad.jsonl"], "line 2 is not valid JSON"),
    (["work:square", "--args", "empty.json"], "holds no tasks"),
    (["work:square", "--args", "empty.csv"], "holds no tasks"),
    (["work:square", "--args", "ragged.csv"], "line 3 has 1 cells, the header 2"),
    (["work:square", "--args", "mixed.json"], "mixes objects (keyword arguments)"),
    (["work:square", "--args", "tasks.txt"], "unknown format '.txt'"),
    (["work:square", "--range", "3", "--hosts", "@nowhere"], "unknown host group @nowhere"),
    (["work:square"], "nothing to run: give --range"),
    (["work:square", "--range", "3", "--args", "empty.json"], "give --range or --args, not both"),
    (["nosuchjob", "--range", "3"], "no job 'nosuchjob'"),
    (["work:square", "--range", "3", "-o", "out.txt"], "unknown format '.txt'"),
    (["work:square", "--range", "3", "--chunksize", "0"], "--chunksize: must be at least 1"),
    (["work:square", "--range", "3", "--retries", "-1"], "--retries: must be at least 0"),
    (["work:square", "--range", "3", "--timeout", "0"], "--timeout: must be a positive"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_one_line_and_a_non_zero_exit(
    workdir: Workdir, argv: list[str], message: str
) -> None:
    files = {"bad.json": "[1, 2", "bad.jsonl": "[1]\n[2,\n", "empty.json": "[]",
             "empty.csv": "", "ragged.csv": "a,b\n1,2\n3\n", "mixed.json": '[{"a": 1}, [2]]',
             "tasks.txt": "1\n"}  # fmt: skip
    for name, text in files.items():
        (workdir.path / name).write_text(text)
    run = workdir.run("run", *argv)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("ceranubis run: "), run.stderr
    assert message in run.stderr
    assert not list(workdir.store.parent.glob("projects.sqlite"))  # nothing was committed


@pytest.mark.parametrize("where", ["missing-dir/out.json", "a-directory", "a-file/out.json"])
def test_an_unwritable_output_fails_before_running_and_leaves_nothing(
    workdir: Workdir, where: str
) -> None:
    (workdir.path / "a-directory").mkdir()
    (workdir.path / "a-file").write_text("x")
    run = workdir.run("run", "work:square", "--range", "3", "-o", where)
    assert run.returncode == 2
    assert run.stderr.startswith(f"ceranubis run: cannot write {where}: ")
    assert run.stderr.count("\n") == 1
    assert _others(workdir.path, "a-directory", "a-file") == []
    assert list((workdir.path / "a-directory").iterdir()) == []


def test_a_result_json_cannot_write_leaves_the_old_file(workdir: Workdir) -> None:
    out = workdir.path / "out.json"
    out.write_text("old\n")
    run = workdir.run("run", "work:huge", "--range", "4", "-o", "out.json", "--quiet")
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("ceranubis run: cannot write out.json: Exceeds the limit")
    assert run.stderr.count("\n") == 1
    assert out.read_text() == "old\n"
    assert _others(workdir.path, "out.json") == []


def _every_parser(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _every_parser(child)


def test_help_of_every_command_has_an_example(workdir: Workdir) -> None:
    parsers = list(_every_parser(build_parser()))
    assert len(parsers) > 20  # every command and action is walked
    missing = [p.prog for p in parsers if "example" not in p.format_help()]
    assert missing == []
    run = workdir.run("job", "new", "--help")  # and the command prints it
    assert run.returncode == 0 and "example" in run.stdout


def test_an_unknown_option_is_one_line(workdir: Workdir) -> None:
    run = workdir.run("run", "work:square", "--frobnicate")
    assert run.returncode == 2
    assert run.stderr == "ceranubis: unrecognized arguments: --frobnicate (see ceranubis --help)\n"


def test_a_bad_config_file_is_one_line_and_verbose_shows_the_traceback(
    workdir: Workdir,
) -> None:
    workdir.write_config("[hosts]\nbroken = 'not a list'\n")
    run = workdir.run("run", "work:square", "--range", "2", "--hosts", "@broken")
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "hosts.broken must be a list of strings" in run.stderr
    verbose = workdir.run("run", "work:square", "--range", "2", "--hosts", "@broken", "-v")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
