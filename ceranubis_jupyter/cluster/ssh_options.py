"""The options of a node's SSH connection, checked after ``~/.ssh/config`` has had its say.

asyncssh reads the user's ssh config, and a few of its settings must never reach a node's
connection unasked:

- ``UserKnownHostsFile none`` (or a ``Host`` given no known-hosts file) turns host-key
  checking off. Refused with a :class:`HostKeyError` naming the host, whatever set it, for
  the host and for every ``ProxyJump`` host on the way (fail closed).
- ``ForwardAgent`` and ``ForwardX11Trusted``: a node runs whatever tasks it is sent, so
  forwarding would lend them the user's keys or display. Off unless a ``Host(...)`` option
  asks for it.
- ``RequestTTY``: a terminal would rewrite the node's binary frames (``\\n`` → ``\\r\\n``,
  echo). Never requested; a ``Host(request_pty=...)`` option is refused.

These options hold for every session of the connection: the node's and ``kill-strays``'.
"""

from __future__ import annotations

from typing import Any

import asyncssh

from ..errors import ConfigError, HostKeyError
from .hosts import Host

# Forwardings a node's connection never takes from the ssh config; a Host option may ask.
OFF_UNLESS_ASKED: dict[str, Any] = {"agent_forwarding": False, "x11_forwarding": False}
# ProxyJump hops checked for host-key settings; a longer chain is refused (likely a loop).
MAX_JUMP_HOPS = 8


def check_host_options(host: Host) -> None:
    """Refuse ``Host(...)`` options that would weaken a connection, before connecting.

    Raises:
        ConfigError: ``known_hosts=None`` or ``request_pty`` was passed.
    """
    options = host.connect_options
    if "known_hosts" in options and options["known_hosts"] is None:
        raise ConfigError(
            f"{host.address}: known_hosts=None would turn off host-key checking, which "
            "ceranubis never does; pass a known_hosts file or add the key to "
            "~/.ssh/known_hosts"
        )
    if options.get("request_pty"):
        raise ConfigError(
            f"{host.address}: request_pty would give the node a terminal, which corrupts "
            "its binary stream; drop the option"
        )


async def resolve_options(host: Host) -> tuple[dict[str, Any], asyncssh.SSHClientConnectionOptions]:
    """The ``asyncssh.connect`` keywords for ``host``, and the options they resolve to.

    Raises:
        HostKeyError: the resolved settings turn host-key checking off for the host or for
            a ProxyJump host on the way.
    """
    # ``config=()`` is asyncssh.connect's default (~/.ssh/config); the options' is none.
    options = {"config": (), **OFF_UNLESS_ASKED, **host.connect_options, "request_pty": False}
    resolved = await asyncssh.SSHClientConnectionOptions.construct(
        None, host=host.hostname, port=host.port or (), username=host.user or (), **options
    )
    _check_known_hosts(host.address, host.address, resolved)
    # Pinned: asyncssh re-reads the config after CanonicalizeHostname, and a ``Match
    # canonical`` block must not turn checking off behind this check.
    options["known_hosts"] = resolved.known_hosts
    await _check_jumps(host.address, resolved.tunnel, options["config"], MAX_JUMP_HOPS)
    return options, resolved


async def _check_jumps(address: str, tunnel: object, config: Any, hops_left: int) -> None:
    """Check each ProxyJump host as asyncssh will connect to it (its own config entry)."""
    if not isinstance(tunnel, str):
        return  # no jump, or a connection the caller opened (and checked) itself
    for index, hop in enumerate(tunnel.split(",")):
        if hops_left <= 0:
            raise HostKeyError(address, f"the ProxyJump chain is longer than {MAX_JUMP_HOPS}")
        hops_left -= 1
        user, _, rest = hop.rpartition("@")
        name, colon, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
        resolved = await asyncssh.SSHClientConnectionOptions.construct(
            None, host=name, port=int(port) if colon else (), username=user or (), config=config
        )
        _check_known_hosts(address, f"the jump host {name}", resolved)
        if index == 0:  # asyncssh honours only the first hop's own ProxyJump
            await _check_jumps(address, resolved.tunnel, config, hops_left)


def _check_known_hosts(
    address: str, which: str, resolved: asyncssh.SSHClientConnectionOptions
) -> None:
    if resolved.known_hosts is None:
        raise HostKeyError(
            address,
            (
                f"the ssh settings for {which} turn host-key checking off (UserKnownHostsFile "
                "none in ~/.ssh/config, or a Host without known hosts), and ceranubis never "
                "connects without checking host keys; remove that setting for this host (or name a "
                "known_hosts file) and connect once with `ssh` to check and add its key"
            ),
        )
