"""Helpers for the Jupyter tests: an isolated Jupyter environment, a JupyterLab server
on loopback, and notebook execution with nbclient.

Isolation: every ``JUPYTER_*``/``IPYTHONDIR`` directory is temporary, so a user's
kernelspecs, settings and workspaces never leak in, and ``CERANUBIS_STORE`` points at a
temporary file, so no test touches the user's project store. Processes started here are
stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil

# Seconds JupyterLab gets to answer /api after its start.
SERVER_START_SECONDS = 60.0
# Times a server start is tried (a free port can be taken between pick and bind).
SERVER_START_ATTEMPTS = 3
# Seconds a notebook cell may run under nbclient.
CELL_TIMEOUT_SECONDS = 120
KERNEL_START_SECONDS = 60

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def isolated_env(base: Path, store: Path) -> dict[str, str]:
    """Environment variables for a Jupyter that sees nothing of the user's setup."""
    dirs = {
        "JUPYTER_CONFIG_DIR": base / "config",
        "JUPYTER_DATA_DIR": base / "data",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": base / "settings",
        "JUPYTERLAB_WORKSPACES_DIR": base / "workspaces",
        "IPYTHONDIR": base / "ipython",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    # The "official Jupyter news?" toast shows even with news_url=None: pre-answer it.
    notification = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = {name: str(path) for name, path in dirs.items()}
    env.update(
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        CERANUBIS_STORE=str(store),
    )
    return env


@contextlib.contextmanager
def patched_environ(extra: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``extra`` set, restored afterwards."""
    old = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def new_notebook(*sources: str) -> Any:
    """A notebook of code cells with an explicit kernelspec (no "Select Kernel" dialog)."""
    from nbformat.v4 import new_code_cell
    from nbformat.v4 import new_notebook as make

    nb = make(
        cells=[new_code_cell(source) for source in sources],
        metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}},
    )
    nbformat.validate(nb)
    return nb


def execute_notebook(
    nb: Any, cwd: Path, env: dict[str, str], saved: Path, timeout: int = CELL_TIMEOUT_SECONDS
) -> Any:
    """Run every cell in a real kernel, save the result, and return the *saved* notebook."""
    from nbclient import NotebookClient

    with patched_environ(env):
        client = NotebookClient(
            nb,
            timeout=timeout,
            startup_timeout=KERNEL_START_SECONDS,
            kernel_name="python3",
            resources={"metadata": {"path": str(cwd)}},
            store_widget_state=True,
        )
        client.execute()
    nbformat.write(nb, saved)
    return nbformat.read(saved, as_version=4)


def widget_states(nb: Any) -> dict[str, dict[str, Any]]:
    """The saved widget models of a notebook: model id → ``{"model_name", "state"}``."""
    meta = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    return dict(meta.get("state", {}))


def models_with_class(nb: Any, css_class: str) -> list[dict[str, Any]]:
    """States of the saved widget models carrying ``css_class``."""
    return [
        model["state"]
        for model in widget_states(nb).values()
        if css_class in model["state"].get("_dom_classes", [])
    ]


@contextlib.contextmanager
def running_kernel(env: dict[str, str], cwd: Path, kernel_name: str = "python3") -> Iterator[Any]:
    """A real kernel started with ``env``; yields ``(manager, client)``, shuts it down."""
    from jupyter_client.manager import KernelManager

    with patched_environ(env):
        manager = KernelManager(kernel_name=kernel_name)
        manager.start_kernel(cwd=str(cwd))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=KERNEL_START_SECONDS)
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)


def execute(client: Any, code: str, timeout: float = 60) -> tuple[dict[str, Any], str]:
    """Run ``code``; returns the execute reply's content and the printed text."""
    return reply_of(client, client.execute(code), timeout)


def reply_of(client: Any, msg_id: str, timeout: float) -> tuple[dict[str, Any], str]:
    """The reply to ``msg_id`` and the text its cell printed (stdout and stderr)."""
    reply = client.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = client.get_shell_msg(timeout=timeout)
    text = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    return reply["content"], "".join(text)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(method: str, url: str, token: str = "", timeout: float = 5.0) -> Any:
    """One HTTP call; returns the decoded JSON body (or None)."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        request.add_header("Authorization", f"token {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
        return json.loads(body) if body else None


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 with a random token, started and stopped by PID."""

    def __init__(self, root: Path, env: dict[str, str], log_path: Path) -> None:
        self.root = root
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.token = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--allow-root", "--expose-app-in-browser", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class="
            "jupyterlab.handlers.announcements.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False",
            "--ServerApp.shutdown_no_activity_timeout=900",
        ]  # fmt: skip

    def start(self) -> None:
        """Start; retries on a fresh port when a start fails."""
        error: Exception | None = None
        for _ in range(SERVER_START_ATTEMPTS):
            self.port, self.token = free_port(), secrets.token_hex(16)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self._command(), cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            try:
                self._wait_ready()
                return
            except (RuntimeError, TimeoutError) as failure:
                error = failure
                self.stop()
        raise RuntimeError(f"JupyterLab did not start: {error}; see {self.log_path}")

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
                if "version" in http("GET", f"{self.url}/api", timeout=2):
                    specs = http("GET", f"{self.url}/api/kernelspecs", self.token)
                    if "python3" not in specs["kernelspecs"]:
                        raise RuntimeError(f"no python3 kernelspec: {list(specs)}")
                    return
            time.sleep(0.2)
        raise TimeoutError(f"/api did not answer within {SERVER_START_SECONDS}s")

    def kernel_connected(self, path: str) -> bool:
        """True when ``path``'s kernel is idle and a browser websocket is attached."""
        with contextlib.suppress(Exception):
            for session in http("GET", f"{self.url}/api/sessions", self.token):
                kernel = session.get("kernel") or {}
                if (
                    session.get("path") == path
                    and kernel.get("execution_state") == "idle"
                    and kernel.get("connections", 0) >= 1
                ):
                    return True
        return False

    def children(self) -> list[int]:
        """PIDs of the processes the server started (its kernels and theirs)."""
        if self.proc is None:
            return []
        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        return []

    def stop(self) -> None:
        """Shut down via the API (stops the kernels), then by PID if needed."""
        if self.proc is None:
            return
        children = self.children()
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                http("POST", f"{self.url}/api/shutdown", self.token, timeout=5)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None
