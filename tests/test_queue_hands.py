"""A small queued commit hands its first arguments to a live daemon in its own transaction,
and their bytes in its ``NOTIFY`` (``projects.queue_events.Hand``): the daemon starts them
without claiming. Which daemon (live, of the project's group, with free workers, by
score), what the payload carries, what a hand to a daemon that died becomes, and a
daemon with the fast path off (handed nothing: it claims)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ceranubis_jupyter import Project, commit_project
from ceranubis_jupyter.cluster.fastpaths import FAST_PATHS_OFF_ENV
from ceranubis_jupyter.errors import StoreError
from ceranubis_jupyter.projects.queue_events import Hand, code_key, parse_hand
from ceranubis_jupyter.projects.queue_fast import HAND_BYTES
from ceranubis_jupyter.projects.queue_store import CHANNEL, QUEUE_SCHEMA, NodeRow
from ceranubis_jupyter.projects.store import Store
from ceranubis_jupyter.projects.stores import open_store
from tests.queue_helpers import CODE, PROJECT_SECONDS, Daemons

# An unwoken poll and a stagger no test outlives: a daemon gets work only by a NOTIFY.
NEVER = "3600"
# Seconds to wait for a commit's NOTIFY.
HEARD_SECONDS = 30.0


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    opened = open_store(pg_url)
    opened.init_queue()
    try:
        yield opened
    finally:
        opened.close()


def _node(store: Store, name: str, *, group: str = "", workers: int = 1, held: int = 0,
          state: str = "running", lease_seconds: float = 30.0) -> int:  # fmt: skip
    """A daemon's nodes row, beating now, and its lease row (no process): its lease id."""
    lease = store.open_lease(f"{name}#test", name)
    store.beat(NodeRow(name, "h", 1, workers, group, 0.0, "v", QUEUE_SCHEMA, 0, held, 0, 0,
                       0.0, 0.0, state, lease, lease_seconds))  # fmt: skip
    return lease


def _hand_of(url: str, args: list[tuple[Any, ...]], **options: Any) -> tuple[int, Hand | None]:
    """Commit ``square`` over ``args`` (queued); its id and the hand its NOTIFY carried."""
    with psycopg.connect(url, autocommit=True) as listening:
        listening.execute(f"LISTEN {CHANNEL}")
        project = commit_project(CODE, "square", args, store=url, queue=True, **options)
        heard = [n.payload for n in listening.notifies(timeout=HEARD_SECONDS, stop_after=1)]
    assert heard, "no NOTIFY"
    return int(project.id), parse_hand(heard[0])


def _arguments(url: str, project: int) -> list[tuple[Any, ...]]:
    """(id, args, state, lease, host, attempts) of each argument, by position."""
    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute(
            "SELECT id, args, state, lease, host, attempts FROM arguments WHERE project = %s "
            "ORDER BY position",
            (project,),
        ).fetchall()


def _next_id(url: str, project: int) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        found = connection.execute(
            "SELECT next_id FROM queue_projects WHERE project = %s", (project,)
        ).fetchone()
    assert found is not None
    return int(found[0])


def test_a_small_commit_hands_its_first_arguments_and_says_so_in_its_notify(
    pg_url: str, store: Store
) -> None:
    lease = _node(store, "ghost", workers=2)
    before = store.database_time()
    project, hand = _hand_of(pg_url, [(1,), (2,), (3,)])
    after = store.database_time()
    assert hand is not None and hand.project == project and hand.lease == lease
    assert hand.pending == 1  # two workers: two handed, one left for the claims
    rows = _arguments(pg_url, project)
    assert list(hand.args) == [(row[0], bytes(row[1])) for row in rows[:2]]
    assert [row[2:] for row in rows] == [
        ("running", lease, "ghost", 1),
        ("running", lease, "ghost", 1),
        ("pending", None, None, 0),
    ]
    stored = store.find_project(project)
    assert stored is not None
    assert hand.code_key == code_key(stored.code, stored.target, stored.function)
    assert hand.created == stored.created and hand.timeout == 0.0
    with psycopg.connect(pg_url, autocommit=True) as connection:
        found = connection.execute(
            "SELECT expires FROM queue_leases WHERE id = %s", (lease,)
        ).fetchone()
    assert found is not None and before + 30.0 <= found[0] <= after + 30.0  # its lease length


def test_a_commit_hands_to_a_live_daemon_of_its_group_with_free_workers(
    pg_url: str, store: Store
) -> None:
    idle = _node(store, "idle")
    _node(store, "full", held=1)  # its last beat: as many held as workers
    _node(store, "stopping", state="stopping")
    gpu = _node(store, "gpu", group="gpu")
    _node(store, "silent")
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("UPDATE nodes SET heartbeat = heartbeat - 1000 WHERE name = 'silent'")
    for x in range(6):
        assert _hand_of(pg_url, [(x,)])[1].lease in (idle, gpu)  # type: ignore[union-attr]
        assert _hand_of(pg_url, [(x,)], group="gpu")[1].lease == gpu  # type: ignore[union-attr]
    assert _hand_of(pg_url, [(0,)], group="none")[1] is None  # no daemon of its group
    assert _hand_of(pg_url, [(b"x" * HAND_BYTES,)])[1] is None  # too large for a payload


