"""The payloads of queue mode's ``NOTIFY`` events that carry more than a project id.

A commit says the project's priority and group, so that a woken daemon knows without a
query whether the project is for it (``daemon/node.py``); the views read only the id. A
daemon says when it starts or stops serving (the views ignore that).
"""

from __future__ import annotations


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
    head, _, group = payload.removeprefix("commit:").partition(" ")
    priority, _, group = group.partition(" ")
    try:
        return int(head), int(priority or 0), group
    except ValueError:
        return None


__all__ = ["NODE_EVENT", "commit_payload", "node_payload", "parse_commit"]
