"""Saved setups: the user's TOML config (host groups, a default store, default files).

Read from, in order (a later file's keys win, host groups merge by name):

1. the user's file: ``$CERANUBIS_CONFIG`` if set, else
   ``$XDG_CONFIG_HOME/ceranubis/config.toml`` (``~/.config/ceranubis/config.toml``);
2. ``./ceranubis.toml`` in the current directory (a project's own setup).

::

    store = "~/work/projects.sqlite"     # or "postgresql://..."
    files = ["data/", "params.json"]     # default data to sync (``--files``)

    [hosts]
    gpu = ["gpu1", "gpu2"]
    all = ["local", "@gpu", "alice@big:2222"]

A host group is used as ``@gpu`` wherever hosts are given (``NodeExecutor``, the magics'
``--hosts``, the command line); a group may name other groups. Stdlib only (``tomllib``,
or ``tomli`` before Python 3.11); nothing here starts or reaches a host.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The environment variable naming the user's config file (tests and scripts point it away
# from the real home; an empty value means "no user file").
CONFIG_ENV = "CERANUBIS_CONFIG"
# The config file a directory may hold for the work done there.
LOCAL_CONFIG = "ceranubis.toml"
# The file the saved jobs live in, beside the user's config file.
JOBS_FILE = "jobs.json"
# The mark of a host group in a host list: ``@gpu``.
GROUP_MARK = "@"
# How deep groups may name groups: deeper is surely a loop the user did not mean.
MAX_GROUP_DEPTH = 10


@dataclass(frozen=True)
class Config:
    """What the config files say; ``sources``: the files read, in order."""

    host_groups: dict[str, list[str]] = field(default_factory=dict)
    store: str | None = None
    files: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)


def user_config_path() -> Path | None:
    """The user's config file (it may not exist); ``None`` when ``$CERANUBIS_CONFIG`` is
    set empty."""
    named = os.environ.get(CONFIG_ENV)
    if named is not None:
        return Path(named).expanduser() if named else None
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "ceranubis" / "config.toml"


def jobs_path() -> Path:
    """Where ``ceranubis job`` keeps the saved jobs: ``jobs.json`` beside the user's config
    file (or where that file would be)."""
    user = user_config_path()
    if user is None:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
        return Path(base) / "ceranubis" / JOBS_FILE
    return user.parent / JOBS_FILE


def config_paths() -> list[Path]:
    """The config files that exist, in the order they are read."""
    user = user_config_path()
    candidates = [user] if user is not None else []
    candidates.append(Path.cwd() / LOCAL_CONFIG)
    found: list[Path] = []
    for path in candidates:
        if path.is_file() and path.resolve() not in {p.resolve() for p in found}:
            found.append(path)
    return found


def load_config() -> Config:
    """Read and merge the config files (re-read at each call: they are small).

    Raises:
        ConfigError: a file is not valid TOML or has a value of the wrong kind (the
            message names the file and the key).
    """
    groups: dict[str, list[str]] = {}
    store: str | None = None
    files: list[str] = []
    paths = config_paths()
    for path in paths:
        data = _read(path)
        groups.update(_host_groups(path, data.get("hosts", {})))
        if "store" in data:
            store = _text(path, "store", data["store"])
            store = store if "://" in store else os.path.expanduser(store)
        if "files" in data:
            files = _texts(path, "files", data["files"])
    return Config(groups, store, files, paths)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None


def _host_groups(path: Path, table: Any) -> dict[str, list[str]]:
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [hosts] must be a table of host lists")
    return {name: _texts(path, f"hosts.{name}", hosts) for name, hosts in table.items()}


def _text(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config file {path}: {key} must be a non-empty string")
    return value


def _texts(path: Path, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"config file {path}: {key} must be a list of strings")
    return list(value)


def expand_host_groups(specs: list[Any]) -> list[Any]:
    """``specs`` with every ``"@name"`` replaced by that group's hosts (other specs, and
    ``Host`` objects, as they are). The config is read only when a group is named.

    Raises:
        ConfigError: an unknown group (the message lists the known ones and where they
            come from), or groups that name each other in a loop.
    """
    if not any(isinstance(s, str) and s.strip().startswith(GROUP_MARK) for s in specs):
        return list(specs)
    config = load_config()
    return _expanded(specs, config, 0)


def _expanded(specs: list[Any], config: Config, depth: int) -> list[Any]:
    if depth > MAX_GROUP_DEPTH:
        raise ConfigError(f"host groups nest deeper than {MAX_GROUP_DEPTH}: is there a loop?")
    out: list[Any] = []
    for spec in specs:
        name = spec.strip()[1:] if isinstance(spec, str) else None
        if name is None or not spec.strip().startswith(GROUP_MARK):
            out.append(spec)
            continue
        if name not in config.host_groups:
            raise ConfigError(_unknown_group(name, config))
        out += _expanded(config.host_groups[name], config, depth + 1)
    return out


def _unknown_group(name: str, config: Config) -> str:
    known = ", ".join(GROUP_MARK + g for g in sorted(config.host_groups)) or "none"
    where = ", ".join(map(str, config.sources)) or f"no config file ({user_config_path()})"
    return f"unknown host group {GROUP_MARK}{name} (known: {known}; from {where})"
