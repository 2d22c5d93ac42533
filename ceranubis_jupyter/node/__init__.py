"""The node: the program that runs on each host (stdlib + dill only).

- ``supervisor``: reads the client's frames, hands tasks to workers, reports load and
  crashes, exits (killing its workers) when the client goes away.
- ``relay``: cut-through of large task frames to an idle worker.
- ``worker``: a forked worker process that runs tasks and writes results.
- ``outbox``: the whole-frame pipe writes that workers and the supervisor share.
- ``hostinfo``: cores, load, memory and CPU of the host.

May import: the standard library, dill, ``ceranubis_jupyter.wire`` and
``ceranubis_jupyter.errors``. The bundle sent to hosts is exactly ``errors``, ``wire/`` and
``node/`` (+ dill), derived from the package by ``cluster.bootstrap``.
"""
