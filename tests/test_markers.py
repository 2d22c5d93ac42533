"""The quick subset: ``pytest -m "not slow"`` leaves out every test that starts a server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _collected(marker: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q", "-m", marker],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if "::" in line]


def test_the_quick_subset_starts_no_server() -> None:
    quick = _collected("not slow")
    assert any(line.startswith("tests/test_protocol.py::") for line in quick)
    ids = [line.partition("[")[2].rstrip("]").split("-") for line in quick]
    assert not [i for i in ids if {"openssh", "asyncssh", "postgresql"} & set(i)]
    for module in ("test_ssh.py", "test_notebooks.py", "test_widget_browser.py"):
        assert not [line for line in quick if line.startswith(f"tests/{module}::")]
    assert not [line for line in quick if line.startswith("tests/test_faults_partition.py::")]


def test_the_long_tests_carry_their_kind() -> None:
    postgres = _collected("postgres")
    assert any(line.endswith("[postgresql]") for line in postgres)  # parametrized stores
    assert any(line.startswith("tests/test_queue_pg.py::") for line in postgres)  # fixtures
    assert not [line for line in postgres if "[sqlite]" in line]
    assert any(line.startswith("tests/test_ssh.py::") for line in _collected("ssh"))
    assert any(line.startswith("tests/test_widget_browser.py::") for line in _collected("browser"))
