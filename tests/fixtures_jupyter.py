"""Fixtures for the Jupyter tests: a temporary project store, a real IPython shell with
the extension loaded, an isolated Jupyter environment, and a JupyterLab server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jupyter_support import JupyterLab, isolated_env


@pytest.fixture
def ceranubis_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$CERANUBIS_STORE`` pointing at a fresh SQLite file (never the user's store)."""
    store = tmp_path / "projects.sqlite"
    monkeypatch.setenv("CERANUBIS_STORE", str(store))
    return store


@pytest.fixture
def ipshell(ceranubis_store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real ``InteractiveShell`` after ``%load_ext ceranubis_jupyter``.

    Teardown unloads the extension, which shuts down the executors the magics started.
    """
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("CERANUBIS_PROGRESS", "text")
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ceranubis_jupyter")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "ceranubis_jupyter")
        shell.reset()
        InteractiveShell.clear_instance()


@pytest.fixture
def jupyter_env(tmp_path: Path) -> dict[str, str]:
    """Environment variables for kernels and servers isolated from the user's Jupyter."""
    return isolated_env(tmp_path / "jupyter", tmp_path / "projects.sqlite")


@pytest.fixture
def jupyterlab(tmp_path: Path, jupyter_env: dict[str, str]) -> Iterator[JupyterLab]:
    """A JupyterLab server on loopback serving ``tmp_path / "root"``."""
    root = tmp_path / "root"
    root.mkdir()
    server = JupyterLab(root, jupyter_env, tmp_path / "jupyterlab.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
