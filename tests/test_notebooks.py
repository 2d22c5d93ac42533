"""Every notebook in notebooks/ runs in a real kernel (nbclient); the saved widget state
and the outputs are checked. The resume notebook is run in two kernels, split at its
``restart-here`` cell, as a user restarting the kernel would."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from ceranubis_jupyter.jupyter.progress import OUTPUT_LINES_PER_HOST
from tests.jupyter_support import execute_notebook, models_with_class

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def load(name: str) -> Any:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def text_of(nb: Any) -> str:
    """Every stream and plain-text output of a notebook, joined."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def bars(nb: Any) -> list[dict[str, Any]]:
    return models_with_class(nb, "ceranubis-bar")


def counts_texts(nb: Any) -> list[str]:
    return [state["value"] for state in models_with_class(nb, "ceranubis-counts")]


def test_notebooks_are_committed_without_outputs() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.timeout(240)
def test_quickstart(tmp_path: Path, jupyter_env: dict[str, str]) -> None:
    nb = execute_notebook(load("01-quickstart.ipynb"), tmp_path, jupyter_env,
                          tmp_path / "quickstart.ipynb")  # fmt: skip
    text = text_of(nb)
    assert re.search(r"pi ~ 3\.1\d+ from 24 tasks", text), text
    # the widgets' saved state: the sweep ended green and full, the fragile one red
    finals = {(b["value"], b["max"], b["bar_style"]) for b in bars(nb)}
    assert (24, 24, "success") in finals and (6, 6, "danger") in finals, finals
    assert any(t.startswith("24/24 done · 0 failed · 0 running · 0 pending") for t in
               counts_texts(nb)), counts_texts(nb)  # fmt: skip
    # viewers without widgets see the final text line, not the first one
    plain = [o["data"]["text/plain"] for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]  # fmt: skip
    assert plain[0].startswith("quickstart [####################] done: 24/24 done"), plain
    assert plain[1].startswith("fragile [####################] failed: 5/6 done"), plain
    # the tasks' prints, a few lines per host; the error with its traceback, cell named
    outputs = [m["value"] for m in models_with_class(nb, "ceranubis-output") if m["value"]]
    lines = re.findall(r"\[local\] seed \d+: \d+ hits", outputs[0])
    assert 1 <= len(lines) <= OUTPUT_LINES_PER_HOST, outputs
    errors = [m["value"] for m in models_with_class(nb, "ceranubis-errors") if m["value"]]
    assert len(errors) == 1 and "ValueError: bad x=3" in errors[0], errors
    assert re.search(r"Cell In\[\d+\], line 5, in fragile", errors[0]), errors
    # the remote traceback shows the cell's own line 5 and its source
    assert re.search(r"line 5, in fragile\n\s+raise ValueError", text), text
    assert "ValueError: bad x=3" in text
    assert "(5, 6) failed" in text
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in text


@pytest.mark.timeout(240)
def test_parameter_sweep_plots_partial_results(tmp_path: Path, jupyter_env: dict[str, str]) -> None:
    nb = execute_notebook(load("04-parameter-sweep.ipynb"), tmp_path, jupyter_env,
                          tmp_path / "sweep.ipynb")  # fmt: skip
    text = text_of(nb)
    assert "done (96, 96)" in text, text
    assert re.search(r"largest amplitude \d+\.\d+ at damping 0\.05, frequency", text), text
    assert "96/96 points drawn" in text, text
    pngs = [o["data"]["image/png"] for c in nb.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]  # fmt: skip
    assert pngs and base64.b64decode(pngs[-1]).startswith(b"\x89PNG"), len(pngs)
    assert any((b["value"], b["bar_style"]) == (96, "success") for b in bars(nb)), bars(nb)


def split_at_restart(nb: Any) -> tuple[Any, Any]:
    """The cells before and after the ``restart-here`` cell, as two notebooks."""
    (index,) = [i for i, c in enumerate(nb.cells) if "restart-here" in c.metadata.get("tags", [])]
    before, after = copy.deepcopy(nb), copy.deepcopy(nb)
    before.cells, after.cells = nb.cells[:index], nb.cells[index + 1 :]
    return before, after


@pytest.mark.timeout(240)
def test_resume_after_a_kernel_restart(tmp_path: Path, jupyter_env: dict[str, str]) -> None:
    before, after = split_at_restart(load("03-resume.ipynb"))
    first = execute_notebook(before, tmp_path, jupyter_env, tmp_path / "part1.ipynb")
    done_before = int(re.findall(r"\((\d+), 40\)", text_of(first))[-1])
    assert 8 <= done_before < 40, text_of(first)
    second = execute_notebook(after, tmp_path, jupyter_env, tmp_path / "part2.ipynb")
    text = text_of(second)
    (state, done) = re.search(r"^(\w+) \((\d+), 40\)$", text, re.M).groups()  # type: ignore[union-attr]
    assert state in ("stopped", "cancelled") and int(done) >= done_before, text
    assert "done (40, 40)" in text and "True" in text, text


@pytest.mark.timeout(240)
def test_ssh_hosts_notebook(
    tmp_path: Path, jupyter_env: dict[str, str], hosts_openssh: list[Any]
) -> None:
    # the notebook names hosts by their ssh-config alias; nodes run the host's python3
    aliases = [host.address for host in hosts_openssh]
    env = {**jupyter_env, "CERANUBIS_HOSTS": ",".join(aliases)}
    nb = execute_notebook(load("02-ssh-hosts.ipynb"), tmp_path, env, tmp_path / "ssh.ipynb")
    text = text_of(nb)
    assert "(12, 12) done" in text and aliases[0] in text, text
    assert str([i * i for i in range(12)]) in text, text
    assert "'done': 2" in text and "'failed': 1" in text, text
    assert "TaskTimeout" in text or "timed out" in text.lower(), text
