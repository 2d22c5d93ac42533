"""The "Python 3 (ceranubis)" kernel: ``ceranubis install-kernel`` writes it, and the
kernel it describes starts with the magics loaded."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ceranubis_jupyter.cli import main
from ceranubis_jupyter.jupyter.kernelspec import DISPLAY_NAME, kernel_spec
from tests.jupyter_support import execute, running_kernel

COMMITTED = Path(__file__).resolve().parent.parent / "kernel_ext" / "ceranubis" / "kernel.json"


def test_committed_kernel_json_is_the_generated_spec() -> None:
    assert json.loads(COMMITTED.read_text()) == kernel_spec(python="python")


@pytest.mark.timeout(120)
def test_install_kernel_and_the_kernel_starts_with_the_extension(
    tmp_path: Path, jupyter_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "prefix"
    assert main(["install-kernel", "--prefix", str(prefix)]) == 0
    installed = prefix / "share" / "jupyter" / "kernels" / "ceranubis" / "kernel.json"
    spec = json.loads(installed.read_text())
    assert spec["display_name"] == DISPLAY_NAME and spec["argv"][0] == sys.executable
    assert "installed kernel" in capsys.readouterr().out

    env = {**jupyter_env, "JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    with running_kernel(env, tmp_path, kernel_name="ceranubis") as (_manager, client):
        reply, text = execute(
            client, "print(sorted(get_ipython().extension_manager.loaded))\n"
            "print(repr(get_ipython().run_line_magic('ceranubis', 'hosts --workers 1')))",
        )  # fmt: skip
    assert reply["status"] == "ok", reply
    assert "'ceranubis_jupyter'" in text, text
    assert "local" in text and "ready" in text, text


def test_startup_file_loads_the_magics_in_ipython(tmp_path: Path) -> None:
    import shutil
    import subprocess

    startup = tmp_path / "profile" / "startup"
    startup.mkdir(parents=True)
    shutil.copy(COMMITTED.parent.parent / "startup" / "00-ceranubis.py", startup)
    code = "print('loaded', 'ceranubis' in get_ipython().magics_manager.magics['cell'])"
    done = subprocess.run(
        [sys.executable, "-m", "IPython", f"--profile-dir={tmp_path / 'profile'}", "-c", code],
        capture_output=True, text=True, timeout=60, env={**os.environ, "IPYTHONDIR": str(tmp_path)},
    )  # fmt: skip
    assert "loaded True" in done.stdout, (done.stdout, done.stderr)
