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
- ``store``, ``store_sqlite``, ``store_pg``, ``records``, ``stores``: the store interface,
  its two back ends, its row types, and opening one from a URL.
- ``display``: text and HTML reprs of projects and hosts (pure).
- ``conninfo``: PostgreSQL passwords kept out of messages.
- ``executor``: ``CeranubisExecutor``, the cluster's ``NodeExecutor`` plus ``commit``.

Imports inside the package flow one way: ``code``/``rows``/``records`` ─► ``store*`` ─►
``run`` ─► ``view`` ─► ``project`` ─► ``commit`` ─► ``executor``.

May import: ``cluster``, ``wire``, ``errors``. Never ``jupyter`` or ``cli``.
"""
