"""How a node daemon runs claimed arguments on its local node: each project's function
loaded once (from its stored code), and the arguments submitted as tasks, a task each or,
for a function measured quick, in batches (see :mod:`.batches`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..cluster.executor import NodeExecutor, TaskOptions
from ..cluster.fastpaths import FastPaths
from ..cluster.tasks import ResultSlot, TaskRecord
from ..errors import CeranubisError, StoreError
from ..projects.code import function_of
from ..projects.queue_events import Hand, code_key
from ..projects.queue_store import Claimed
from ..projects.rows import stored_payload
from ..projects.store import Store
from ..wire import protocol as p
from ..wire.batches import EachOutcome
from ..wire.serialize import dumps_inband
from .batches import BATCH_BUDGET_SECONDS, BATCH_BYTES, split
from .held import Held, HeldTask

log = logging.getLogger("ceranubis")

# Functions kept loaded by their code, for projects committed again with the same code
# (more keeps more functions alive in the node and its workers).
CODE_CACHE = 32


class Loaded:
    """A project's function as its tasks need it: its ids, task options, and the objects
    that keep them alive (the executor holds functions only weakly)."""

    __slots__ = ("batch_id", "batch_options", "fn_id", "keep", "options")

    def __init__(self, fn_id: int, fn: Any, options: TaskOptions) -> None:
        self.fn_id, self.options, self.keep = fn_id, options, [fn]
        self.batch_id = 0  # registered when its first batch is made
        self.batch_options = options


class Runner:
    """Submits claimed arguments to ``executor``, tracked in ``held``.

    Args:
        executor: the daemon's local node.
        held: what the daemon holds.
        store: where projects' code is read.
        name: the daemon's name, for messages.
        workers: the local node's workers (each batch of a claim goes to one).
        broke: called when the local node broke (what was submitted is released).

    ``CERANUBIS_FAST_PATHS_OFF=queue_batches`` (or ``all``) runs a task per argument.
    """

    def __init__(
        self,
        executor: NodeExecutor,
        held: Held,
        store: Store,
        name: str,
        workers: int,
        broke: Callable[[], None],
    ) -> None:
        self.executor, self.held, self.store, self.name = executor, held, store, name
        self._broke = broke
        self.workers = workers
        self.batches = FastPaths.from_env().queue_batches
        self.functions: dict[int, Loaded | str] = {}  # project -> its function, or why not
        self.births: dict[int, float] = {}  # project -> its row's created, as loaded
        self._code_ids: dict[str, tuple[int, Any]] = {}  # code key -> (fn_id, function)
        self._options: dict[float, TaskOptions] = {}  # per-task timeout -> task options

    def run(self, project: int, timeout: float, claimed: list[Claimed], row: Any = None) -> None:
        """Submit ``claimed`` (arguments of ``project``); ``row``: its project row, if
        read already. When that row cannot be read (a store error, raised), ``claimed``
        is given back with the next write."""
        try:
            loaded = self.function(project, timeout, row)
        except StoreError:
            self.held.releases += [claim.arg_id for claim in claimed]
            raise
        if isinstance(loaded, str):  # the project's code cannot load here
            for claim in claimed:
                self.held.fail(HeldTask(claim.arg_id, project, claim.attempts), loaded)
            return
        size = self.held.pace.batch_size(loaded.fn_id, len(claimed), self.workers)
        if size > 1 and self.batches and not timeout and self._batchable(loaded):
            self._submit(self._batches(loaded, claimed, size))
        else:
            self._submit(self._singles(loaded, claimed))

    def run_handed(self, hand: Hand, claimed: list[Claimed]) -> None:
        """Submit ``claimed``, the arguments a commit handed this daemon: a project whose
        code is loaded here already starts at once (no row read)."""
        if hand.project not in self.functions:
            known = self._code_ids.get(hand.code_key)
            if known is not None:
                self.births[hand.project] = hand.created
                self.functions[hand.project] = Loaded(*known, self._options_for(hand.timeout))
        self.run(hand.project, hand.timeout, claimed)

    def run_again(self) -> None:
        """Submit what batches left: arguments they did not reach (batched again if the
        function is still quick), and those of failed batches (a task each)."""
        held = self.held
        for claims, alone in ((held.again, False), (held.alone, True)):
            by_project: dict[int, list[Claimed]] = {}
            for claim in claims:
                by_project.setdefault(claim.project, []).append(claim)
            claims.clear()
            for project, group in by_project.items():
                loaded = self.functions.get(project)
                if isinstance(loaded, Loaded) and alone:
                    self._submit(self._singles(loaded, group))
                elif loaded is not None:  # batched, so without a timeout
                    self.run(project, 0.0, group)
                else:  # (cannot happen while they run: a project settles without them)
                    held.releases += [claim.arg_id for claim in group]

    def _singles(self, loaded: Loaded, claimed: list[Claimed]) -> list[TaskRecord]:
        records = []
        for claim in claimed:
            blob = claim.args
            record = self.executor.prepared_task(
                loaded.options, loaded.fn_id, ResultSlot(), p.ARGS, blob[0], stored_payload(blob)
            )
            self.held.track(record.task_id, claim)
            records.append(record)
        return records

    def _batchable(self, loaded: Loaded) -> bool:
        """Whether ``loaded`` can run in batches: its batch function registered (once;
        a crashed batch is not retried, its arguments run a task each instead)."""
        if not loaded.batch_id:
            wrapper = EachOutcome(loaded.keep[0])
            try:
                loaded.batch_id = self.executor.register_function(wrapper)
            except Exception as error:  # it pickled alone: should not happen; run singly
                log.warning("node %s: no batches of %r: %s", self.name, loaded.keep[0], error)
                loaded.batch_id = -1
            loaded.keep.append(wrapper)
            loaded.batch_options = self.executor.options(retries=0).task_options
        return loaded.batch_id > 0

    def _batches(self, loaded: Loaded, claimed: list[Claimed], size: int) -> list[TaskRecord]:
        records = []
        blobs = [claim.args for claim in claimed]
        for start, end in split(blobs, size):
            batch = claimed[start:end]
            budget = (blobs[start:end], BATCH_BUDGET_SECONDS, BATCH_BYTES)
            codec, payload = dumps_inband(budget)
            record = self.executor.prepared_task(
                loaded.batch_options, loaded.batch_id, ResultSlot(), p.ARGS, codec, payload
            )
            self.held.track_batch(record.task_id, batch, loaded.fn_id)
            records.append(record)
        return records

    def _submit(self, records: list[TaskRecord]) -> None:
        try:
            self.executor.submit_prepared(records)
        except (RuntimeError, CeranubisError) as error:  # the local node broke: give back
            held = self.held
            held.releases += [h.arg_id for h in held.drop(r.task_id for r in records)]
            log.error("node %s: its local node broke (%s); stopping", self.name, error)
            self._broke()

    def function(self, project: int, timeout: float, row: Any = None) -> Loaded | str:
        """The project's function, loaded once (from ``row`` when given); or why it
        cannot load here (its tasks then fail with that reason)."""
        known = self.functions.get(project)
        if known is not None:
            return known
        try:
            row = row or self.store.find_project(project)
            if row is None:
                raise CeranubisError(f"project {project} was removed")
            self.births[project] = row.created
            fn_id, fn = self._loaded_code(row)
            loaded: Loaded | str = Loaded(fn_id, fn, self._options_for(timeout))
        except StoreError:
            raise
        except Exception as error:  # any failure of the project's own code
            loaded = f"project {project}'s function cannot load on node {self.name}: {error}"
            log.warning("%s", loaded)
        self.functions[project] = loaded
        return loaded

    def _options_for(self, timeout: float) -> TaskOptions:
        """The task options of a project's ``timeout`` (0: none), made once per value
        (a project's first claim is on the path from its commit to its task's start)."""
        options = self._options.get(timeout)
        if options is None:
            options = self.executor.options(timeout=timeout or None).task_options
            if len(self._options) < CODE_CACHE:
                self._options[timeout] = options
        return options

    def _loaded_code(self, row: Any) -> tuple[int, Any]:
        """The function id of a project's code: rebuilt and shipped to the workers once
        per code (projects committed again with the same function start at once)."""
        key = code_key(row.code, row.target, row.function)
        known = self._code_ids.get(key)
        if known is None:
            fn = function_of(row)
            known = self._code_ids[key] = (self.executor.register_function(fn), fn)
            if len(self._code_ids) > CODE_CACHE:
                del self._code_ids[next(iter(self._code_ids))]  # the oldest
        return known


__all__ = ["CODE_CACHE", "Runner"]
