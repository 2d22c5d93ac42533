"""The README's two commands: what ``make demo`` installs (nothing but the package)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _planned(target: str, venv: Path) -> str:
    """The commands ``make`` would run for ``target`` on a machine without that venv."""
    return subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def test_make_demo_installs_only_the_package(tmp_path: Path) -> None:
    planned = _planned("demo", tmp_path / "venv")
    assert "pip install -q -e ." in planned and "ceranubis demo" in planned
    assert "[dev]" not in planned and "[tests]" not in planned


def test_make_test_installs_the_dev_extra(tmp_path: Path) -> None:
    planned = _planned("test", tmp_path / "venv")
    assert "pip install -q -e '.[dev]'" in planned and "pytest" in planned
