"""binder/ builds a working environment: a fresh virtualenv from binder/requirements.txt
and binder/postBuild (PyPI only, the repository installed from a local copy) runs the
quickstart notebook in the "Python 3 (ceranubis)" kernel that postBuild installs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
# What a Binder sees of the repository (a checkout): the package and what it needs.
COPIED = ["pyproject.toml", "README.md", "ceranubis_jupyter", "notebooks", "binder"]
PIP_SECONDS = 600
NOTEBOOK_SECONDS = 300


def copy_repository(target: Path) -> Path:
    target.mkdir()
    for name in COPIED:
        source = REPO / name
        if not source.exists():
            continue  # let the build say whether it needs it
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    return target


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.timeout(PIP_SECONDS + NOTEBOOK_SECONDS + 60)
def test_binder_environment_runs_the_quickstart(
    tmp_path: Path, jupyter_env: dict[str, str]
) -> None:
    repo = copy_repository(tmp_path / "repo")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    env = {
        **os.environ,
        **jupyter_env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("PYTHONPATH", None)
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q"]
    run([*pip, "-r", "binder/requirements.txt"], repo, env, PIP_SECONDS)
    run(["bash", "binder/postBuild"], repo, env, PIP_SECONDS)

    specs = json.loads(run([str(bin_dir / "jupyter"), "kernelspec", "list", "--json"],
                           repo, env, 60))["kernelspecs"]  # fmt: skip
    assert specs["ceranubis"]["spec"]["argv"][0] == str(bin_dir / "python")
    assert specs["ceranubis"]["spec"]["display_name"] == "Python 3 (ceranubis)"

    out = tmp_path / "quickstart-executed.ipynb"
    run(
        [
            str(bin_dir / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
            "notebooks/01-quickstart.ipynb", f"--output={out}",
            "--ExecutePreprocessor.kernel_name=ceranubis",
            f"--ExecutePreprocessor.timeout={NOTEBOOK_SECONDS}",
        ],
        repo, env, NOTEBOOK_SECONDS,
    )  # fmt: skip
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(
        output.get("text", "") for cell in nb.cells for output in cell.get("outputs", [])
    )
    assert "pi ~ 3.1" in text, text[-2000:]
    # the package came from the copy, not from this checkout
    where = run([str(bin_dir / "python"), "-c",
                 "import ceranubis_jupyter; print(ceranubis_jupyter.__file__)"],
                tmp_path, env, 60)  # fmt: skip
    assert where.strip().startswith(str(venv)), where
