"""``CeranubisExecutor``: the public executor, a :class:`NodeExecutor` that can commit projects.

The cluster layer's :class:`~ceranubis_jupyter.cluster.executor.NodeExecutor` is the whole
``concurrent.futures.Executor``; this subclass adds :meth:`CeranubisExecutor.commit`, which
belongs to the projects layer (it stores the function and its arguments). Executors that a
project starts for itself (``commit_project(hosts=...)``, ``Project.resume(hosts=...)``)
are plain ``NodeExecutor`` objects owned by the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..cluster.executor import NodeExecutor
from .commit import commit_function
from .project import Project


class CeranubisExecutor(NodeExecutor):
    __doc__ = NodeExecutor.__doc__

    def commit(
        self,
        fn: Callable[..., Any],
        args: Sequence[tuple[Any, ...]],
        *,
        name: str | None = None,
        store: Any = None,
        chunksize: int = 1,
        timeout: float | None = None,
        replace: bool = False,
        reuse: bool = True,
        queue: bool = False,
        priority: int = 0,
        group: str | None = None,
    ) -> Project:
        """Run ``fn`` over ``args`` as a named project kept in the store; returns at once.

        ``chunksize`` arguments travel and run as one task; ``timeout`` is in seconds per
        task (0 or ``None``: none). Committing a name again with the same code and
        arguments returns that project (resumed if unfinished); with other code or
        arguments it makes a new version (``replace``: and removes the earlier ones).
        Arguments a function of the same code finished take the stored result unless
        ``reuse=False``. ``queue``: store it for the node daemons (``ceranubis node``)
        and return; this executor runs nothing of it (``priority``, ``group``: which
        first, and where). See :func:`ceranubis_jupyter.projects.commit.commit_function`.
        """
        return commit_function(
            self, fn, args, name=name, store=store, chunksize=chunksize, timeout=timeout,
            replace=replace, reuse=reuse, queue=queue, priority=priority, group=group,
        )  # fmt: skip


__all__ = ["CeranubisExecutor"]
