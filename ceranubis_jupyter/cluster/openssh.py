"""The OpenSSH transport: nodes started through the system's ``ssh`` client, over pipes.

Opt-in: ``CERANUBIS_SSH_CLIENT=openssh`` makes every SSH host of the process use it instead
of asyncssh (:mod:`.ssh`). The node, its bootstrap (``BOOT`` says OK, or NEED and gets the
bundle) and the frames are the same; what changes is who speaks SSH on the client: the
``ssh`` binary in its own process, in C, fed and read through pipes as a local node is
(:class:`~.transport.ProcessChannel`: writes from the submitting thread, no asyncssh
layers). A sequential round trip costs the client about a third less CPU and ~25 % less
time (``benchmarks/ab.py --ssh-w3``, see notes).

::

    ssh -F <config> -T -o BatchMode=yes -o StrictHostKeyChecking=yes ...
        -- host 'exec python3 -E -s -c BOOT ...'

``<config>`` (written once under the cache directory) includes ``$HOME/.ssh/config`` first
(the user's settings win) and then fills in what asyncssh would use: ``$HOME``'s
known_hosts and default keys, the preferred cipher and key exchange. The options that keep the
connection safe are forced on the command line, which wins over any config: never ask
(a prompt would hang the start), never connect to a host whose key is not known, forward
nothing, no terminal, no shared master connection. Host(..., connect_options) are
asyncssh's and are refused here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
from pathlib import Path

from ..errors import (
    AuthError,
    BootstrapError,
    ConfigError,
    HostError,
    HostKeyError,
    HostUnreachable,
)
from .bootstrap import Bundle, boot_answer, node_bundle, remote_command
from .hosts import Host
from .transport import Channel, ProcessChannel, Transport, start_process_channel

# The environment variable that picks the SSH client for remote hosts: "asyncssh" (the
# default, in this process) or "openssh" (the system's ssh binary in its own process).
SSH_CLIENT_ENV = "CERANUBIS_SSH_CLIENT"
SSH_CLIENTS = ("asyncssh", "openssh")
# The OpenSSH client (looked up on PATH).
SSH_BINARY = "ssh"
# Seconds to reach the host and log in (ssh's ConnectTimeout, unless the user's config
# names one): as the asyncssh transport's CONNECT_TIMEOUT.
CONNECT_TIMEOUT = 10
# Seconds from starting ssh to BOOT's answer (connect, log in, start python, unpack a sent
# bundle): inside the scheduler's START_TIMEOUT, so our clearer error wins.
BOOT_TIMEOUT = 25.0
# Cipher preferred when the user's config names none: about twice chacha20's throughput
# where the CPU has AES instructions.
PREFERRED_CIPHER = "aes128-gcm@openssh.com"
# Key exchange preferred when the user's config names none: asyncssh's choice. OpenSSH 9's
# default hybrid (sntrup761x25519, post-quantum) cost ~0.25 s more per connection on a
# loaded 2-core machine (0.67 s against 0.41 s to run `true`); name it in ~/.ssh/config
# (KexAlgorithms) to get it back.
PREFERRED_KEX = "curve25519-sha256"
# Forced on the command line (it wins over any config): see the module docstring.
FORCED_OPTIONS = (
    "BatchMode=yes",
    "StrictHostKeyChecking=yes",
    "ForwardAgent=no",
    "ForwardX11=no",
    "ClearAllForwardings=yes",
    "RequestTTY=no",
    "PermitLocalCommand=no",
    "ControlMaster=no",
    "ControlPath=none",
)
# The keys asyncssh offers by default, in its order (those that exist are named).
DEFAULT_KEYS = ("id_ed25519_sk", "id_ecdsa_sk", "id_ed448", "id_ed25519", "id_ecdsa", "id_rsa")
# Longest BOOT answer line we accept before calling the stream garbage.
MAX_BOOT_LINE = 4096
# Exit status of ssh itself failing (connect, host key, auth), and of a missing command.
_SSH_FAILED = 255
_NOT_FOUND = 127
# What ssh's stderr says, per error class (checked in this order).
_STDERR_CLASSES: tuple[tuple[type[HostError], re.Pattern[str]], ...] = (
    (HostKeyError, re.compile(r"host key verification failed|identification has changed", re.I)),
    (AuthError, re.compile(r"permission denied|too many authentication failures", re.I)),
    (
        HostUnreachable,
        re.compile(
            r"could not resolve|connection refused|timed out|no route to host|network is "
            r"unreachable|connection closed by|connection reset",
            re.I,
        ),
    ),
)


class OpenSSHTransport(Transport):
    """Starts nodes on one host through the ``ssh`` binary.

    Args:
        host: the host (its alias, user and port; ``connect_options`` are refused).
        max_workers: workers when ``host.workers`` is not given (default: the host's cores).
        bundle: the node bundle to ship (default: this installation's).
    """

    def __init__(
        self, host: Host, max_workers: int | None = None, bundle: Bundle | None = None
    ) -> None:
        if host.connect_options:
            names = ", ".join(sorted(host.connect_options))
            raise ConfigError(
                f"{host.address}: {names} are asyncssh options, which {SSH_CLIENT_ENV}=openssh "
                "does not use; put the settings in ~/.ssh/config, or unset "
                f"{SSH_CLIENT_ENV}"
            )
        self.spec = host
        self.host = host.address
        self.workers = host.workers or max_workers
        self.group = host.group
        self._bundle = bundle

    def command(self, digest: str) -> list[str]:
        """The ``ssh`` command line that starts a node whose bundle is ``digest``."""
        argv = [SSH_BINARY, "-F", str(client_config()), "-T"]
        for option in FORCED_OPTIONS:
            argv += ["-o", option]
        if self.spec.user:
            argv += ["-l", self.spec.user]
        if self.spec.port:
            argv += ["-p", str(self.spec.port)]
        return [*argv, "--", self.spec.hostname, remote_command(self.spec.python, digest)]

    async def start(self) -> Channel:
        """Start ssh and the node; returns its channel (a HostError on any failure)."""
        if self._bundle is None:
            self._bundle = await asyncio.to_thread(node_bundle)
        bundle = self._bundle
        try:
            channel = await start_process_channel(self.host, self.command(bundle.digest))
        except OSError as error:
            raise BootstrapError(
                self.host,
                f"cannot run {SSH_BINARY!r} ({error}); install the OpenSSH client or unset "
                f"{SSH_CLIENT_ENV}",
            ) from error
        try:
            await asyncio.wait_for(self._boot(channel, bundle), BOOT_TIMEOUT)
        except asyncio.TimeoutError:
            await channel.abort()
            raise HostUnreachable(
                self.host,
                f"no node within {BOOT_TIMEOUT:g} s; check that `ssh {self.host}` works and "
                "that the host is not overloaded",
            ) from None
        except BaseException:
            await channel.abort()
            raise
        return channel

    async def _boot(self, channel: ProcessChannel, bundle: Bundle) -> None:
        ready, refusal, line = await boot_answer(
            lambda: read_line(channel), lambda framed: channel.write([framed]), bundle
        )
        if ready:
            return
        if refusal is not None:
            raise BootstrapError(self.host, f"{refusal}; {self._advice()}")
        raise await self._failure(channel, line)

    async def _failure(self, channel: ProcessChannel, line: bytes | None) -> HostError:
        """Why ssh or the node ended before BOOT's answer (from the exit status and
        ssh's stderr)."""
        status, tail = await channel.exited(), channel.stderr_tail()[-500:]
        if status == _SSH_FAILED:
            return classify_ssh_error(self.host, tail)
        if status == _NOT_FOUND:
            what = tail or "command not found"
            python = self.spec.python
            return BootstrapError(
                self.host, f"cannot run python {python!r} there ({what}); {self._advice()}"
            )
        said = f"; it said {line[:200]!r}" if line else ""
        stderr = f"; stderr: {tail}" if tail else ""
        return BootstrapError(
            self.host,
            f"{self.spec.python!r} ended (exit status {status}) before the node started"
            f"{said}{stderr}; {self._advice()}",
        )

    def _advice(self) -> str:
        ours = f"{sys.version_info.major}.{sys.version_info.minor}"
        return (
            f"install python {ours} on the host, or pass "
            f"Host({self.spec.address!r}, python='/path/to/python{ours}')"
        )


def classify_ssh_error(host: str, stderr: str) -> HostError:
    """The error for ``ssh`` failing (exit status 255), from what it wrote to stderr."""
    said = stderr.strip() or "no message"
    for kind, pattern in _STDERR_CLASSES:
        if pattern.search(said):
            return kind(host, f"ssh failed: {said}; {_ADVICE[kind].format(host=host)}")
    return HostUnreachable(host, f"ssh failed: {said}; check that `ssh {host}` works")


_ADVICE: dict[type[HostError], str] = {
    HostKeyError: (
        "ceranubis never connects without checking the host key: connect once with "
        "`ssh {host}` and accept the key after checking its fingerprint"
    ),
    AuthError: (
        "check the agent (ssh-add -l), the IdentityFile and User in ~/.ssh/config, and that "
        "`ssh {host}` logs in without a password"
    ),
    HostUnreachable: "check the host name, port and network (does `ssh {host}` work?)",
}


async def read_line(channel: ProcessChannel) -> bytes | None:
    """One line of BOOT's answer (``None`` at once at the end); what follows is kept for
    the channel's next read."""
    buffer = bytearray()
    while b"\n" not in buffer:
        if len(buffer) > MAX_BOOT_LINE:
            return bytes(buffer)
        data = await channel.read()
        if not data:
            return bytes(buffer) if buffer else None
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\n")
    if rest:
        channel.stdout.unread(rest)
    return line


def client_config(home: str | None = None) -> Path:
    """The ssh config every node's ``ssh`` reads (written on first use, 0600)."""
    text = config_text(home or os.path.expanduser("~"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(cache, "ceranubis", f"ssh-config-{digest}")
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        draft = path.with_suffix(f".{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as out:
            out.write(text)
        os.replace(draft, path)
    return path


def config_text(home: str) -> str:
    """The user's ``$HOME/.ssh/config`` first (first values win in ssh), then what asyncssh
    would use where it names nothing."""
    ssh_dir = Path(home, ".ssh")
    lines = []
    if (ssh_dir / "config").is_file():
        lines.append(f"Include {_quoted(ssh_dir / 'config')}")
    lines += [
        "Host *",
        f"    UserKnownHostsFile {_quoted(ssh_dir / 'known_hosts')}",
        f"    ConnectTimeout {CONNECT_TIMEOUT}",
        f"    Ciphers ^{PREFERRED_CIPHER}",
        f"    KexAlgorithms ^{PREFERRED_KEX}",
    ]
    lines += [f"    IdentityFile {_quoted(key)}" for key in _default_keys(ssh_dir)]
    return "\n".join(lines) + "\n"


def _default_keys(ssh_dir: Path) -> list[Path]:
    return [ssh_dir / name for name in DEFAULT_KEYS if (ssh_dir / name).is_file()]


def _quoted(path: Path) -> str:
    return '"' + str(path).replace('"', '\\"') + '"'
