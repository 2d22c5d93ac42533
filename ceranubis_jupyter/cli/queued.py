"""``ceranubis run ... --queue``: store the project for the node daemons and follow it.

Nothing runs in this process: the daemons (``ceranubis node``) claim the arguments. The
command follows the project through the store (the daemons are its host rows) until it
ends; ``--detach`` returns right after the commit. Ctrl-C stops only the following: the
project goes on in the queue (``ceranubis cancel NAME`` stops it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..projects.commit import commit_function
from ..projects.project import Project
from ..projects.queue_listen import QueueNodes
from .progress import ProgressDisplay
from .sink import Follower, ResultSink

# Seconds between looks at a queued project (each reads the store; the daemons are elsewhere).
QUEUE_FOLLOW_SECONDS = 0.5


def add_queue_options(options: argparse.ArgumentParser) -> None:
    """The queue-mode options a run and a saved job share."""
    group = options.add_argument_group("queue mode (node daemons run it)")
    group.add_argument(
        "--queue", action="store_true", default=None,
        help="store it for the node daemons (`ceranubis node`) instead of running it here",
    )  # fmt: skip
    group.add_argument("--priority", type=int, help="higher runs first (default: 0)")
    group.add_argument("--group", help="only daemons of this group run it")


def commit_queued(settings: Any, function: Any, args: list[tuple[Any, ...]]) -> Project:
    """Store the project in the queue; returns at once."""
    return commit_function(
        None, function, args, name=settings.name, store=settings.store,
        chunksize=settings.get("chunksize", 1), timeout=settings.get("timeout"),
        queue=True, priority=settings.get("priority") or 0, group=settings.get("group"),
    )  # fmt: skip


def follow_queued(
    project: Project, sink: ResultSink | None, display: ProgressDisplay | None
) -> int | None:
    """Follow a queued project to its end; ``None`` when it ended, else the exit status
    after Ctrl-C (the project goes on in the queue)."""
    nodes = QueueNodes(project.store)
    follower = Follower(project.store, project.id, sink) if sink is not None else None
    try:
        while not project.wait(QUEUE_FOLLOW_SECONDS):
            if follower is not None:
                follower.drain()
            if display is not None:
                display.show(project, nodes.hosts())
    except KeyboardInterrupt:
        if sink is not None:
            sink.discard()
        print(
            f"\nstopped following {project.name}; it goes on in the queue "
            f"(`ceranubis results {project.name}` later, `ceranubis cancel {project.name}` "
            "stops it)",
            file=sys.stderr,
        )
        return DETACHED_STATUS
    if display is not None:
        display.show(project, nodes.hosts(), final=True)
    if follower is not None and sink is not None:
        follower.drain()
        sink.commit()
    return None


# Exit status after Ctrl-C while following a queued project, as a shell reports for SIGINT.
DETACHED_STATUS = 130
