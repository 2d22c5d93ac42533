"""What keeps a small queued commit fast as a store fills (``projects/queue_fast.py``'s
insert, ``projects/code.py``'s queued sources): a default name continues from the number
this store took last instead of counting every name with its prefix, and a source queued
again is not compiled, run and digested again. Names stay free and unique; a source that
fails fails every time."""

from __future__ import annotations

import pytest

from ceranubis_jupyter import commit_project
from ceranubis_jupyter.errors import ConfigError
from ceranubis_jupyter.projects.code import QUEUED_SOURCES, queued_function
from ceranubis_jupyter.projects.digest import function_digest
from ceranubis_jupyter.projects.queue_fast import INDEX_PLANS, INSERT_AT_ONCE, NAME_PROBES
from ceranubis_jupyter.projects.records import QUEUE_CLIENT
from ceranubis_jupyter.projects.stores import open_store
from tests.queue_helpers import CODE


def _commit(url: str, x: int = 1) -> str:
    return str(commit_project(CODE, "square", [(x,)], store=url, queue=True, reuse=False).name)


def _take(url: str, *names: str) -> None:
    """Names taken by another process (its own store)."""
    other = open_store(url)
    try:
        for name in names:
            other.add_project(name, CODE, "square", [], None, [b"x"], QUEUE_CLIENT)
    finally:
        other.close()


def test_default_names_go_on_from_this_stores_last_and_skip_names_taken_meanwhile(
    pg_url: str,
) -> None:
    assert [_commit(pg_url, x) for x in range(3)] == ["square_1", "square_2", "square_3"]
    _take(pg_url, "square_4", "square_5")
    assert _commit(pg_url) == "square_6"
    assert _commit(pg_url) == "square_7"


def test_a_default_name_counts_the_names_when_every_probed_number_is_taken(pg_url: str) -> None:
    assert _commit(pg_url) == "square_1"
    taken = [f"square_{n}" for n in range(2, NAME_PROBES + 2)]
    _take(pg_url, *taken, "square_40")  # the probes' numbers, and one far beyond
    # As a first commit would: from n = the names taken + 1 (here NAME_PROBES + 2).
    assert _commit(pg_url) == f"square_{NAME_PROBES + 3}"
    assert _commit(pg_url) == f"square_{NAME_PROBES + 4}"  # and on from there


def test_a_first_commit_in_a_process_counts_the_names_as_before(pg_url: str) -> None:
    _take(pg_url, "square_2", "square_9")
    assert _commit(pg_url) == "square_3"  # n from the names taken + 1: square_1 stays free


def _analyzed(url: str, params: dict[str, object]) -> str:
    import psycopg

    with psycopg.connect(url) as connection:  # one transaction, rolled back at the end
        connection.execute(INDEX_PLANS)
        rows = connection.execute("EXPLAIN (ANALYZE, COSTS OFF) " + INSERT_AT_ONCE, params)
        plan = "\n".join(str(row[0]) for row in rows.fetchall())
        connection.rollback()
    return plan


def test_a_free_probed_number_leaves_the_names_unscanned(pg_url: str) -> None:
    _commit(pg_url)  # the schema
    _take(pg_url, *(f"square_{n}" for n in range(2, 30)))
    params: dict[str, object] = {
        "code": CODE, "target": "square", "created": 0.0, "hosts": "[]", "state": "running",
        "client": QUEUE_CLIENT, "heartbeat": 0.0, "function": None, "version": 1,
        "code_hash": "h", "args_hash": "a", "changes": "", "name": None, "prefix": "square_",
        "pattern": "square\\_%", "reuse": "", "args": [b"x"], "channel": "none",
        "priority": 0, "group": "", "timeout": 0.0,
    }  # fmt: skip
    probed = _analyzed(pg_url, {**params, "next": 30})
    counted = _analyzed(pg_url, {**params, "next": 0})
    # The line under "CTE taken": the names with the prefix, read or never read.
    assert "rows=29 " in counted.split("CTE taken\n")[1].split("\n")[0], counted
    assert "never executed" in probed.split("CTE taken\n")[1].split("\n")[0], probed


def test_a_source_queued_again_is_made_once() -> None:
    code = CODE + "\n# made once\n"
    fn, digest = queued_function(code, "square", "first")
    assert queued_function(code, "square", "again") == (fn, digest)
    assert digest == function_digest(fn, "square") and fn(3) == 9
    other_fn, _ = queued_function(code + "\n", "square", "other")
    assert other_fn is not fn  # another source: made on its own


def test_a_source_that_fails_fails_each_time() -> None:
    for _ in range(2):
        with pytest.raises(ConfigError, match="no function named 'nope'"):
            queued_function(CODE, "nope", "bad")
    broken = "def f(:\n"
    for _ in range(2):
        with pytest.raises(ConfigError, match="does not compile"):
            queued_function(broken, "f", "bad")


def test_queued_sources_are_bounded() -> None:
    first = queued_function(CODE + "\n# oldest\n", "square", "x")
    for n in range(QUEUED_SOURCES):
        queued_function(CODE + f"\n# {n}\n", "square", "x")
    again = queued_function(CODE + "\n# oldest\n", "square", "x")
    assert again[0] is not first[0] and again[1] == first[1]  # made anew, the same digest
