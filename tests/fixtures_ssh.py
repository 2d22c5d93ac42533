"""Real SSH servers for the tests: OpenSSH's sshd on loopback, asyncssh's own, netns hosts.

Everything lives in a temporary ``HOME`` whose ``.ssh/config`` names each server by alias
(``cj-openssh``, ``cj-asyncssh``, ...) with ``HostName``, ``Port``, ``User``, ``IdentityFile``
and ``UserKnownHostsFile``: the client finds the servers the way a user's ssh config would,
and host-key checking stays on. The servers are session-scoped; tests that need ``HOME``
pointed there request ``ssh_env`` (function scope, via monkeypatch).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import psutil
import pytest

from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.cluster.openssh import SSH_CLIENT_ENV

SSHD = "/usr/sbin/sshd"
# Seconds a server gets to start listening before the fixture fails.
SERVER_START_TIMEOUT = 10.0
OPENSSH_ALIAS = "cj-openssh"
ASYNCSSH_ALIAS = "cj-asyncssh"
# The interpreter the test hosts run nodes with: ours, so the tasks' libraries (numpy) are
# there as on a real host where the user installed them. Bare interpreters have own tests.
TEST_PYTHON = sys.executable


def free_port() -> int:
    """A TCP port nobody listens on right now (on loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str,
    port: int,
    timeout: float = SERVER_START_TIMEOUT,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until ``host:port`` accepts connections (bounded); fail loudly otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server on {host}:{port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


def keygen(path: Path) -> str:
    """Make an ed25519 key pair with ssh-keygen; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class SSHHome:
    """The temporary HOME with its ``.ssh`` folder: keys, config, known_hosts."""

    path: Path
    user: str = field(default_factory=getpass.getuser)

    @property
    def ssh(self) -> Path:
        return self.path / ".ssh"

    @property
    def key(self) -> Path:
        """The client key every test server accepts."""
        return self.ssh / "cj_key"

    @property
    def known_hosts(self) -> Path:
        return self.ssh / "known_hosts"

    def add_alias(
        self,
        alias: str,
        hostname: str,
        port: int,
        identity: Path | None = None,
        known_hosts: Path | None = None,
        **extra: str,
    ) -> None:
        """Append a ``Host`` block to ``~/.ssh/config`` (our key and known_hosts by default)."""
        lines = [
            f"Host {alias}",
            f"    HostName {hostname}",
            f"    Port {port}",
            f"    User {self.user}",
            f"    IdentityFile {identity or self.key}",
            f"    UserKnownHostsFile {known_hosts or self.known_hosts}",
        ]
        lines += [f"    {name} {value}" for name, value in extra.items()]
        with open(self.ssh / "config", "a") as config:
            config.write("\n".join(lines) + "\n\n")

    def trust(
        self, hostname: str, port: int, host_key_pub: Path, known_hosts: Path | None = None
    ) -> None:
        """Add a server's host key to known_hosts (as ``ssh`` would after a first login)."""
        key = " ".join(host_key_pub.read_text().split()[:2])
        with open(known_hosts or self.known_hosts, "a") as known:
            known.write(f"[{hostname}]:{port} {key}\n")


@pytest.fixture(scope="session")
def ssh_home(tmp_path_factory: pytest.TempPathFactory) -> SSHHome:
    """A HOME for the client with a key pair and an empty ssh config."""
    home = SSHHome(tmp_path_factory.mktemp("home"))
    home.ssh.mkdir(mode=0o700)
    keygen(home.key)
    (home.ssh / "config").write_text("")
    home.known_hosts.write_text("")
    return home


@pytest.fixture
def ssh_env(ssh_home: SSHHome, monkeypatch: pytest.MonkeyPatch) -> SSHHome:
    """Point HOME at the test home for one test; no agent, so only our keys are offered."""
    monkeypatch.setenv("HOME", str(ssh_home.path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return ssh_home


# ---------------------------------------------------------------------- OpenSSH sshd


@dataclass
class OpenSSHServer:
    """An ``sshd -D`` we started; stopped by PID."""

    directory: Path
    address: str
    port: int
    host_key: Path
    cache: Path
    also_listen: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self, authorized: Path, netns: str | None = None) -> None:
        config = self.directory / "sshd_config"
        config.write_text(_sshd_config(self, authorized))
        command = [SSHD, "-D", "-f", str(config), "-E", str(self.directory / "sshd.log")]
        if netns:
            command = ["ip", "netns", "exec", netns, *command]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        wait_for_port(self.address, self.port, process=self.process)

    def stop(self) -> None:
        """End the sshd and every session it forked (a session whose client was cut off
        by a partition would otherwise outlive its listener)."""
        if self.process is not None and self.process.poll() is None:
            sessions = _descendants(self.process.pid)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
            _end(sessions)

    def log(self) -> str:
        path = self.directory / "sshd.log"
        return path.read_text() if path.exists() else ""


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _end(processes: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL what is left (each by its PID, checked against reuse)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=3)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=3)


def _sshd_config(server: OpenSSHServer, authorized: Path) -> str:
    listen = "".join(f"ListenAddress {a}\n" for a in (server.address, *server.also_listen))
    return f"""\
Port {server.port}
{listen}HostKey {server.host_key}
PidFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile {authorized}
MaxSessions 100
MaxStartups 100:30:200
SetEnv XDG_CACHE_HOME={server.cache}
"""


def make_openssh_server(
    directory: Path,
    home: SSHHome,
    address: str = "127.0.0.1",
    netns: str | None = None,
    also_listen: tuple[str, ...] = (),
) -> OpenSSHServer:
    """Start an sshd for ``home``'s key, listening on ``address`` (in ``netns`` if given)."""
    if not os.path.exists(SSHD):
        raise RuntimeError(f"{SSHD} is missing: run `make system-deps` (openssh-server)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    host_key = directory / "host_key"
    keygen(host_key)
    authorized = directory / "authorized_keys"
    authorized.write_text(home.key.with_suffix(".pub").read_text())
    (directory / "cache").mkdir()
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    port = free_port()  # free here too, so a netns server's port is unused on our loopback
    server = OpenSSHServer(directory, address, port, host_key, directory / "cache", also_listen)
    server.start(authorized, netns)
    return server


@pytest.fixture(scope="session")
def openssh_server(
    ssh_home: SSHHome, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenSSHServer]:
    """A real OpenSSH sshd on loopback, reachable as ``cj-openssh``."""
    server = make_openssh_server(tmp_path_factory.mktemp("sshd"), ssh_home)
    yield from _exposed(server, ssh_home, OPENSSH_ALIAS)


@pytest.fixture
def hosts_openssh(openssh_server: OpenSSHServer, ssh_env: SSHHome) -> list[Host]:
    """Executor hosts: the loopback sshd through its ssh-config alias."""
    return [Host(OPENSSH_ALIAS, python=TEST_PYTHON)]


@pytest.fixture
def hosts_openssh_client(
    openssh_server: OpenSSHServer, ssh_env: SSHHome, monkeypatch: pytest.MonkeyPatch
) -> list[Host]:
    """The loopback sshd again, reached through the ``ssh`` binary (cluster/openssh.py)."""
    monkeypatch.setenv(SSH_CLIENT_ENV, "openssh")
    return [Host(OPENSSH_ALIAS, python=TEST_PYTHON)]


# ---------------------------------------------------------------------- asyncssh server


class AsyncSSHServer:
    """asyncssh's own server in a thread of this process, running commands as subprocesses.

    ``stall`` stops forwarding in both directions (a silent link, without closing it);
    ``env`` is the environment of the commands it runs.
    """

    def __init__(self, host_key: Path, authorized_key: Path, env: dict[str, str]) -> None:
        self.host_key = host_key
        self.authorized_key = authorized_key
        self.env = env
        self.stall = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None
        self.port = 0
        self.handlers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self.loop)
        self.server = future.result(timeout=SERVER_START_TIMEOUT)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _listen(self) -> Any:
        return await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[str(self.host_key)],
            authorized_client_keys=str(self.authorized_key),
            process_factory=self._serve,
            encoding=None,
        )

    async def _serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
            task.add_done_callback(self.handlers.discard)
        if not process.command:
            process.exit(1)
            return
        child = await asyncio.create_subprocess_shell(
            process.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        assert child.stdin and child.stdout and child.stderr
        await asyncio.gather(
            self._pump_in(process.stdin, child.stdin),
            self._pump_out(child.stdout, process.stdout),
            self._pump_out(child.stderr, process.stderr),
            return_exceptions=True,
        )
        status = await child.wait()
        _close_transport(child)
        with contextlib.suppress(OSError, asyncssh.Error):
            process.exit(status)

    async def _pump_in(self, source: Any, target: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(1 << 16):
                await self._unstalled()
                target.write(data)
                await target.drain()
        finally:
            target.close()  # EOF for the node: the client went away or closed stdin

    async def _pump_out(self, source: asyncio.StreamReader, target: Any) -> None:
        while data := await source.read(1 << 16):
            await self._unstalled()
            with contextlib.suppress(OSError, asyncssh.Error):
                target.write(data)

    async def _unstalled(self) -> None:
        while self.stall.is_set():
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()
            if self.handlers:  # let sessions finish so their subprocesses are reaped
                await asyncio.wait(list(self.handlers), timeout=SERVER_START_TIMEOUT)

        if self.server is not None:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


def _close_transport(child: asyncio.subprocess.Process) -> None:
    """Close a finished child's transport on its own loop (else its ``__del__`` complains
    later, from another thread, once this loop is gone)."""
    transport = getattr(child, "_transport", None)
    if transport is not None:
        transport.close()


def make_asyncssh_server(
    directory: Path, home: SSHHome, authorized_key: Path | None = None
) -> AsyncSSHServer:
    """Start an in-process asyncssh server whose commands cache under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key = directory / "host_key"
    keygen(host_key)
    (directory / "cache").mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "XDG_CACHE_HOME": str(directory / "cache"),
    }
    server = AsyncSSHServer(host_key, authorized_key or home.key.with_suffix(".pub"), env)
    server.start()
    return server


@pytest.fixture(scope="session")
def asyncssh_server(
    ssh_home: SSHHome, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AsyncSSHServer]:
    """asyncssh's in-process server, reachable as ``cj-asyncssh``."""
    server = make_asyncssh_server(tmp_path_factory.mktemp("asyncssh"), ssh_home)
    yield from _exposed(server, ssh_home, ASYNCSSH_ALIAS)


@pytest.fixture
def hosts_asyncssh(asyncssh_server: AsyncSSHServer, ssh_env: SSHHome) -> list[Host]:
    """Executor hosts: asyncssh's in-process server through its ssh-config alias."""
    return [Host(ASYNCSSH_ALIAS, python=TEST_PYTHON)]


def _exposed(server: Any, home: SSHHome, alias: str) -> Iterator[Any]:
    """Name a loopback server in the ssh config and known_hosts; stop it afterwards."""
    home.add_alias(alias, "127.0.0.1", server.port)
    home.trust("127.0.0.1", server.port, server.host_key.with_suffix(".pub"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose kernel accepts connections that no program ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def reset_cache(cache: Path) -> None:
    """Empty a server's bundle cache (the next node start is cold)."""
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir()


def wait_until_ready(executor: Any, count: int, timeout: float = SERVER_START_TIMEOUT * 3) -> None:
    """Wait (bounded) until ``count`` of an executor's hosts have finished their handshake."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(info.state == "ready" for info in executor.hosts()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"hosts not ready after {timeout} s: {executor.hosts()}")
