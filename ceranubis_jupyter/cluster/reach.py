"""How to reach hosts: the transport that starts a node on each one.

Local hosts get a :class:`~.transport.LocalTransport` (pipes); the others an
:class:`~.ssh.SSHTransport`, whose module (and asyncssh) is imported only when a remote host
is used, so the embedded default starts without it. ``CERANUBIS_SSH_CLIENT=openssh`` gives
the remote hosts an :class:`~.openssh.OpenSSHTransport` instead (the ``ssh`` binary).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..config import expand_host_groups
from ..errors import ConfigError
from .hosts import Host, HostSpec, as_host, check_unique
from .openssh import SSH_CLIENT_ENV, SSH_CLIENTS, OpenSSHTransport
from .transport import LocalTransport, Transport


def transports_for(
    hosts: Sequence[HostSpec] | HostSpec | None, max_workers: int | None = None
) -> list[Transport]:
    """One transport per host; ``None`` means the embedded default."""
    if hosts is None:
        return [LocalTransport(max_workers)]
    if isinstance(hosts, (str, Host)):
        hosts = [hosts]
    resolved = [as_host(spec) for spec in expand_host_groups(list(hosts))]
    if not resolved:
        raise ConfigError("hosts is an empty list; pass None for the embedded default")
    check_unique(resolved)
    return [transport_for(host, max_workers) for host in resolved]


def transport_for(host: Host, max_workers: int | None = None) -> Transport:
    """The transport that starts nodes on ``host``."""
    if host.is_local:
        transport = LocalTransport(host.workers or max_workers, host=host.name)
        transport.group = host.group
        return transport
    client = os.environ.get(SSH_CLIENT_ENV, "").strip().lower() or SSH_CLIENTS[0]
    if client not in SSH_CLIENTS:
        raise ConfigError(f"{SSH_CLIENT_ENV}={client!r}: use one of {', '.join(SSH_CLIENTS)}")
    if client == "openssh":
        return OpenSSHTransport(host, max_workers)
    from .ssh import SSHTransport  # asyncssh is imported only when a remote host is used

    return SSHTransport(host, max_workers)
