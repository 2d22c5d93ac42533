"""Loopback OpenSSH servers for the SSH benchmarks (no pytest, nothing from ``tests/``).

:func:`loopback_hosts` starts ``count`` real ``sshd -D`` processes on 127.0.0.1, each with
its own port and bundle cache (so each is a separate, cold host), in a temporary ``HOME``
whose ``~/.ssh/config`` names them ``<prefix>-0``, ``<prefix>-1``... and whose
``known_hosts`` holds their key: host-key checking stays on. Everything is stopped by PID
on the way out, the servers' forked sessions too.

With ``plain_shell`` the servers set ``SHLVL=1`` in their sessions. Debian's bash runs
``~/.bashrc`` for a command that sshd starts only at shell level 1 (it counts itself one
up from ``SHLVL``), so the account's shell then does no rc-file work for commands: as on an
account whose ``~/.bashrc`` returns at once when not interactive (Debian's default one).
This account's ``~/.bashrc`` runs ``pyenv init`` (120-130 ms of CPU per ssh command).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

SSHD = "/usr/sbin/sshd"
# Seconds an sshd gets to start listening before the benchmark gives up.
START_TIMEOUT = 10.0
# Seconds to wait for the sessions of a closed executor to end (their CPU reaches the
# sshd's children times only once it has reaped them).
REAP_TIMEOUT = 10.0


@dataclass
class Server:
    """One ``sshd -D`` we started, and its bundle cache folder."""

    alias: str
    port: int
    cache: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """End the sshd and every session it forked, by PID."""
        if self.process.poll() is not None:
            return
        try:
            sessions = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            sessions = []
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        for session in sessions:
            with contextlib.suppress(psutil.Error):
                session.terminate()
        psutil.wait_procs(sessions, timeout=3)


def host_side_cpu(pids: list[int]) -> float:
    """CPU seconds of the sshd with these PIDs and every session they have reaped
    (sessions, shells, nodes and workers: each parent reaps its children)."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    return total


def wait_reaped(pids: list[int]) -> None:
    """Wait until no sshd has a session left (so :func:`host_side_cpu` counts them)."""
    deadline = time.monotonic() + REAP_TIMEOUT
    while any(psutil.Process(pid).children() for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd sessions still running {REAP_TIMEOUT:g} s after close")
        time.sleep(0.05)


@dataclass
class Loopback:
    """The client HOME and the servers it reaches by alias."""

    home: Path
    servers: list[Server]

    @property
    def pids(self) -> list[int]:
        """The servers' sshd PIDs (for :func:`host_side_cpu`)."""
        return [server.process.pid for server in self.servers]

    @property
    def ssh_config(self) -> Path:
        return self.home / ".ssh" / "config"

    def reset_cache(self, index: int = 0) -> None:
        """Empty one host's bundle cache (the next start there is cold)."""
        cache = self.servers[index].cache
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()


@contextlib.contextmanager
def loopback_hosts(
    count: int = 1, prefix: str = "cj-bench", plain_shell: bool = False
) -> Iterator[Loopback]:
    """Start ``count`` sshd on loopback and point ``HOME`` at a client home that names them;
    restore ``HOME`` and stop them (by PID) after. ``plain_shell``: see the module's
    docstring."""
    if not os.path.exists(SSHD):
        raise RuntimeError(f"{SSHD} is missing: run `make system-deps` (openssh-server)")
    root = Path(tempfile.mkdtemp(prefix="cj-bench-ssh-"))
    saved = {name: os.environ.get(name) for name in ("HOME", "SSH_AUTH_SOCK")}
    servers: list[Server] = []
    try:
        home = _client_home(root / "home")
        host_key = root / "host_key"
        _keygen(host_key)
        for index in range(count):
            directory = root / f"sshd-{index}"
            server = _start(directory, f"{prefix}-{index}", host_key, home, plain_shell)
            servers.append(server)
            _name(home, server)
        os.environ["HOME"] = str(home)
        os.environ.pop("SSH_AUTH_SOCK", None)
        yield Loopback(home, servers)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _client_home(home: Path) -> Path:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, parents=True)
    _keygen(ssh / "cj_key")
    (ssh / "config").write_text("")
    (ssh / "known_hosts").write_text("")
    return home


def _start(directory: Path, alias: str, host_key: Path, home: Path, plain_shell: bool) -> Server:
    directory.mkdir(mode=0o700, parents=True)
    cache = directory / "cache"
    cache.mkdir()
    authorized = directory / "authorized_keys"
    authorized.write_text((home / ".ssh" / "cj_key.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(_sshd_config(port, host_key, authorized, cache, plain_shell))
    command = [SSHD, "-D", "-f", str(config), "-E", str(directory / "sshd.log")]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    server = Server(alias, port, cache, process)
    try:
        _wait_for_port(port, process)
    except BaseException:
        server.stop()
        raise
    return server


def _sshd_config(
    port: int, host_key: Path, authorized: Path, cache: Path, plain_shell: bool
) -> str:
    # One SetEnv line: sshd keeps only the first.
    shell_level = "SHLVL=1 " if plain_shell else ""
    return f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile {authorized}
MaxSessions 100
MaxStartups 100:30:200
SetEnv {shell_level}XDG_CACHE_HOME={cache}
"""


def _name(home: Path, server: Server) -> None:
    """The server's ``Host`` block in ``~/.ssh/config`` and its key in ``known_hosts``."""
    ssh = home / ".ssh"
    block = (
        f"Host {server.alias}\n    HostName 127.0.0.1\n    Port {server.port}\n"
        f"    User {getpass.getuser()}\n    IdentityFile {ssh / 'cj_key'}\n"
        f"    UserKnownHostsFile {ssh / 'known_hosts'}\n\n"
    )
    with open(ssh / "config", "a") as config:
        config.write(block)
    key = " ".join(Path(server.cache.parent.parent / "host_key.pub").read_text().split()[:2])
    with open(ssh / "known_hosts", "a") as known:
        known.write(f"[127.0.0.1]:{server.port} {key}\n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"sshd on 127.0.0.1:{port} does not listen after {START_TIMEOUT} s")
