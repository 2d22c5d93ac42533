"""Projects whose arguments are other projects' results: two-stage pipelines in the store.

::

    first = ex.commit(load, [(path,) for path in paths], name="load")
    second = ex.commit(fit, [(ref, 0.1) for ref in first.result_refs()], name="fit")

A :class:`ResultOf` names one argument of a stored project (its id and position). Stored as
it is (so the second project's definition, digest and resume are those of its refs), it is
filled in by its run just before the task goes out: the run submits an argument once every
result it refers to is stored, in order (an argument waits for those before it: a
first stage that finishes in order is followed at once), polling the store meanwhile
(every ``REF_POLL_SECONDS``). Both stages are stored projects, so after a kernel restart
``Project.load("load").resume()`` and ``Project.load("fit").resume()`` carry on, in any
order. A referred argument that failed or was cancelled fails the one that refers to it
(its error says which).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from ..errors import ConfigError
from ..wire.inputs import upstream_failed
from .rows import decode, encode
from .run import RunPlan
from .store import Store

# Seconds a run whose next argument waits for a referred result sleeps before it looks at
# the store again: short enough to follow a busy first stage, long enough to cost nothing.
REF_POLL_SECONDS = 0.1
# States of a referred argument that will never bring a result (this one then fails).
_GIVEN_UP = ("failed", "cancelled")


@dataclass(frozen=True)
class ResultOf:
    """The result of argument ``position`` (0-based) of stored project ``project`` (its
    id): in the arguments of a committed project, the result itself once it is stored."""

    project: int
    position: int


def refers(args: Sequence[tuple[Any, ...]]) -> bool:
    """Whether any argument tuple holds a :class:`ResultOf` (at its top level)."""
    return any(type(value) is ResultOf for item in args for value in item)


def with_refs(plan: RunPlan, store: Store) -> RunPlan:
    """``plan``, its arguments filled in from the store as their results arrive.

    Raises:
        ConfigError: ``chunksize`` > 1 (a chunk would wait for its slowest argument).
    """
    if not refers(plan.args):
        return plan
    if plan.chunksize != 1:
        raise ConfigError("arguments that refer to results (ResultOf) need chunksize=1")
    resolver = RefResolver(store, plan.args, plan.blobs)
    blobs = cast(Sequence[bytes], resolver)  # the run only indexes it and takes its len
    return dataclasses.replace(plan, blobs=blobs, ready_until=resolver.ready_until)


class RefResolver:
    """A run's argument blobs, with each :class:`ResultOf` replaced by its stored result.

    Used by the run thread only: :meth:`ready_until` says how far it may submit (filling
    those blobs in), and indexing returns them.
    """

    def __init__(self, store: Store, args: Sequence[tuple[Any, ...]], blobs: Sequence[bytes]):
        self._store_of = store.reopen  # opened in the run thread, at the first look
        self._store: Store | None = None
        self._args = args
        self._blobs = blobs
        self._filled: dict[int, bytes] = {}
        self._results: dict[tuple[int, int], Any] = {}
        self._given_up: dict[tuple[int, int], str] = {}
        self._pause = threading.Event()  # never set: a bounded sleep that wakes no one

    def __len__(self) -> int:
        return len(self._blobs)

    def __getitem__(self, position: int) -> bytes:
        filled = self._filled.pop(position, None)
        return filled if filled is not None else self._blobs[position]

    def ready_until(self, lo: int, hi: int) -> int:
        """The first position from ``lo`` (below ``hi``) whose refs are not all stored;
        looks at the store again (after a pause) when ``lo`` itself is not ready."""
        end = self._fill(lo, hi)
        if end == lo:
            self._look()
            end = self._fill(lo, hi)
            if end == lo:
                self._pause.wait(REF_POLL_SECONDS)
        return end

    def _fill(self, lo: int, hi: int) -> int:
        at = lo
        while at < hi:
            item = self._args[at]
            refs = [value for value in item if type(value) is ResultOf]
            keys = [(ref.project, ref.position) for ref in refs]
            failed = next((self._given_up[k] for k in keys if k in self._given_up), None)
            if failed is None and not all(key in self._results for key in keys):
                break
            self._filled[at] = self._blob(item, failed)
            at += 1
        return at

    def _blob(self, item: tuple[Any, ...], failed: str | None) -> bytes:
        if failed is not None:  # unpickling it on the node raises: the argument fails
            return encode(_Failing(failed))
        values = self._results
        return encode(
            tuple(values[(v.project, v.position)] if type(v) is ResultOf else v for v in item)
        )

    def _look(self) -> None:
        """Read the referred projects' finished arguments not seen yet."""
        if self._store is None:
            self._store = self._store_of()
        projects = {key[0] for key in self._missing()}
        for project in projects:
            rows = self._store.arguments(project, ["done", *_GIVEN_UP])
            for row in rows:
                key = (project, row.position)
                if row.state == "done" and row.result is not None:
                    self._results.setdefault(key, decode(row.result))
                elif row.state in _GIVEN_UP:
                    self._given_up[key] = (
                        f"argument {row.position} of project {project} it refers to "
                        f"{row.state}: {row.error or 'no result'}"
                    )

    def _missing(self) -> set[tuple[int, int]]:
        keys = {
            (value.project, value.position)
            for item in self._args
            for value in item
            if type(value) is ResultOf
        }
        return keys - self._results.keys() - self._given_up.keys()


class _Failing:
    """An argument tuple that fails as the node unpickles it, with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return upstream_failed, (self.reason,)
