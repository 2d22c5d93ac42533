"""The ``ceranubis`` command on bad input and hostile surroundings: a reader that closes the
pipe early, missing directories, a full disk, values that cannot be unpickled here,
terminal escapes in remote errors, a project that fails again, help for every option."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ceranubis_jupyter.cli import main
from ceranubis_jupyter.cli.output import BROKEN_PIPE_STATUS, printable
from ceranubis_jupyter.projects.commit import commit_project

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 60
# More than a pipe holds (64 KiB on Linux, at most 1 MiB): the writer must meet the
# closed pipe, whatever the timing.
BIG_OUTPUT_CODE = """
def big(i):
    return "x" * 40_000
def boom(i):
    raise ValueError("y" * 400_000)
"""


def _env(*extra: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [ROOT, *extra]))}


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "ceranubis_jupyter.cli", *argv]


def _project(store: Path, name: str, code: str, target: str, count: int) -> None:
    project = commit_project(code, target, [(i,) for i in range(count)], name=name, store=store)
    assert project.wait(DEADLINE)


@pytest.mark.parametrize(
    ("command", "target", "count"), [("results", "big", 60), ("show", "boom", 5)]
)
def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(
    tmp_path: Path, command: str, target: str, count: int
) -> None:
    store = tmp_path / "projects.sqlite"
    _project(store, "piped", BIG_OUTPUT_CODE, target, count)
    with (tmp_path / "stderr").open("wb") as err:
        cli = subprocess.Popen(
            _cli(command, "piped", "--store", str(store)),
            stdout=subprocess.PIPE, stderr=err, env=_env(),
        )  # fmt: skip
        assert cli.stdout is not None
        head = subprocess.run(
            ["head", "-n", "1"], stdin=cli.stdout, capture_output=True, timeout=DEADLINE
        )
        cli.stdout.close()  # head is now the only reader, and it is gone
        status = cli.wait(timeout=DEADLINE)
    assert head.returncode == 0 and head.stdout
    assert (tmp_path / "stderr").read_bytes() == b""
    assert status == BROKEN_PIPE_STATUS


def test_results_into_a_missing_directory_or_onto_a_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "projects.sqlite"
    _project(store, "few", "def one(i):\n    return i\n", "one", 3)
    capsys.readouterr()
    missing = tmp_path / "no-such-dir" / "out.json"
    assert main(["results", "few", "-o", str(missing), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err == f"ceranubis results: cannot write {missing}: No such file or directory\n"
    assert main(["results", "few", "-o", str(tmp_path), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err == f"ceranubis results: cannot write {tmp_path}: Is a directory\n"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("projects.")] == []


def test_results_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    store = tmp_path / "projects.sqlite"
    _project(store, "few", "def one(i):\n    return i\n", "one", 3)
    out = tmp_path / "out" / "results.json"
    out.parent.mkdir()
    out.write_text("old\n")
    out.chmod(0o644)
    assert main(["results", "few", "-o", str(out), "--store", str(store)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert '"result": 2' in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["results.json"]


# Runs the command with a file size limit (as a full disk would stop it) and no SIGXFSZ,
# so a write past the limit fails with EFBIG.
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from ceranubis_jupyter.cli import main
sys.exit(main(sys.argv[2:]))
"""
# JSON of a list of None takes ~9 bytes an item, its pickle in the store 1 byte.
NONES_CODE = "def nones(i):\n    return [None] * 20_000\n"
FILE_LIMIT = 1 << 20


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path: Path) -> None:
    store = tmp_path / "projects.sqlite"
    _project(store, "nones", NONES_CODE, "nones", 20)
    assert store.stat().st_size < FILE_LIMIT // 2
    out = tmp_path / "out" / "results.json"
    out.parent.mkdir()
    out.write_text("old\n")
    argv = ["results", "nones", "-o", str(out), "--store", str(store)]
    run = subprocess.run(
        [sys.executable, "-c", LIMITED, str(FILE_LIMIT), *argv],
        capture_output=True, text=True, env=_env(), timeout=DEADLINE,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr == f"ceranubis results: cannot write {out}: File too large\n"
    assert out.read_text() == "old\n"
    assert [p.name for p in out.parent.iterdir()] == ["results.json"]
    # without the limit the same command writes it all
    assert main(argv) == 0 and out.stat().st_size > FILE_LIMIT


def test_a_result_that_cannot_be_unpickled_here_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "modules"
    elsewhere.mkdir()
    (elsewhere / "ceranubis_only_elsewhere.py").write_text(
        "class Thing:\n    def __init__(self, i):\n        self.i = i\n"
    )
    store = tmp_path / "projects.sqlite"
    code = (
        "import ceranubis_only_elsewhere\n"
        "def make(i):\n    return ceranubis_only_elsewhere.Thing(i)\n"
    )
    producer = (
        "import sys\nfrom ceranubis_jupyter.projects.commit import commit_project\n"
        f"p = commit_project({code!r}, 'make', [(1,), (2,)], name='things', store=sys.argv[1])\n"
        "assert p.wait(60) and p.status() == (2, 2), p.errors()\n"
    )
    subprocess.run(
        [sys.executable, "-c", producer, str(store)], env=_env(elsewhere), check=True,
        timeout=DEADLINE,
    )  # fmt: skip
    assert main(["results", "things", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ceranubis results: a stored value")
    assert "No module named 'ceranubis_only_elsewhere'" in err


ESCAPES_CODE = """
def paint(i):
    raise ValueError("\\x1b[31mred\\x1b[0m\\x07\\rover\\tand\\x9b2J")
"""


def test_show_escapes_terminal_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "projects.sqlite"
    _project(store, "painted", ESCAPES_CODE, "paint", 1)
    capsys.readouterr()
    assert main(["show", "painted", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert r"ValueError: \x1b[31mred\x1b[0m\x07\x0dover" + "\tand" + r"\x9b2J" in out
    assert not any(ch in out for ch in "\x1b\x07\r\x9b")
    assert printable("a\nb\tc\x00") == "a\nb\tc\\x00"


def test_resume_of_a_failing_project_says_why(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = "def work(x):\n    if x == 7:\n        raise ValueError('seven is bad')\n    return x\n"
    project = commit_project(code, "work", [(6,), (7,), (8,)], name="fails", store=store_url)
    assert project.wait(DEADLINE) and project.state == "failed"
    capsys.readouterr()
    assert main(["resume", "fails", "--store", store_url]) == 1
    captured = capsys.readouterr()
    assert "fails: failed, 2/3 done" in captured.out
    assert captured.err == (
        "1 of 3 arguments failed; the first, for args (7,): ValueError: seven is bad\n"
        "`ceranubis show fails` shows the errors\n"
    )


@pytest.mark.parametrize("hosts", [",", "", " , "])
def test_resume_refuses_empty_hosts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hosts: str
) -> None:
    store = tmp_path / "projects.sqlite"
    _project(store, "few", "def one(i):\n    return i\n", "one", 2)
    capsys.readouterr()
    assert main(["resume", "few", "--hosts", hosts, "--store", str(store)]) == 2
    assert capsys.readouterr().err == "ceranubis resume: --hosts needs at least one host\n"


def test_demo_help_describes_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--tasks TASKS tasks to spread (default: 64)" in out
    assert "--darts DARTS darts per task (default: 1000000)" in out
    assert "--hosts HOSTS comma-separated hosts" in out


@pytest.mark.parametrize(
    "argv", [["--tasks", "0"], ["--darts", "-5"], ["--tasks", "x"], ["--hosts", ","]]
)
def test_demo_refuses_bad_numbers_and_hosts(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    try:
        status = main(["demo", *argv])
    except SystemExit as exit_:  # argparse's own refusal
        status = exit_.code  # type: ignore[assignment]
    assert status == 2
    err = capsys.readouterr().err
    assert "must be at least 1" in err or "whole number" in err or "at least one host" in err


@pytest.mark.parametrize("to_file", [True, False])
def test_a_value_json_cannot_write_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], to_file: bool
) -> None:
    store = tmp_path / "projects.sqlite"
    code = "def huge(i):\n    return i if i < 3 else 10 ** 5000\n"  # over int's str limit
    _project(store, "huge", code, "huge", 4)
    out = tmp_path / "out.json"
    out.write_text("old\n")
    output = ["-o", str(out)] if to_file else []
    capsys.readouterr()
    assert main(["results", "huge", *output, "--store", str(store)]) == 2
    err = capsys.readouterr().err
    target = out if to_file else "the results"
    assert err.startswith(f"ceranubis results: cannot write {target}: Exceeds the limit")
    assert err.count("\n") == 1
    assert out.read_text() == "old\n"


def test_resume_on_unusable_hosts_says_what_is_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.jupyter_support import free_port

    store = tmp_path / "projects.sqlite"
    code = "def work(x):\n    if x == 1:\n        raise ValueError('one')\n    return x\n"
    _project(store, "left", code, "work", 3)
    host = f"nobody@127.0.0.1:{free_port()}"  # loopback, nothing listens: refused
    capsys.readouterr()
    assert main(["resume", "left", "--hosts", host, "--store", str(store)]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 arguments did not run (stopped); `ceranubis resume left` runs them" in err
