"""One tree's side of ``bench_q2.py``: Q2 samples on request, and traced daemons.

Run with the tree to measure first on ``sys.path`` (``PYTHONPATH``):

- ``python q2_child.py commit URL``: reads a count per stdin line, commits that many
  one-task projects (one at a time, idle daemons between), prints one JSON line per batch:
  ``[[project id, sent, committed, started], ...]`` (``time.time()`` seconds);
- ``python q2_child.py node URL NAME TRACE``: a ``ceranubis node`` (1 worker) whose
  stages are appended to the file ``TRACE`` as JSON lines ``[stage, project, time]``.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from typing import Any

# Seconds between samples: the daemons go back to their idle wait first.
IDLE = 0.1
# Seconds one sample may take before the run stops.
SAMPLE_TIMEOUT = 60.0
STAMP_SOURCE = "import time\n\ndef stamp(x):\n    return time.time()\n"


def commit(url: str) -> None:
    from ceranubis_jupyter import commit_project

    serials = itertools.count()  # each argument new: no stored result is reused
    for line in sys.stdin:
        found = []
        for serial in itertools.islice(serials, int(line)):
            time.sleep(IDLE)
            sent = time.time()
            project = commit_project(STAMP_SOURCE, "stamp", [(serial,)], store=url, queue=True)
            committed = time.time()
            if not project.wait(SAMPLE_TIMEOUT):
                raise RuntimeError(f"Q2 task not done: {project.counts()}")
            found.append([project.id, sent, committed, project.results()[0][1]])
        print(json.dumps(found), flush=True)


def _traced(owner: Any, name: str, stage: str, log: Any, project_of: Any) -> None:
    """Wrap ``owner.name`` so that each call appends ``[stage, project, end time]``."""
    inner = getattr(owner, name, None)
    if inner is None:
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begun = time.time()
        value = inner(*args, **kwargs)
        log.write(json.dumps([stage, project_of(args, value), begun, time.time()]) + "\n")
        log.flush()
        return value

    setattr(owner, name, wrapper)


def node(url: str, name: str, trace: str) -> int:
    from ceranubis_jupyter.cluster.executor import NodeExecutor
    from ceranubis_jupyter.daemon import node as daemon
    from ceranubis_jupyter.daemon.runner import Runner
    from ceranubis_jupyter.projects.store import Store
    from ceranubis_jupyter.projects.store_pg import PostgresStore

    log = open(trace, "a")  # noqa: SIM115 (open for the process's life)
    _traced(daemon.QueueNode, "_heard", "heard", log, lambda a, v: a[1])
    _traced(Store, "queued_projects", "look", log, lambda a, v: [p.id for p in v])
    claimed = lambda a, v: [a[1], len(getattr(v, "claimed", v))]  # noqa: E731
    _traced(PostgresStore, "claim_arguments", "claim", log, claimed)
    _traced(PostgresStore, "claim_woken", "woken", log, claimed)
    _traced(Runner, "run", "run", log, lambda a, v: a[1])
    _traced(NodeExecutor, "submit_prepared", "submitted", log, lambda a, v: None)
    return daemon.run_node(url, workers=1, name=name)


if __name__ == "__main__":
    if sys.argv[1] == "commit":
        commit(sys.argv[2])
    else:
        sys.exit(node(*sys.argv[2:5]))
