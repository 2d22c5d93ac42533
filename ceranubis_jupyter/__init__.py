"""ceranubis_jupyter: spread Python work from a notebook across the cores of many machines.

The public API is imported lazily, so the node (which imports ``ceranubis_jupyter.node``
on every start) and ``%load_ext`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CeranubisExecutor": "executor",
    "TaskOptions": "executor",
    "Host": "hosts",
    "CeranubisError": "errors",
    "ConfigError": "errors",
    "ProtocolError": "errors",
    "LocalProtocolError": "errors",
    "RemoteProtocolError": "errors",
    "VersionMismatch": "errors",
    "HostError": "errors",
    "HostUnreachable": "errors",
    "HostKeyError": "errors",
    "AuthError": "errors",
    "BootstrapError": "errors",
    "NodeLost": "errors",
    "NoHostsAvailable": "errors",
    "TaskError": "errors",
    "WorkerCrashed": "errors",
    "TaskTimeout": "errors",
    "UnpicklableError": "errors",
    "StoreError": "errors",
    "BrokenCeranubisExecutor": "errors",
    "RemoteTraceback": "errors",
    "Project": "project",
    "commit_project": "project",
    "list_projects": "project",
    "remove_project": "project",
    "open_store": "store",
}

__all__ = [*_EXPORTS, "__version__", "load_ipython_extension", "unload_ipython_extension"]

if TYPE_CHECKING:
    from .errors import *  # noqa: F403
    from .executor import CeranubisExecutor as CeranubisExecutor
    from .executor import TaskOptions as TaskOptions
    from .hosts import Host as Host


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ceranubis_jupyter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext ceranubis_jupyter``: register ``%%ceranubis`` and ``%ceranubis``."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext ceranubis_jupyter``: remove the magics, shut their executors down."""
    from .magics import unload

    unload(ipython)
