"""Projects: named runs whose every outcome is kept in a store.

Define (code, target, arguments) ─► store ─► run on an executor ─► outcomes written ─►
status and results read, from this process or any other.

- ``code``: checking a project's code, function and arguments before anything is stored.
- ``commit``: storing a new project (its definition) and starting its run (its plan).
- ``run``: a live run (a ``RunPlan`` and a ``RunStart``): feeds the executor, has its
  outcomes collected, writes them in batches; ``lifecycle``: its states, the events that
  move them, and the one table of moves.
- ``rows``: the run's ``OutcomeCollector`` (counts, rows for the store), and the BLOB form
  of arguments and results.
- ``project``: the :class:`Project` handle (status, results, cancel, resume), which reads
  and acts through one ``ProjectView`` (``view``): its live run, or the store.
- ``store``, ``store_base``, ``store_sqlite``, ``store_pg``, ``records``, ``stores``: the
  store's queries, its plumbing and schema (upgraded at open), its two back ends, its row
  types, and opening one from a URL.
- ``digest``: what makes two runs the same (the function's code digest, the arguments');
  ``rerun``: what a re-run finds in the store (the same project to attach to, or a new
  version and how it differs) and the finished results it can reuse by reference.
- ``display``: text and HTML reprs of projects and hosts (pure).
- ``conninfo``: PostgreSQL passwords kept out of messages.
- ``executor``: ``CeranubisExecutor``, the cluster's ``NodeExecutor`` plus ``commit``.
- ``queue_store``, ``queue_listen``: queue mode (``commit(..., queue=True)``): the
  store's queue schema and queries (claims under leases, heartbeats of node daemons,
  NOTIFY), which ``Store`` inherits; the ``LISTEN`` thread, and the daemons as a view's
  host rows. The daemons themselves are the ``daemon`` package.

Imports inside the package flow one way: ``code``/``rows``/``records``/``digest`` ─►
``queue_store`` ─► ``store*`` ─► ``queue_listen``/``rerun``/``run`` ─► ``view`` ─►
``project`` ─► ``commit`` ─► ``executor``.

May import: ``cluster``, ``wire``, ``errors``. Never ``jupyter`` or ``cli``.
"""
