"""The payloads of queue mode's ``NOTIFY`` events that carry more than a project id, and
the score that says which daemon a small commit goes to first.

A commit says the project's priority and group, so that a woken daemon knows without a
query whether the project is for it (``daemon/node.py``); the views read only the id. A
daemon says when it starts or stops serving (the views ignore that).

A small commit (``queue_fast.INSERT_AT_ONCE``) may also hand its first arguments to one
live daemon in the commit's own transaction: they are stored running under that
daemon's lease, and the payload carries them (ids and bytes), the project's per-task
timeout, its birth and its code's key, so that the daemon starts them without a round
trip to the store (:class:`Hand`). Its lines after the first::

    <lease id> <arguments left pending> <timeout> <created> <code key>
    <argument id> <argument bytes, base64>
    ...
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass


def commit_payload(project: int, priority: int, group: str) -> str:
    """The ``NOTIFY`` payload of a committed queued project: ``commit:<id> <priority>
    <group>`` (a woken daemon decides from it whether the project is for it)."""
    return f"commit:{project} {priority} {group}"


# The head of a daemon's event when it starts serving or stops (``node:<name>``): the
# other daemons then read who serves again (whose turn a commit is: daemon/turns.py).
NODE_EVENT = "node:"


def node_payload(name: str) -> str:
    """The ``NOTIFY`` payload of daemon ``name`` starting or stopping."""
    return f"{NODE_EVENT}{name}"


def parse_commit(payload: str) -> tuple[int, int, str] | None:
    """``(project, priority, group)`` of a commit's payload; ``None`` for another event."""
    if not payload.startswith("commit:"):
        return None
    head, _, group = payload.removeprefix("commit:").partition("\n")[0].partition(" ")
    priority, _, group = group.partition(" ")
    try:
        return int(head), int(priority or 0), group
    except ValueError:
        return None


def score(project: int, name: str) -> int:
    """Daemon ``name``'s score for ``project``: the highest claims (or is handed) a
    commit first. The same on every daemon and in the server (:data:`SCORE_SQL`)."""
    return int(hashlib.md5(f"{project}:{name}".encode()).hexdigest()[:15], 16)


# :func:`score` in SQL, of a project id ``{project}`` and a daemon name ``{name}``.
SCORE_SQL = "('x' || substr(md5({project} || ':' || {name}), 1, 15))::bit(60)::bigint"


def code_key(code: str, target: str, function: bytes | None) -> str:
    """The key of a project's code (its source, target name and stored function), by
    which a daemon knows a handed project's function without reading its row."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (code.encode(), target.encode(), function or b""):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Hand:
    """Arguments a commit handed to the daemon holding lease ``lease``: ``args`` as
    ``(argument id, bytes)``, each with its first attempt counted; ``pending``: how
    many of the project's arguments it left for the claims."""

    project: int
    priority: int
    group: str
    lease: int
    pending: int
    timeout: float
    created: float
    code_key: str
    args: tuple[tuple[int, bytes], ...]


def parse_hand(payload: str, lease: int | None = None) -> Hand | None:
    """The hand a commit's payload carries; ``None`` when it carries none (or is not a
    commit, or is malformed: the daemons then claim as for any commit). With ``lease``,
    the arguments of a hand under another lease are left undecoded (``args`` empty):
    every daemon hears every hand, and only one runs it."""
    commit = parse_commit(payload)
    lines = payload.split("\n")
    if commit is None or len(lines) < 3:
        return None
    try:
        held, pending, timeout, created, key = lines[1].split(" ")
        mine = lease is None or int(held) == lease
        args = tuple(_handed(line) for line in lines[2:]) if mine else ()
        return Hand(*commit, int(held), int(pending), float(timeout), float(created), key, args)
    except (ValueError, binascii.Error):
        return None


def _handed(line: str) -> tuple[int, bytes]:
    arg_id, blob = line.split(" ")
    return int(arg_id), base64.b64decode(blob, validate=True)


__all__ = [
    "NODE_EVENT",
    "SCORE_SQL",
    "Hand",
    "code_key",
    "commit_payload",
    "node_payload",
    "parse_commit",
    "parse_hand",
    "score",
]
