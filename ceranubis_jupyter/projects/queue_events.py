"""The payloads of queue mode's ``NOTIFY`` events that carry more than a project id.

A commit says the project's priority and group, so that a woken daemon knows without a
query whether the project is for it (``daemon/node.py``); the views read only the id.
"""

from __future__ import annotations


def commit_payload(project: int, priority: int, group: str) -> str:
    """The ``NOTIFY`` payload of a committed queued project: ``commit:<id> <priority>
    <group>`` (a woken daemon decides from it whether the project is for it)."""
    return f"commit:{project} {priority} {group}"


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


__all__ = ["commit_payload", "parse_commit"]
