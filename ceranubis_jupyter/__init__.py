"""ceranubis_jupyter: spread Python work from a notebook across the cores of many machines.

The public API is imported lazily, so the node (which imports ``ceranubis_jupyter.node``
on every start) and ``%load_ext`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CeranubisExecutor": "projects.executor",
    "TaskOptions": "cluster.executor",
    "FastPaths": "cluster.fastpaths",
    "Host": "cluster.hosts",
    "CeranubisError": "errors",
    "ConfigError": "errors",
    "ConfigTypeError": "errors",
    "ProtocolError": "errors",
    "LocalProtocolError": "errors",
    "RemoteProtocolError": "errors",
    "VersionMismatch": "errors",
    "HostError": "errors",
    "FileSyncError": "errors",
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
    "TaskTooLarge": "errors",
    "DependencyError": "errors",
    "StoreError": "errors",
    "BrokenCeranubisExecutor": "errors",
    "RemoteTraceback": "errors",
    "Project": "projects.project",
    "ResultOf": "projects.refs",
    "commit_project": "projects.commit",
    "list_projects": "projects.project",
    "remove_project": "projects.project",
    "open_store": "projects.stores",
}

__all__ = [*_EXPORTS, "__version__", "load_ipython_extension", "unload_ipython_extension"]

if TYPE_CHECKING:
    from .cluster.executor import TaskOptions as TaskOptions
    from .cluster.hosts import Host as Host
    from .errors import *  # noqa: F403
    from .projects.executor import CeranubisExecutor as CeranubisExecutor


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ceranubis_jupyter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def _install_joblib_backend() -> None:
    """``backend="ceranubis"`` for joblib, registered without importing joblib."""
    from .cluster.joblib_hook import install

    install()


_install_joblib_backend()


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext ceranubis_jupyter``: register ``%%ceranubis`` and ``%ceranubis``."""
    from .jupyter.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext ceranubis_jupyter``: remove the magics, shut their executors down."""
    from .jupyter.magics import unload

    unload(ipython)
