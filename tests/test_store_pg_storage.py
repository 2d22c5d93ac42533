"""How a PostgreSQL store lays out a project's rows: outcomes stay on their page.

A finished argument's row is updated once (state, result, host, times). With room left on
its page (``ARGUMENTS_FILLFACTOR``) the new version stays there: a HOT update, which writes
no index entry and about half the WAL. Small results must all be HOT; at the old
fillfactor (50) the last quarter of each page's rows were not.
"""

from __future__ import annotations

import pytest

from ceranubis_jupyter import CeranubisExecutor
from tests.waiting import wait_for

pytestmark = pytest.mark.postgres

# Arguments of the project: many pages' worth (~40 rows a page).
ARGUMENTS = 3000
# Seconds the project, and the server's statistics after it, may take.
DEADLINE = 120.0


def _update_counts(url: str) -> tuple[int, int]:
    """Row updates of ``arguments``, all and HOT, as the server's statistics have them."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'arguments'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_small_results_are_recorded_by_hot_updates(pg_url: str) -> None:
    with CeranubisExecutor() as executor:
        project = executor.commit(abs, [(-i,) for i in range(ARGUMENTS)], store=pg_url,
                                  reuse=False)  # fmt: skip
        assert project.wait(DEADLINE)
    assert project.status() == (ARGUMENTS, ARGUMENTS)
    # The run's connection reports its statistics when it ends (after the wait).
    wait_for(lambda: _update_counts(pg_url)[0] >= ARGUMENTS, DEADLINE, "update statistics")
    updates, hot = _update_counts(pg_url)
    assert hot == updates, f"{updates - hot} of {updates} updates left their page"
