""" "Run All" again after a kernel restart, in real kernels (nbclient) on one store: the
same notebook starts no task and shows the same results; an edited function is a new
version that runs every task; added arguments run alone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.jupyter_support import execute_notebook, models_with_class, new_notebook

SWEEP = """%%ceranubis square over range({count}) --name sweep
LOG = {log!r}

def square(x):
    with open(LOG, "a") as log:
        log.write(f"{{x}}\\n")
    return x * x + {offset}
"""
REPORT = 'print("report", sweep.version, sweep.reused, sweep.status(), sweep.results()[-1])'


def run_all(tmp_path: Path, env: dict[str, str], run: int, **cell: Any) -> tuple[str, Any]:
    """The notebook run in a new kernel; returns its REPORT line and the saved notebook."""
    source = SWEEP.format(log=str(tmp_path / "calls"), **cell)
    nb = new_notebook("%load_ext ceranubis_jupyter", source, REPORT)
    saved = execute_notebook(nb, tmp_path, env, tmp_path / f"run{run}.ipynb")
    text = "".join(o.get("text", "") for c in saved.cells for o in c.get("outputs", []))
    (line,) = re.findall(r"^report .*$", text, re.M)
    return line, saved


def calls(tmp_path: Path) -> int:
    return len((tmp_path / "calls").read_text().split())


@pytest.mark.timeout(480)
def test_run_all_again_after_a_restart(tmp_path: Path, jupyter_env: dict[str, str]) -> None:
    first, _ = run_all(tmp_path, jupyter_env, 1, count=20, offset=0)
    assert first == "report 1 0 (20, 20) ((19,), 361)" and calls(tmp_path) == 20
    again, nb = run_all(tmp_path, jupyter_env, 2, count=20, offset=0)
    assert again == first and calls(tmp_path) == 20, "the same notebook starts no task"
    bars = [(b["value"], b["max"], b["bar_style"]) for b in models_with_class(nb, "ceranubis-bar")]
    assert bars == [(20, 20, "success")], bars
    edited, nb = run_all(tmp_path, jupyter_env, 3, count=20, offset=1)
    assert edited == "report 2 0 (20, 20) ((19,), 362)" and calls(tmp_path) == 40
    headers = [h["value"] for h in models_with_class(nb, "ceranubis-header")]
    assert any("sweep v2 (code changed)" in h for h in headers), headers
    grown, nb = run_all(tmp_path, jupyter_env, 4, count=25, offset=1)
    assert grown == "report 3 20 (25, 25) ((24,), 577)" and calls(tmp_path) == 45
    counts = [c["value"] for c in models_with_class(nb, "ceranubis-counts")]
    assert any("20 reused · 5 run" in c for c in counts), counts
