"""Queue mode's claims and leases: the part of the queue store (``QueueStore``) that takes
arguments for a node daemon, renews and releases its leases, and sends expired ones back
to the queue.

A claim starts at its project's ``queue_projects.next_id`` and moves it past what it took,
so it needs no index of pending rows: no index names a column that a claim, a renewal or
an outcome changes, and on PostgreSQL those updates are HOT (the new row version stays on
its page; no index gets an entry). Arguments that become pending again below ``next_id``
move it back down (and count the move in ``lowered``, so a claim racing with it does not
undo it); a claim that finds nothing looks once for any left below it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .store_base import StoreBase

# Arguments of the projects that run: where renewals, releases and expiries look for
# leased rows (through the project's index, as no index holds the leased rows).
_LIVE = (
    "project IN (SELECT q.project FROM queue_projects q JOIN projects p ON p.id = q.project "
    "WHERE p.state = 'running')"
)
# Ids per statement when releasing given arguments.
_RELEASE_CHUNK = 500
# Seconds between two looks below a project's next_id from one store (each scans the
# project's arguments). Only a claim that rolled back after another moved next_id past
# it leaves pending arguments there, so a look skipped delays them by a node's next look;
# shorter finds them sooner, longer costs the server less while a project's last
# arguments run and claims of it come back empty.
REWIND_SECONDS = 1.0


def _run(cursor: Any, sql: str, params: Sequence[Any]) -> tuple[int, list[Any]]:
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
    lease_columns: tuple[str, ...]  # DDL adding the argument lease columns
    notify: str | None  # SQL sending one notification (channel, payload), or None
    schema_lock: str | None  # serializes schema changes (SQLite: the write lock does)
    autocommits: bool  # one statement outside BEGIN is a transaction of its own
    greatest: str  # the larger of two values, as SQL
    least: str  # the smaller of two values, as SQL
    arguments_storage: tuple[str, ...]  # DDL tuning the arguments table (any store age)


@dataclass(frozen=True)
class Claimed:
    """One argument a node holds under its lease."""

    arg_id: int
    project: int
    args: bytes
    attempts: int


class QueueClaims(StoreBase):
    """Claims, renewals, releases and expiries of argument leases (see the module)."""

    _queue: QueueDialect

    def _statement(self, sql: str, params: Sequence[Any]) -> tuple[int, list[Any]]:
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

    def claim_arguments(
        self, project: int, owner: str, host: str, count: int, lease: float
    ) -> list[Claimed]:
        """Claim up to ``count`` pending arguments of ``project`` under a lease of
        ``lease`` seconds, the lowest ids first; each claim counts an attempt.

        The search starts at the project's ``next_id``, which each claim moves past what
        it took. Arguments that became pending again below it (released, expired, or a
        concurrent claim that rolled back) are found by :meth:`_rewind` when a claim
        comes back empty, so none is left behind.
        """
        params = (owner, lease, host, project, count)
        claimed = self._claim(params)
        if not claimed and self._rewind(project):
            claimed = self._claim(params)
        claimed.sort(key=lambda row: int(row[0]))  # RETURNING keeps no order
        return [Claimed(int(i), project, bytes(a), int(n)) for i, a, n in claimed]

    def _claim(self, params: tuple[str, float, str, int, int]) -> list[Any]:
        """One claim (see :meth:`claim_arguments`): its rows ``(id, args, attempts)``.

        ``next_id`` moves forward only while ``lowered`` is what the claim read: a
        release or an expiry that committed meanwhile (moving it back, ``lowered + 1``)
        wins, so arguments the claim saw as running are not left below it.
        """
        now, dialect = self._queue.now, self._queue
        owner, lease, host, project, count = params
        update = (
            f"UPDATE arguments SET state = 'running', lease_owner = ?, lease_expires = {now} "
            f"+ ?, host = ?, started = {now}, attempts = attempts + 1 WHERE id IN (SELECT id "
            "FROM arguments WHERE project = ? AND id >= {start} AND state = 'pending' "
            f"ORDER BY id LIMIT ?{dialect.skip_locked}) RETURNING id, args, attempts"
        )
        advance = f"UPDATE queue_projects SET next_id = {dialect.greatest}(next_id, {{top}}) "
        advance += "WHERE project = ? AND lowered = {seen}"
        if dialect.autocommits:  # PostgreSQL: one statement, one round trip
            sql = (
                "WITH seen AS (SELECT next_id, lowered FROM queue_projects WHERE project = ?), "
                f"claimed AS ({update.format(start='(SELECT next_id FROM seen)')}), moved AS ("
                + advance.format(top="(SELECT MAX(id) + 1 FROM claimed)",
                                 seen="(SELECT lowered FROM seen)")
                + " AND EXISTS (SELECT 1 FROM claimed)) SELECT id, args, attempts FROM claimed"
            )  # fmt: skip
            return self._statement(sql, (project, owner, lease, host, project, count, project))[1]
        with self._transaction() as cursor:  # SQLite: the write lock serializes claims
            cursor.execute("SELECT next_id, lowered FROM queue_projects WHERE project = ?",
                           (project,))  # fmt: skip
            found = cursor.fetchone()
            if found is None:
                return []
            cursor.execute(update.format(start="?"), (*params[:4], found[0], count))
            rows = list(cursor.fetchall())
            if rows:
                top = max(int(row[0]) for row in rows) + 1
                cursor.execute(advance.format(top="?", seen="?"), (top, project, found[1]))
            return rows

    def _rewind(self, project: int) -> bool:
        """Move ``project``'s ``next_id`` back to its lowest pending argument, if one is
        below it; whether it moved. A scan of the project's arguments: run only when a
        claim found nothing, at most every :data:`REWIND_SECONDS` per project."""
        looked: dict[int, float] = self.__dict__.setdefault("_rewound", {})
        now = time.monotonic()
        if now < looked.get(project, -REWIND_SECONDS) + REWIND_SECONDS:
            return False
        looked[project] = now
        lowest = "(SELECT MIN(id) FROM arguments WHERE project = ? AND state = 'pending')"
        changed, _ = self._statement(
            f"UPDATE queue_projects SET next_id = {lowest}, lowered = lowered + 1 "
            "WHERE project = ? AND next_id > "
            f"{lowest}",
            (project, project, project),
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

    def renew_leases(self, owner: str, lease: float) -> int:
        """Extend every lease ``owner`` holds by ``lease`` seconds from now."""
        changed, _ = self._statement(
            f"UPDATE arguments SET lease_expires = {self._queue.now} + ? "
            f"WHERE lease_owner = ? AND state = 'running' AND {_LIVE}",
            (lease, owner),
        )
        return changed

    def release(self, owner: str, arg_ids: Sequence[int] | None = None) -> int:
        """Give back arguments ``owner`` holds (all, or ``arg_ids``) without counting
        the attempt: they are pending again for any node."""
        sql = (
            "UPDATE arguments SET state = 'pending', lease_owner = NULL, "
            "attempts = attempts - 1 WHERE lease_owner = ? AND state = 'running' AND "
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
            "lease_owner = NULL WHERE id IN (SELECT id FROM arguments WHERE state = 'running' "
            f"AND lease_expires < {now} AND {_LIVE}{lock}) RETURNING project, id, state"
        )
        _, rows = self._statement(sql, ())
        self._lower([(project, arg_id) for project, arg_id, state in rows if state == "pending"])
        return sorted({int(row[0]) for row in rows})


__all__ = ["Claimed", "QueueClaims", "QueueDialect"]