def test_a_commit_hands_nothing_while_a_project_that_comes_first_waits(
    pg_url: str, store: Store
) -> None:
    project, hand = _hand_of(pg_url, [(1,)], priority=5)  # no daemon yet: nothing handed
    assert hand is None and _arguments(pg_url, project)[0][2] == "pending"
    _node(store, "ghost")
    assert _hand_of(pg_url, [(2,)], priority=4)[1] is None  # a higher priority waits
    assert _hand_of(pg_url, [(3,)], priority=5)[1] is None  # as high, committed before
    assert _hand_of(pg_url, [(4,)], priority=6)[1] is not None  # it comes first


def test_an_idle_daemon_runs_what_a_commit_handed_it_without_claiming(
    pg_url: str, store: Store, daemons: Daemons, tmp_path: Path
) -> None:
    daemon = daemons.start(pg_url, "handed", extra=("--poll", NEVER, "--stagger", NEVER))
    daemons.wait_serving(pg_url, daemon.name)
    lease = next(row.lease for row in store.nodes() if row.name == daemon.name)
    gate = tmp_path / "go"
    project = commit_project(CODE, "hold", [(4, str(gate))], store=pg_url, queue=True)
    # Running under the daemon's lease as the commit returns: the commit handed it.
    assert [row[2:] for row in _arguments(pg_url, int(project.id))] == [
        ("running", lease, daemon.name, 1)
    ]
    gate.touch()
    assert project.wait(PROJECT_SECONDS), daemons.logs()
    assert project.results() == [((4, str(gate)), 40)]
    assert _next_id(pg_url, int(project.id)) == 0  # a claim would have moved it


def test_what_a_commit_handed_a_daemon_that_died_runs_elsewhere_after_its_lease(
    pg_url: str, store: Store, daemons: Daemons
) -> None:
    dead = daemons.start(pg_url, "hand-dead")
    daemons.wait_serving(pg_url, dead.name)
    daemons.kill(dead)  # its row still says running, its heartbeat recent
    project = commit_project(CODE, "square", [(7,)], store=pg_url, queue=True)
    assert _arguments(pg_url, int(project.id))[0][4] == dead.name
    daemons.start(pg_url, "hand-heir")  # started after the commit: it was handed nothing
    assert project.wait(PROJECT_SECONDS), daemons.logs()
    assert project.results() == [((7,), 49)]
    assert _arguments(pg_url, int(project.id))[0][4:] == ("hand-heir", 2)  # a second attempt


def test_a_daemon_with_hands_off_is_handed_nothing_and_claims(
    pg_url: str, store: Store, daemons: Daemons
) -> None:
    daemon = daemons.start(pg_url, "no-hands", env={FAST_PATHS_OFF_ENV: "queue_hands"})
    daemons.wait_serving(pg_url, daemon.name)
    assert [row.lease for row in store.nodes()] == [0]
    project = commit_project(CODE, "square", [(3,), (4,)], store=pg_url, queue=True)
    assert Project.load(int(project.id), pg_url).wait(PROJECT_SECONDS), daemons.logs()
    assert project.results() == [((3,), 9), ((4,), 16)]
    assert _next_id(pg_url, int(project.id)) > 0  # claimed


def test_a_daemon_whose_listener_reconnected_starts_what_it_was_handed_meanwhile(
    pg_url: str, store: Store, daemons: Daemons
) -> None:
    # A lease no test outlives: only hearing that its listener was cut makes it look.
    daemon = daemons.start(pg_url, "orphans", lease=3600.0, extra=("--poll", NEVER))
    daemons.wait_serving(pg_url, daemon.name)
    lease = next(row.lease for row in store.nodes() if row.name == daemon.name)
    # Handed while its listener was away: stored under its lease, the NOTIFY lost.
    project = commit_project(CODE, "square", [(6,)], store=pg_url, queue=True, group="away")
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE queue_projects SET node_group = '' WHERE project = %s", (int(project.id),)
        )
        connection.execute(
            "UPDATE arguments SET state = 'running', lease = %s, host = %s, attempts = 1 "
            "WHERE project = %s",
            (lease, daemon.name, int(project.id)),
        )
        cut = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"
        ).fetchall()
    assert cut == [(True,)]
    assert project.wait(PROJECT_SECONDS), daemons.logs()
    assert project.results() == [((6,), 36)]
    assert _arguments(pg_url, int(project.id))[0][4:] == (daemon.name, 1)  # not claimed again


def test_a_store_whose_nodes_name_no_leases_is_refused_until_upgraded(
    pg_url: str, store: Store
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as connection:  # as made before hands
        connection.execute("ALTER TABLE nodes DROP COLUMN lease, DROP COLUMN lease_seconds")
    with pytest.raises(StoreError, match="upgrade the store with `ceranubis node"):
        store.check_queue()
    store.init_queue()
    store.check_queue()
    assert _node(store, "upgraded") > 0
