"""The fast paths, each of which one switch turns off (to measure it, or to rule it out).

- ``direct_writes``: a worker writes a small results frame straight to the client instead of
  through its node (one hop instead of two). Node side: ``node.worker.ClientPipe``.
- ``cut_through``: a big task goes to an idle worker while its bytes are still arriving, so
  its two hops overlap. Node side: ``node.relay``.
- ``inline_submit``: an idle executor's first task is written to its node by the submitting
  thread itself while the loop thread sleeps (one thread wake-up less per round trip).
  Client side: ``Scheduler.submit_threadsafe`` (and ``submit_many_threadsafe`` for one
  task: a queue daemon's woken claim of a lone task).
- ``lazy_results``: a ``map`` chunk's result that comes back while ``map()`` still reads its
  iterable is kept as the bytes that came (a fifth of its values' size as objects) and
  unpickled by the thread that takes it, not by the loop thread; an error unpickling it is
  raised at its place, the same error. Client side: ``mapping.MapSlot.set_pickled``.
- ``queue_batches``: a queue node daemon runs the arguments of a function measured quick
  (under 5 ms a task) in batches, one task with an outcome per argument, instead of a
  task each. Daemon side: ``daemon.batches``, ``wire.batches``.
- ``queue_hands``: a small queued commit hands its first arguments to a live daemon in
  its own transaction and their bytes in its ``NOTIFY``, so the daemon starts them
  without claiming (``projects.queue_events.Hand``). A daemon with it off is never
  handed any (the nodes table names no lease of it).
- ``inline_receive``: a thread that waits in ``result()`` for the executor's only task in
  flight reads the node's answer itself while the loop thread sleeps (one thread wake-up
  less per round trip). Client side: ``inline_receive.InlineReceiver``.
- ``spin_wait``: that thread (``inline_receive``) polls without sleeping for up to 0.5 ms
  before it sleeps, when the previous lone answer came within that time (on a virtual
  machine, waking a sleeping thread costs tens of µs of the round trip). Client side:
  ``inline_receive.InlineReceiver``.
- ``lent_input``: a node with nothing to do lends its input to an idle worker, which reads
  the next frame itself and runs it when it is one task of a function it has (one process
  hop less per round trip: the node is not woken on the task's way in), giving the frame
  back once the result is out (or within 4 ms, if the task runs on). Node side:
  ``node.lending``.

Every one is on by default. ``CeranubisExecutor(fast_paths=FastPaths(cut_through=False))``
turns one off for an executor; ``CERANUBIS_FAST_PATHS_OFF=direct_writes,cut_through`` (or
``all``) for every executor of the process. The node learns its three from ``Configure``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError

# The environment variable that turns fast paths off for the whole process.
FAST_PATHS_OFF_ENV = "CERANUBIS_FAST_PATHS_OFF"


@dataclass(frozen=True)
class FastPaths:
    """Which fast paths an executor uses; see the module docstring for each."""

    direct_writes: bool = True
    cut_through: bool = True
    inline_submit: bool = True
    lazy_results: bool = True
    queue_batches: bool = True
    queue_hands: bool = True
    inline_receive: bool = True
    lent_input: bool = True
    spin_wait: bool = True

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The switches' names."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def without(cls, *names: str) -> FastPaths:
        """All on but ``names`` (``"all"``: all off); unknown names are a ``ConfigError``."""
        if "all" in names:
            names = cls.names()
        unknown = sorted(set(names) - set(cls.names()))
        if unknown:
            raise ConfigError(
                f"unknown fast paths {', '.join(unknown)}; known: {', '.join(cls.names())}"
            )
        return cls(**{name: False for name in names})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FastPaths:
        """All on, but those that ``$CERANUBIS_FAST_PATHS_OFF`` names."""
        text = environ.get(FAST_PATHS_OFF_ENV, "")
        return cls.without(*(name.strip() for name in text.split(",") if name.strip()))


# Every fast path on: the default.
ALL_ON = FastPaths()

__all__ = ["ALL_ON", "FAST_PATHS_OFF_ENV", "FastPaths"]
