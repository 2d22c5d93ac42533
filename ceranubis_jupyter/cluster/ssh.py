"""The SSH transport: nodes on remote hosts over asyncssh, nothing installed there.

::

    SSHTransport.start()
      ├─ asyncssh.connect(host)        ~/.ssh/config, the agent, known_hosts (always checked)
      │    (ssh_options: the resolved options refuse unchecked host keys, forward nothing
      │     and never ask for a terminal, whatever the config says)
      │    (the bundle is built in a thread meanwhile)
      ├─ session: exec python3 -E -s -c BOOT ceranubis-node SHA   (bootstrap.remote_command)
      ├─ BOOT says OK, or NEED and gets the bundle, or E <why>
      └─ SSHChannel: the node's stdin/stdout, the same frames as the local transport

Each node has its own connection, opened when the node starts and closed with it, so hosts
connect concurrently and a restart after a network failure starts from a fresh connection.
Every way a connection can fail becomes a :class:`HostError` subclass that names the host and
says what to do; the scheduler keeps the other hosts going.

A node never depends on SSH signals (OpenSSH refuses them for root): it exits when its stdin
closes (we close it, or sshd does when the connection dies) or when we fall silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any, cast

import asyncssh

from ..errors import (
    AuthError,
    BootstrapError,
    HostError,
    HostKeyError,
    HostUnreachable,
)
from ..wire.protocol import Buffer
from .bootstrap import Bundle, boot_answer, node_bundle, remote_command
from .hosts import Host
from .pipes import Receiver
from .ssh_options import check_host_options, resolve_options
from .ssh_packets import PacketGather
from .transport import EXIT_GRACE_SECONDS, STDERR_TAIL, Channel, Transport

log = logging.getLogger("ceranubis.ssh")

# Seconds to reach a host and log in before it counts as unreachable: a LAN answers in
# milliseconds, a slow VPN in a few seconds; longer only delays telling the user.
CONNECT_TIMEOUT = 10.0
# Seconds for the remote python to start and answer BOOT (and unpack a sent bundle); with
# CONNECT_TIMEOUT it stays inside the scheduler's START_TIMEOUT, so our clearer error wins.
BOOT_ANSWER_TIMEOUT = 15.0
# Cipher preferred when both ends offer it (unless the ssh config or the Host options name
# ciphers): about twice chacha20's throughput here (AES-NI).
PREFERRED_CIPHER = "aes128-gcm@openssh.com"
# Received bytes buffered before we stop reading the channel (the SSH window then fills
# and the node blocks): bounds client memory if the scheduler falls behind.
RECV_HIGH_WATER = 16 << 20
# Chunks smaller than this are joined into one channel write (one SSH packet, not many).
JOIN_LIMIT = 1 << 16
# Longest BOOT answer line we accept before calling the stream garbage.
MAX_BOOT_LINE = 4096
# Exit status of a shell command that was not found.
_NOT_FOUND = 127
# The port known_hosts names hosts without (others are written ``[host]:port``).
_SSH_PORT = 22


class SSHTransport(Transport):
    """Starts nodes on one host over SSH.

    Args:
        host: the host and its options (``connect_options`` go to ``asyncssh.connect``).
        max_workers: workers when ``host.workers`` is not given (default: the host's cores).
        bundle: the node bundle to ship (default: this installation's).
    """

    def __init__(
        self, host: Host, max_workers: int | None = None, bundle: Bundle | None = None
    ) -> None:
        check_host_options(host)
        self.spec = host
        self.host = host.address
        self.workers = host.workers or max_workers
        self.group = host.group
        self._bundle = bundle

    async def start(self) -> Channel:
        """Connect, bootstrap a node and return its channel (a HostError on any failure)."""
        bundle_job = asyncio.ensure_future(self._get_bundle())  # built while we connect
        try:
            conn = await self._connect()
        except BaseException:
            bundle_job.cancel()
            raise
        try:
            return await self._start_node(conn, await bundle_job)
        except BaseException:
            await _close_connection(conn)
            raise

    async def _get_bundle(self) -> Bundle:
        if self._bundle is None:
            self._bundle = await asyncio.to_thread(node_bundle)
        return self._bundle

    # ------------------------------------------------------------------ connecting

    async def connect(self) -> asyncssh.SSHClientConnection:
        """A connection to the host for one-off commands (``kill-strays``); close it after."""
        return await self._connect()

    async def _connect(self) -> asyncssh.SSHClientConnection:
        timeout = float(self.spec.connect_options.get("connect_timeout") or CONNECT_TIMEOUT)
        client = _Client()
        log.debug("[host=%s] connecting (timeout %g s)", self.host, timeout)
        try:
            conn = await asyncio.wait_for(self._open(client), timeout)
        except HostError:
            raise
        except Exception as error:
            raise self._connect_error(error, client, timeout) from error
        log.debug("[host=%s] connected (cipher %s)", self.host, conn.get_extra_info("send_cipher"))
        return conn

    async def _open(self, client: _Client) -> asyncssh.SSHClientConnection:
        """Resolve and check the options (ssh_options), then connect with them."""
        options, resolved = await resolve_options(self.spec)
        extra = {"known_hosts": options["known_hosts"]}  # pinned by resolve_options
        if "encryption_algs" not in options and resolved.config.get("Ciphers") is None:
            extra["encryption_algs"] = f"^{PREFERRED_CIPHER}"  # the ssh config's wins
        # Built on the resolved options: ~/.ssh/config is parsed once per connection, not
        # twice (~2.5 ms of client CPU per host, which adds up over many hosts).
        conn, _ = await asyncssh.create_connection(
            lambda: client,
            self.spec.hostname,
            port=self.spec.port or (),
            username=self.spec.user or (),
            options=resolved,
            **extra,
        )
        return conn

    def _connect_error(self, error: Exception, client: _Client, timeout: float) -> HostError:
        host = self.host
        if isinstance(error, asyncio.TimeoutError):
            return HostUnreachable(
                host,
                (
                    f"no ssh answer within {timeout:g} s; check that the host is up and that "
                    f"`ssh {host}` works, or give Host(..., connect_timeout=...) more time"
                ),
            )
        if isinstance(error, asyncssh.HostKeyNotVerifiable):
            return HostKeyError(host, client.host_key_advice(host, error))
        if isinstance(error, asyncssh.PermissionDenied):
            return AuthError(
                host,
                (
                    f"the host refused our ssh credentials ({error.reason}); check the agent "
                    "(ssh-add -l), the IdentityFile and User in ~/.ssh/config, and that "
                    f"`ssh {host}` logs in without a password"
                ),
            )
        if isinstance(error, (OSError, asyncssh.Error)):
            return HostUnreachable(
                host,
                (
                    f"cannot connect: {_describe(error)}; check the host name, port and network "
                    f"(does `ssh {host}` work?)"
                ),
            )
        return BootstrapError(
            host,
            (
                f"could not set up the ssh connection: {_describe(error)}; check the host's "
                "entry in ~/.ssh/config and the Host(...) options"
            ),
        )

    # ------------------------------------------------------------------ bootstrapping

    async def _start_node(self, conn: asyncssh.SSHClientConnection, bundle: Bundle) -> Channel:
        command = remote_command(self.spec.python, bundle.digest)
        try:
            chan, session = await conn.create_session(_NodeSession, command, encoding=None)
        except (OSError, asyncssh.Error) as error:
            raise BootstrapError(
                self.host,
                (
                    f"the host refused to run a command: {_describe(error)}; check that the "
                    "account has a login shell"
                ),
            ) from error
        channel = SSHChannel(self.host, conn, chan, cast(_NodeSession, session))
        try:
            await asyncio.wait_for(self._boot(channel, bundle), BOOT_ANSWER_TIMEOUT)
        except asyncio.TimeoutError:
            raise BootstrapError(
                self.host,
                (
                    f"the node did not start within {BOOT_ANSWER_TIMEOUT:g} s (is the host "
                    "overloaded, or its disk slow?)"
                ),
            ) from None
        return channel

    async def _boot(self, channel: SSHChannel, bundle: Bundle) -> None:
        def send_bundle(framed: bytes) -> None:
            log.info("[host=%s] sending the node bundle (%d bytes)", self.host, len(framed))
            channel.write([framed])

        ready, refusal, line = await boot_answer(channel.read_line, send_bundle, bundle)
        if ready:
            log.debug("[host=%s] node started (%s)", self.host, self.spec.python)
            return
        if refusal is not None:
            raise BootstrapError(self.host, f"{refusal}; {self._advice()}")
        raise await self._boot_failure(channel, line)

    async def _boot_failure(self, channel: SSHChannel, line: bytes | None) -> BootstrapError:
        status = await channel.exit_status()
        tail = channel.stderr_tail()[-500:]
        python = self.spec.python
        if status == _NOT_FOUND:
            return BootstrapError(
                self.host,
                (
                    f"cannot run python {python!r} there ({tail or 'command not found'}); "
                    f"{self._advice()}"
                ),
            )
        said = f"; it said {line[:200]!r}" if line else ""
        return BootstrapError(
            self.host,
            (
                f"{python!r} ended (exit status {status}) before the node started{said}"
                f"{'; stderr: ' + tail if tail else ''}; {self._advice()}"
            ),
        )

    def _advice(self) -> str:
        ours = f"{sys.version_info.major}.{sys.version_info.minor}"
        return (
            f"install python {ours} on the host, or pass "
            f"Host({self.spec.address!r}, python='/path/to/python{ours}')"
        )


class _Client(asyncssh.SSHClient):
    """Remembers the host key a server offered, to explain a refusal."""

    def __init__(self) -> None:
        self.conn: asyncssh.SSHClientConnection | None = None
        self.offered: Any = None
        self.where = ""
        self.known_before = False

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        self.offered = key
        self.where = f"[{host}]:{port}" if port != _SSH_PORT else host
        # Keys known for this host that did not match: the key has changed.
        self.known_before = bool(getattr(self.conn, "_trusted_host_keys", None))
        return False  # only known_hosts decides; we never accept an unknown key

    def host_key_advice(self, alias: str, error: Exception) -> str:
        """The message for a refused host key: unknown or changed, and how to fix it."""
        if self.offered is None:  # refused on the way, e.g. by a ProxyJump host
            return (
                f"a host key was refused ({_describe(error)}); ceranubis never connects "
                f"without checking it: connect once with `ssh {alias}` and check the keys of "
                "every host on the way (ProxyJump hosts too)"
            )
        fingerprint = f"{self.offered.get_algorithm()} {self.offered.get_fingerprint()}"
        if self.known_before:
            return (
                f"its host key has changed (now {fingerprint}); someone may be intercepting "
                "the connection. If the change is expected, remove the old key with "
                f"`ssh-keygen -R '{self.where}'` and connect once with `ssh {alias}` to add "
                "the new one"
            )
        return (
            f"its host key ({fingerprint}) is not in known_hosts, and ceranubis never connects "
            f"without checking it; connect once with `ssh {alias}` and accept the key after "
            "checking its fingerprint (or add it with ssh-keyscan to ~/.ssh/known_hosts)"
        )


class _NodeSession(asyncssh.SSHClientSession[bytes]):
    """Buffers what the node writes (or hands it to a receiver); tracks flow control."""

    def __init__(self) -> None:
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.receiver: Receiver | None = None
        self.buffer = bytearray()
        self.stderr = bytearray()
        self.eof = False
        self.paused = False
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr += data
            del self.stderr[:-STDERR_TAIL]
            return
        if self.receiver is not None:
            self.receiver(data)
            return
        self.buffer += data
        self.readable.set()
        if len(self.buffer) > RECV_HIGH_WATER and self.chan is not None:
            self.paused = True
            self.chan.pause_reading()

    def eof_received(self) -> bool:
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        self.writable.set()

    def _ended(self) -> None:
        if not self.eof and self.receiver is not None:
            self.receiver(b"")
        self.eof = True
        self.readable.set()

    def push_to(self, receiver: Receiver) -> None:
        """Hand what is buffered, then everything that arrives, to ``receiver``."""
        if self.buffer:
            receiver(bytes(self.take()))
        self.receiver = receiver
        if self.eof:
            receiver(b"")

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def take(self) -> bytearray:
        """Everything buffered so far (and let the channel flow again)."""
        data, self.buffer = self.buffer, bytearray()
        self.readable.clear()
        if self.paused and self.chan is not None:
            self.paused = False
            self.chan.resume_reading()
        return data


class SSHChannel(Channel):
    """A node's stdin/stdout over an SSH session; owns its connection."""

    # asyncssh's write path on an open channel (buffer, encrypt, ``transport.write``) calls
    # no loop callback: a submitting thread may run it while the loop sleeps.
    direct_writes = True

    def __init__(
        self,
        host: str,
        conn: asyncssh.SSHClientConnection,
        chan: asyncssh.SSHClientChannel[bytes],
        session: _NodeSession,
    ) -> None:
        self.host = host
        self.conn = conn
        self.chan = chan
        self.session = session
        self._closed = False
        self._packets = PacketGather(conn)

    def set_receiver(self, receiver: Receiver) -> None:
        self.session.push_to(receiver)

    async def read(self) -> bytes:
        session = self.session
        while not session.buffer and not session.eof:
            session.readable.clear()
            await session.readable.wait()
        return session.take()  # type: ignore[return-value]  # bytearray: no copy

    async def read_line(self) -> bytes | None:
        """One line of BOOT's answer; what follows stays buffered for :meth:`read`."""
        session = self.session
        while b"\n" not in session.buffer:
            if session.eof or len(session.buffer) > MAX_BOOT_LINE:
                return bytes(session.buffer) if session.buffer else None
            session.readable.clear()
            await session.readable.wait()
        line, _, rest = bytes(session.buffer).partition(b"\n")
        session.buffer = bytearray(rest)
        return line

    def write(self, chunks: Sequence[Buffer]) -> None:
        if self._closed:
            return
        small: list[Buffer] = []
        self._packets.hold()
        try:
            with contextlib.suppress(OSError, asyncssh.Error):
                for chunk in chunks:
                    if len(chunk) >= JOIN_LIMIT:
                        self._write_joined(small)
                        self.chan.write(chunk)
                    else:
                        small.append(chunk)
                self._write_joined(small)
        finally:
            self._packets.release()

    def _write_joined(self, small: list[Buffer]) -> None:
        if small:
            self.chan.write(b"".join(small))
            small.clear()

    async def drain(self) -> None:
        if not self._closed:
            await self.session.writable.wait()

    async def exit_status(self) -> int | None:
        """The node's exit status, once its session has closed (``None`` if unknown)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.chan.wait_closed(), EXIT_GRACE_SECONDS)
        status: int | None = self.chan.get_exit_status()
        return status

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, asyncssh.Error):
            self.chan.write_eof()  # the node exits on EOF; no SSH signals (root is refused them)
        try:
            await asyncio.wait_for(self.chan.wait_closed(), EXIT_GRACE_SECONDS)
        except asyncio.TimeoutError:
            log.warning(
                "[host=%s] node did not exit within %.0f s of EOF; dropping the connection",
                self.host,
                EXIT_GRACE_SECONDS,
            )
        finally:
            await _close_connection(self.conn)

    async def abort(self) -> None:
        """Drop the connection without a goodbye; sshd closes the node's stdin."""
        self._closed = True
        self.conn.abort()

    def stderr_tail(self) -> str:
        return self.session.stderr.decode("utf-8", "replace").strip()

    def read_fd(self) -> int | None:
        sock = None if self._closed else self.conn.get_extra_info("socket")
        return sock.fileno() if sock is not None else None


async def _close_connection(conn: asyncssh.SSHClientConnection) -> None:
    """Close a connection; abort it if the peer does not answer (a partition)."""
    conn.close()
    try:
        await asyncio.wait_for(conn.wait_closed(), EXIT_GRACE_SECONDS)
    except asyncio.TimeoutError:
        conn.abort()
    except BaseException:
        conn.abort()
        raise


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[0].lower() + text[1:] if text else text
