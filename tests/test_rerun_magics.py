"""Re-running a ``%%ceranubis`` cell in a real IPython shell: the same cell follows the same
project, an edited one makes a new version, ``--replace`` and ``--no-reuse`` do what they
say. Every call of the function is logged to a file, so what ran is counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_rerun import code


def cell(log: Path, offset: int = 0) -> str:
    """The cell: ``work`` (``tests.test_rerun``'s function, logging each call) as typed."""
    return code(log, offset)


def calls(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def test_running_the_cell_again_follows_the_same_project(
    ipshell: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "calls"
    ipshell.run_cell_magic("ceranubis", "work over range(6) --name sq", cell(log))
    first = ipshell.user_ns["sq"]
    assert first.state == "done" and calls(log) == 6
    capsys.readouterr()
    ipshell.run_cell_magic("ceranubis", "work over range(6) --name sq", cell(log))
    again = ipshell.user_ns["sq"]
    assert again is first and calls(log) == 6, "the same cell runs no task"
    assert "sq [####################] done: 6/6 done" in capsys.readouterr().out
    ipshell.run_cell_magic("ceranubis", "work over range(8) --name sq", cell(log))
    grown = ipshell.user_ns["sq"]
    assert (grown.version, grown.reused, calls(log)) == (2, 6, 8)
    text = capsys.readouterr().out
    assert "sq v2 (2 arguments added)" in text and "6 reused · 2 run" in text, text


def test_an_edited_cell_is_a_new_version_and_replace_removes_the_old(
    ipshell: Any, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    ipshell.run_cell_magic("ceranubis", "work over range(4) --name sq", cell(log))
    ipshell.run_cell_magic("ceranubis", "work over range(4) --name sq", cell(log, 1))
    edited = ipshell.user_ns["sq"]
    assert (edited.version, edited.changes, calls(log)) == (2, "code changed", 8)
    assert [r[1] for r in ipshell.run_line_magic("ceranubis", "projects --all").rows] == [1, 2]
    assert [r[1] for r in ipshell.run_line_magic("ceranubis", "projects").rows] == [2]
    first = ipshell.run_line_magic("ceranubis", "results sq --version 1")
    assert first == [((x,), x * x) for x in range(4)]
    ipshell.run_cell_magic("ceranubis", "work over range(4) --name sq --replace", cell(log, 2))
    assert calls(log) == 12 and ipshell.user_ns["sq"].version == 3
    assert [r[1] for r in ipshell.run_line_magic("ceranubis", "projects --all").rows] == [3]


def test_no_reuse_runs_every_task(ipshell: Any, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    ipshell.run_cell_magic("ceranubis", "work over range(3) --name a", cell(log))
    ipshell.run_cell_magic("ceranubis", "work over range(3) --name b --no-reuse", cell(log))
    assert calls(log) == 6 and ipshell.user_ns["b"].reused == 0
    ipshell.run_cell_magic("ceranubis", "work over range(3) --name c", cell(log))
    assert calls(log) == 6 and ipshell.user_ns["c"].reused == 3
