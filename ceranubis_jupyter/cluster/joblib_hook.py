"""Registers the ``"ceranubis"`` joblib backend without importing joblib.

joblib takes about a second to import; ``import ceranubis_jupyter`` (and ``%load_ext``)
must not pay for it when no one uses joblib. So :func:`install` registers the backend at
once only if joblib is already imported, and otherwise puts a finder on ``sys.meta_path``
that registers it right after joblib's own import finishes. Registering imports nothing
either: joblib's factory loads :mod:`.joblib_backend` when a backend is first made.

Standard library only, and only ``sys`` at import: ``importlib.abc`` alone costs ~8 ms,
so the finder and the loader follow those protocols without subclassing them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

BACKEND_NAME = "ceranubis"


def install() -> None:
    """Make ``backend="ceranubis"`` known to joblib, now or when joblib is imported."""
    if "joblib" in sys.modules:
        register()
    elif not any(isinstance(finder, JoblibWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, JoblibWatcher())


def register() -> None:
    """Register the backend with joblib (which must be importable)."""
    import joblib

    joblib.register_parallel_backend(BACKEND_NAME, _make_backend)


def _make_backend(**options: Any) -> Any:
    from .joblib_backend import make_backend

    return make_backend(**options)


class JoblibWatcher:
    """Finds nothing itself: when ``joblib`` is imported, it has the real loader register
    the backend once the module has run, then steps aside."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        """The real spec of ``joblib``, its loader wrapped; ``None`` for anything else."""
        if fullname != "joblib":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader)  # type: ignore[assignment]
        return spec


class _RegisteringLoader:
    """A loader that runs the real one, then registers the backend."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._real.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._real.exec_module(module)
        try:
            register()
        except Exception:  # joblib must still import: without our backend, then
            import logging

            logging.getLogger("ceranubis").exception("registering the joblib backend failed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
