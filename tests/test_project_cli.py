"""``ceranubis projects | show | results | resume | rm`` on a real store (both back ends)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cli import main
from ceranubis_jupyter.projects.commit import commit_function, commit_project
from ceranubis_jupyter.projects.project import Project

CODE = """
def work(x):
    if x == 7:
        raise ValueError("seven is bad")
    return {"x": x, "square": x * x}
"""
DEADLINE = 60


def _slow(x: int) -> int:
    time.sleep(0.05)
    return -x


def test_list_show_export_remove(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = commit_project(CODE, "work", [(6,), (7,), (8,)], name="cli_demo", store=store_url)
    assert project.wait(DEADLINE)
    assert main(["projects", "--store", store_url]) == 0
    listing = capsys.readouterr().out
    assert "cli_demo" in listing and "failed" in listing and "2/3" in listing

    assert main(["show", "cli_demo", "--store", store_url]) == 0
    shown = capsys.readouterr().out
    assert "state    failed" in shown and "local" in shown
    assert "error for args (7,)" in shown and "ValueError: seven is bad" in shown

    out_json, out_csv = tmp_path / "out.json", tmp_path / "out.csv"
    assert main(["results", "cli_demo", "-o", str(out_json), "--store", store_url]) == 0
    assert json.loads(out_json.read_text()) == [
        {"args": [6], "result": {"x": 6, "square": 36}},
        {"args": [8], "result": {"x": 8, "square": 64}},
    ]
    assert main(["results", "cli_demo", "-o", str(out_csv), "--store", store_url]) == 0
    with out_csv.open() as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["arg0", "result"] and [r[0] for r in rows[1:]] == ["6", "8"]
    assert json.loads(rows[2][1]) == {"x": 8, "square": 64}
    capsys.readouterr()

    assert main(["rm", "cli_demo", "--store", store_url]) == 0
    assert main(["projects", "--store", store_url]) == 0
    assert "no projects yet" in capsys.readouterr().out
    assert main(["show", "cli_demo", "--store", store_url]) == 2
    assert "no project 'cli_demo'" in capsys.readouterr().err


def test_resume_from_the_command_line(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    executor = CeranubisExecutor()
    args = [(x,) for x in range(30)]
    project = commit_function(executor, _slow, args, name="cli_resume", store=store_url)
    deadline = time.monotonic() + DEADLINE
    while project.status()[0] < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    executor.shutdown(wait=True, stop_running=True)
    assert not project.wait(DEADLINE) and project.state == "stopped"

    assert main(["resume", "cli_resume", "--store", store_url]) == 0
    assert "cli_resume: done, 30/30 done" in capsys.readouterr().out
    final = Project.load("cli_resume", store_url)
    assert final.results() == [((x,), -x) for x in range(30)]
    assert main(["resume", "nothing_here", "--store", store_url]) == 2
