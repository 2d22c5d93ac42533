"""Host specs: where nodes run.

A host is ``"local"`` (node processes on this machine), an ``~/.ssh/config`` alias such as
``"gpu1"``, ``"user@host"``, ``"user@host:port"``, or a :class:`Host` for everything else;
``"@gpu"`` stands for the hosts of a group in the config file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..config import expand_host_groups
from ..errors import ConfigError, ConfigTypeError

LOCAL = "local"
_SPEC = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^@:\s\[\]]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Host:
    """A host with options.

    Args:
        address: ``"local"``, an ssh alias, ``"user@host"`` or ``"user@host:port"``;
            ``"local:<group>"`` is ``"local"`` in that group.
        workers: worker processes on the host (default: its core count).
        python: the remote interpreter (path or name on the remote ``PATH``).
        group: a label; tasks submitted with ``group=`` run only on hosts of that group.
        connect_options: passed to ``asyncssh.connect`` (e.g. ``known_hosts=...``).
    """

    address: str
    workers: int | None = None
    python: str = "python3"
    group: str | None = None
    connect_options: dict[str, Any] = field(default_factory=dict)
    user: str | None = None
    port: int | None = None
    hostname: str = ""

    def __init__(
        self,
        address: str,
        *,
        workers: int | None = None,
        python: str = "python3",
        group: str | None = None,
        **connect_options: Any,
    ) -> None:
        address, group = _local_group(address, group)
        user, hostname, port = parse_address(address)
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)):
            raise ConfigTypeError(f"{address}: workers must be an int, got {workers!r}")
        if workers is not None and workers <= 0:
            raise ConfigError(f"{address}: workers must be greater than 0, got {workers}")
        if not isinstance(python, str):
            raise ConfigTypeError(f"{address}: python must be a string, got {python!r}")
        if group is not None and not isinstance(group, str):
            raise ConfigTypeError(f"{address}: group must be a string, got {group!r}")
        if not python or any(c in python for c in "\n\0"):
            raise ConfigError(f"{address}: python must be a path or command name")
        for name, value in dict(
            address=address,
            workers=workers,
            python=python,
            group=group,
            connect_options=dict(connect_options),
            user=user,
            port=port,
            hostname=hostname,
        ).items():
            object.__setattr__(self, name, value)

    @property
    def is_local(self) -> bool:
        """True for the embedded default (node processes on this machine)."""
        return self.hostname == LOCAL and self.user is None and self.port is None

    @property
    def name(self) -> str:
        """What the executor calls the host: its address, and for a local host of a group
        ``local:<group>`` (so that local nodes of several groups can work side by side)."""
        if self.is_local and self.group is not None:
            return f"{LOCAL}:{self.group}"
        return self.address

    def __hash__(self) -> int:
        return hash((self.address, self.workers, self.python, self.group))


HostSpec = str | Host


def _local_group(address: str, group: str | None) -> tuple[str, str | None]:
    """``"local:<group>"`` (a :attr:`Host.name`) as ``("local", group)``; else unchanged."""
    prefix = LOCAL + ":"
    if not isinstance(address, str) or not address.startswith(prefix):
        return address, group
    named = address[len(prefix) :]
    if not named or named.isdigit():  # "local:22": ssh to a host called local
        return address, group
    if group is not None and group != named:
        raise ConfigError(f"{address}: the address names group {named!r}, group= {group!r}")
    return LOCAL, named


def parse_address(address: str) -> tuple[str | None, str, int | None]:
    """Split ``"user@host:port"`` into ``(user, host, port)``.

    Raises:
        ConfigError: the text is not a host spec.
    """
    if not isinstance(address, str):
        raise ConfigTypeError(f"a host must be a string or Host(...), got {address!r}")
    match = _SPEC.match(address.strip())
    if match is None:
        raise ConfigError(
            f"bad host spec {address!r}: use 'local', an ssh alias, 'user@host' or 'user@host:port'"
        )
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"bad port in host spec {address!r}")
    return match["user"], match["host"].strip("[]"), port


def as_host(spec: HostSpec) -> Host:
    """A :class:`Host` for a spec."""
    return spec if isinstance(spec, Host) else Host(spec)


def parse_host_list(text: str) -> list[Host]:
    """Parse ``"gpu1,gpu2,local"`` (the magic's ``--hosts``); ``@name`` is a host group
    of the config file (:mod:`~ceranubis_jupyter.config`)."""
    specs = [part.strip() for part in text.split(",") if part.strip()]
    if not specs:
        raise ConfigError("--hosts needs at least one host")
    return [Host(spec) for spec in expand_host_groups(specs)]


def check_unique(hosts: list[Host]) -> None:
    """Refuse a host listed twice (local nodes of different groups are different hosts)."""
    seen: set[str] = set()
    for host in hosts:
        if host.name in seen:
            raise ConfigError(f"host {host.name!r} is listed twice")
        seen.add(host.name)
