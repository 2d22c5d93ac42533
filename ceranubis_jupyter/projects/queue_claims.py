"""Queue mode's claims and leases: the part of the queue store (``QueueStore``) that takes
arguments for a node daemon, renews and releases its leases, and sends expired ones back
to the queue.

A lease is one row per node daemon (``queue_leases``: owner, host, when it expires); a
claimed argument names its lease's id (``arguments.lease``, a number: the claim writes
as little as it can per row) and a renewal moves one row, however many arguments the
daemon holds. Queue schema 3; schema 2 kept an owner and an expiry on every argument.

A claim starts at its project's ``queue_projects.next_id`` and moves it past what it took,
so it needs no index of pending rows: no index names a column that a claim or an outcome
changes, and on PostgreSQL those updates are HOT (the new row version stays on its page;
no index gets an entry). Claims of one project take turns on its ``queue_projects`` row
(locked first), so each updates one range of ids with no row locks of its own. Arguments
that become pending again below ``next_id`` move it back down (and count the move in
``lowered``); a claim that finds nothing looks below it for any left there (at most
every ``REWIND_SECONDS`` per project, whichever node looks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .store_base import StoreBase

# Arguments of the projects that run: where releases of all a node holds and expiries look
# for leased rows (through the project's index, as no index holds the leased rows).
_LIVE = (
    "project IN (SELECT q.project FROM queue_projects q JOIN projects p ON p.id = q.project "
    "WHERE p.state = 'running')"
)
# Ids per statement when releasing given arguments.
_RELEASE_CHUNK = 500
# Seconds between two looks below a project's next_id, from any node (each scans the
# project's arguments). Only a claim that rolled back after another moved next_id past
# it leaves pending arguments there, so a look skipped delays them by a node's next look;
# shorter finds them sooner, longer costs the server less while a project's last
# arguments run and claims of it come back empty.
REWIND_SECONDS = 1.0


def _run(cursor: Any, sql: str, params: Sequence[Any] | dict[str, Any]) -> tuple[int, list[Any]]:
    if params:
        cursor.execute(sql, params)
    else:
        cursor.execute(sql)
    return int(cursor.rowcount), list(cursor.fetchall()) if cursor.description else []


@dataclass(frozen=True)
class QueueDialect:
    """What differs between the back ends' queue SQL."""

    now: str  # seconds since the epoch, as SQL
    skip_locked: str  # appended to the claim's row selection
    double: str  # a float column's type
    serial: str  # an id column that numbers its rows, never reusing a number
    lease_columns: tuple[str, ...]  # DDL adding the arguments' lease column
    notify: str | None  # SQL sending one notification (channel, payload), or None
    schema_lock: str | None  # serializes schema changes (SQLite: the write lock does)
    autocommits: bool  # one statement outside BEGIN is a transaction of its own
    greatest: str  # the larger of two values, as SQL
    least: str  # the smaller of two values, as SQL
    arguments_storage: tuple[str, ...]  # DDL tuning the arguments table (any store age)
    row_lock: str | None  # locks a project's queue row (SQLite: the write lock serializes)
    queue_only: tuple[str, ...]  # DDL that only queue stores run (queue_store.py)


@dataclass(frozen=True)
class Claimed:
    """One argument a node holds under its lease."""

    arg_id: int
    project: int
    args: bytes
    attempts: int


# A daemon's lease: made by its first claim, renewed by each claim and renewal.
_LEASE_UPSERT = (
    "INSERT INTO queue_leases (owner, host, expires) VALUES ({owner}, {host}, {now} + "
    "{lease}) ON CONFLICT (owner) DO UPDATE SET host = excluded.host, expires = excluded.expires"
)
# The last id of a claim's batch: its count of pending arguments from the start.
_LAST = (
    "SELECT MAX(id) FROM (SELECT id FROM arguments WHERE project = {project} AND id >= "
    "{start} AND state = 'pending' ORDER BY id LIMIT {count}) batch"
)
# The claim's one write per argument: state, lease, host and attempt (no time: the
# outcome brings the task's own), a range of ids in a project (an index range, no
# per-row locks: claims of a project take turns on its queue_projects row).
_TAKE = (
    "UPDATE arguments SET state = 'running', lease = {lease}, host = {host}, attempts = "
    "attempts + 1 WHERE project = {project} AND id BETWEEN {start} AND {last} AND state = "
    "'pending' RETURNING id, args, attempts"
)


def pg_claim(start: str) -> str:
    """A claim on PostgreSQL as one statement (one round trip), with named parameters
    owner, host, lease, project and count. ``start`` selects the project's ``next_id``
    (a ``queue_projects`` row aliased ``q``; no row: nothing is claimed); its row is
    locked, so the project's claims take turns, and moved past what was taken."""
    named = {"owner": "%(owner)s", "host": "%(host)s", "lease": "%(lease)s",
             "project": "%(project)s", "count": "%(count)s"}  # fmt: skip
    begin = "(SELECT next_id FROM start)"
    return (
        "WITH lease AS ("
        + _LEASE_UPSERT.format(now=PG_NOW, **named)
        + f" RETURNING id), start AS ({start} FOR NO KEY UPDATE OF q), last AS ("
        + _LAST.format(start=begin, **named).replace("MAX(id)", "MAX(id) AS id", 1)
        + "), claimed AS ("
        + _TAKE.format(start=begin, last="(SELECT id FROM last)",
                       **{**named, "lease": "(SELECT id FROM lease)"})
        + "), moved AS (UPDATE queue_projects SET next_id = GREATEST(next_id, (SELECT "
        "MAX(id) + 1 FROM claimed)) WHERE project = %(project)s AND EXISTS (SELECT 1 FROM "
        "claimed)) SELECT id, args, attempts FROM claimed"
    )  # fmt: skip


