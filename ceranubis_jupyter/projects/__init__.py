"""Projects: named runs whose every outcome is kept in a store.

Define (code, target, arguments) ─► store ─► run on an executor ─► outcomes written ─►
status and results read, from this process or any other.

- ``code``: checking a project's code, function and arguments before anything is stored.
- ``commit``: storing a new project and starting its run.
- ``project``: the :class:`Project` handle (status, results, cancel, resume).
- ``run``: a live run: feeds the executor, collects outcomes, writes them in batches.
- ``rows``: encoding arguments and outcomes into store rows.
- ``store``, ``store_sqlite``, ``store_pg``, ``records``, ``stores``: the store interface,
  its two back ends, its row types, and opening one from a URL.
- ``views``: text and HTML reprs of projects and hosts (pure).

May import: ``cluster``, ``wire``, ``errors``. Never ``jupyter`` or ``cli``.
"""
