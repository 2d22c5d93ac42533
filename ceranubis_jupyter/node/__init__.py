"""The node: the program that runs on each host (stdlib + dill only).

- ``supervisor``: reads the client's frames, hands tasks to workers, reports load and
  crashes, exits (killing its workers) when the client goes away.
- ``relay``: cut-through of large task frames to an idle worker.
- ``pool``: the supervisor's worker processes: their state, fork, kill, reap.
- ``worker``: a forked worker process that runs tasks and writes results.
- ``output``: what a worker's task prints, kept for its result and streamed while it runs.
- ``outbox``: bytes the supervisor owes a pipe (the client's or a worker's), written as
  the pipe takes them, never blocking.
- ``hostinfo``: what the node says of its host: its ``Hello``, and cores, load, memory and
  CPU for its load reports.

May import: the standard library, dill, ``ceranubis_jupyter.wire`` and
``ceranubis_jupyter.errors``. The bundle sent to hosts is exactly ``errors``, ``wire/`` and
``node/`` (+ dill), derived from the package by ``cluster.bootstrap``.
"""