# Seconds since the epoch on PostgreSQL (the database's clock: nodes agree on leases).
PG_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
_PG_CLAIM = pg_claim("SELECT next_id FROM queue_projects q WHERE q.project = %(project)s")


class QueueClaims(StoreBase):
    """Claims, renewals, releases and expiries of argument leases (see the module)."""

    _queue: QueueDialect

    def _statement(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> tuple[int, list[Any]]:
        """Run one writing statement as its own transaction: ``(rows changed, rows
        returned)``. On PostgreSQL one round trip (no BEGIN/COMMIT: the connection
        autocommits), which is what an idle node's periodic work and a claim cost.
        Without ``params`` the text is not scanned for placeholders (it quotes ``?``)."""
        if not self._queue.autocommits:
            with self._transaction() as cursor:
                return _run(cursor, self._sql(sql), params)
        with self._lock:
            try:
                return _run(self._cursor(), self._sql(sql), params)
            except Exception as error:
                raise self._translate(error) from error

    def pause_claims(self, cursor: Any, project: int) -> None:
        """In the open transaction, wait for a claim of ``project`` under way and keep
        new ones waiting until it ends (its queue row locked, which a claim locks first):
        a statement that changes many of its arguments (a cancel, a removal) then never
        holds rows a claim waits for while it waits for rows that claim holds (a
        deadlock, which PostgreSQL would end by failing one of them)."""
        if self._queue.row_lock is None:
            return
        cursor.execute("SELECT to_regclass('queue_projects') IS NOT NULL")
        if cursor.fetchone()[0]:  # a store without the queue schema has no claims
            cursor.execute(self._sql(self._queue.row_lock), (project,))

    def claim_arguments(
        self, project: int, owner: str, host: str, count: int, lease: float
    ) -> list[Claimed]:
        """Claim up to ``count`` pending arguments of ``project`` under ``owner``'s lease,
        made or renewed to ``lease`` seconds from now, the lowest ids first; each claim
        counts an attempt.

        The search starts at the project's ``next_id``, which each claim moves past what
        it took. Arguments that became pending again below it (released, expired, or a
        concurrent claim that rolled back) are found by :meth:`_rewind` when a claim
        comes back empty, so none is left behind.
        """
        params = {"owner": owner, "host": host, "lease": lease, "project": project,
                  "count": count}  # fmt: skip
        claimed = self._claim(params)
        if not claimed and self._rewind(project):
            claimed = self._claim(params)
        claimed.sort(key=lambda row: int(row[0]))  # RETURNING keeps no order
        return [Claimed(int(i), project, bytes(a), int(n)) for i, a, n in claimed]

    def _claim(self, params: dict[str, Any]) -> list[Any]:
        """One claim (see :meth:`claim_arguments`): its rows ``(id, args, attempts)``."""
        if self._queue.autocommits:  # PostgreSQL: one statement, one round trip
            return self._statement(_PG_CLAIM, params)[1]
        marks = {name: "?" for name in params}
        with self._transaction() as cursor:  # SQLite: the write lock serializes claims
            cursor.execute(_LEASE_UPSERT.format(now=self._queue.now, **marks),
                           (params["owner"], params["host"], params["lease"]))  # fmt: skip
            cursor.execute("SELECT id FROM queue_leases WHERE owner = ?", (params["owner"],))
            lease = cursor.fetchone()[0]
            cursor.execute("SELECT next_id FROM queue_projects WHERE project = ?",
                           (params["project"],))  # fmt: skip
            found = cursor.fetchone()
            if found is None:
                return []
            cursor.execute(_LAST.format(**marks, start="?"),
                           (params["project"], found[0], params["count"]))  # fmt: skip
            last = cursor.fetchone()[0]
            if last is None:
                return []
            cursor.execute(_TAKE.format(**marks, start="?", last="?"),
                           (lease, params["host"], params["project"], found[0], last))  # fmt: skip
            rows = list(cursor.fetchall())
            if rows:
                top = max(int(row[0]) for row in rows) + 1
                cursor.execute("UPDATE queue_projects SET next_id = MAX(next_id, ?) "
                               "WHERE project = ?", (top, params["project"]))  # fmt: skip
            return rows

    def _rewind(self, project: int) -> bool:
        """Move ``project``'s ``next_id`` back to its lowest pending argument below it,
        if there is one; whether a look was made. A look scans the project's arguments,
        so it is made only when a claim found nothing, and at most every
        :data:`REWIND_SECONDS` per project, whichever node asks (the project's
        ``rewound`` time: at a project's end every node's claim finds nothing)."""
        now = self._queue.now
        lowest = (
            "(SELECT MIN(id) FROM arguments WHERE project = ? AND state = 'pending' "
            "AND id < queue_projects.next_id)"
        )
        changed, _ = self._statement(
            f"UPDATE queue_projects SET rewound = {now}, next_id = COALESCE({lowest}, "
            f"next_id) WHERE project = ? AND rewound <= {now} - ?",
            (project, project, REWIND_SECONDS),
        )
        return changed > 0

    def _lower(self, rows: Sequence[Any]) -> None:
        """Move each project's ``next_id`` down to the lowest of its arguments in
        ``rows`` (``(project, id)``) that became pending again."""
        lowest: dict[int, int] = {}
        for project, arg_id in rows:
            lowest[int(project)] = min(int(arg_id), lowest.get(int(project), int(arg_id)))
        if lowest:
            self._write(
                f"UPDATE queue_projects SET next_id = {self._queue.least}(next_id, ?), "
                "lowered = lowered + 1 WHERE project = ?",
                [(arg_id, project) for project, arg_id in sorted(lowest.items())],
            )

    def open_lease(self, owner: str, host: str) -> int:
        """The id of ``owner``'s lease row, made (expired, holding nothing) if it has
        none: what a daemon's nodes row names, for commits to hand it arguments under."""
        _, rows = self._statement(
            "INSERT INTO queue_leases (owner, host, expires) VALUES (?, ?, 0) ON CONFLICT "
            "(owner) DO UPDATE SET host = excluded.host RETURNING id",
            (owner, host),
        )
        return int(rows[0][0])

    def leased_to(self, lease: int) -> list[tuple[Claimed, float]]:
        """The arguments of running projects held under lease ``lease`` (its id), each
        with its project's per-task timeout: what a daemon that could not hear its
        events was handed meanwhile, among what it runs."""
        rows = self._read(
            "SELECT a.id, a.project, a.args, a.attempts, q.timeout FROM queue_projects q "
            "JOIN projects p ON p.id = q.project JOIN arguments a ON a.project = q.project "
            "WHERE p.state = 'running' AND a.lease = ? AND a.state = 'running' ORDER BY a.id",
            (lease,),
        )
        return [(Claimed(int(i), int(p), bytes(b), int(n)), float(t)) for i, p, b, n, t in rows]

    def renew_leases(self, owner: str, lease: float) -> int:
        """Extend ``owner``'s lease (every argument it holds) to ``lease`` seconds from
        now: one row, however many it holds. Returns 1, or 0 when it never claimed."""
        changed, _ = self._statement(
            f"UPDATE queue_leases SET expires = {self._queue.now} + ? WHERE owner = ?",
            (lease, owner),
        )
        return changed

    def release(self, owner: str, arg_ids: Sequence[int] | None = None) -> int:
        """Give back arguments ``owner`` holds (all, or ``arg_ids``) without counting
        the attempt: they are pending again for any node."""
        sql = (
            "UPDATE arguments SET state = 'pending', lease = NULL, attempts = attempts - 1 "
            "WHERE lease = (SELECT id FROM queue_leases WHERE owner = ?) AND state = "
            "'running' AND "
        )
        returned: list[Any] = []
        if arg_ids is None:
            returned += self._statement(sql + _LIVE + " RETURNING project, id", (owner,))[1]
        ids = list(arg_ids or ())
        for start in range(0, len(ids), _RELEASE_CHUNK):
            chunk = ids[start : start + _RELEASE_CHUNK]
            marks = ", ".join("?" * len(chunk))
            returned += self._statement(
                sql + f"id IN ({marks}) RETURNING project, id", (owner, *chunk)
            )[1]
        self._lower(returned)
        return len(returned)

    def expire_leases(self) -> list[int]:
        """Send arguments whose lease ran out back to the queue (an attempt counted),
        or fail them when their project's attempts are used up; returns the projects
        touched."""
        now, lock = self._queue.now, self._queue.skip_locked
        used_up = "attempts >= (SELECT q.max_attempts FROM queue_projects q WHERE q.project = arguments.project)"  # noqa: E501
        sql = (
            f"UPDATE arguments SET state = CASE WHEN {used_up} THEN 'failed' ELSE 'pending' "
            f"END, error = CASE WHEN {used_up} THEN 'its node was lost (lease expired) ' || "
            "attempts || ' times, last on ' || COALESCE(host, '?') ELSE NULL END, "
            "lease = NULL WHERE id IN (SELECT id FROM arguments WHERE state = 'running' "
            f"AND lease IN (SELECT id FROM queue_leases WHERE expires < {now}) AND {_LIVE}"
            f"{lock}) RETURNING project, id, state"
        )
        _, rows = self._statement(sql, ())
        self._lower([(project, arg_id) for project, arg_id, state in rows if state == "pending"])
        return sorted({int(row[0]) for row in rows})


__all__ = ["PG_NOW", "Claimed", "QueueClaims", "QueueDialect", "pg_claim"]
