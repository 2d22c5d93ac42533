"""The one exit path: stages in a fixed order whatever the imports, and work finished.

Scripts run in a child interpreter, so that its real exit runs the hooks.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from ceranubis_jupyter import exits
from ceranubis_jupyter.projects.stores import open_store

# Seconds a child script may take (it starts local nodes and runs a few short tasks).
CHILD_TIMEOUT = 120


def _run(script: str, *args: str) -> str:
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert child.returncode == 0, child.stderr
    return child.stdout


def test_hooks_run_by_stage_not_by_registration() -> None:
    calls: list[str] = []
    before = {stage: list(hooks) for stage, hooks in exits._hooks.items()}
    try:
        for hook_stage in (exits.Stage.STORES, exits.Stage.RUNS, exits.Stage.EXECUTORS):
            exits._hooks[hook_stage] = [lambda s=hook_stage: calls.append(s.name)]
        exits._hooks[exits.Stage.POOLS] = [lambda: 1 / 0, lambda: calls.append("POOLS")]
        exits.run_exit_hooks()
    finally:
        exits._hooks.update(before)
    assert calls == ["RUNS", "POOLS", "EXECUTORS", "STORES"]  # and a failing hook stops none


PLAN = """
    import importlib, sys
    for name in sys.argv[1].split(","):
        importlib.import_module(name)
    from ceranubis_jupyter import exits
    for stage in sorted(exits.Stage):
        print(stage.name, [h.__qualname__ for h in exits._hooks[stage]])
"""
MODULES = [
    "ceranubis_jupyter.jupyter.session",
    "ceranubis_jupyter.projects.project",
    "ceranubis_jupyter.cluster.executor",
    "ceranubis_jupyter.projects.stores",
]


def test_the_exit_plan_does_not_depend_on_import_order() -> None:
    forward = _run(PLAN, ",".join(MODULES))
    backward = _run(PLAN, ",".join(reversed(MODULES)))
    assert forward == backward
    assert forward.splitlines() == [
        "RUNS ['_stop_live_runs']",
        "POOLS ['ExecutorPool.close']",
        "EXECUTORS ['_shutdown_all']",
        "STORES ['close_stores']",
    ]


def test_a_script_that_never_shuts_down_still_runs_its_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _run(
        """
        import sys
        from ceranubis_jupyter import CeranubisExecutor

        def mark(path, i):
            import time
            time.sleep(0.2)
            open(f"{path}/{i}", "w").close()

        ex = CeranubisExecutor(max_workers=2)
        futures = [ex.submit(mark, sys.argv[1], i) for i in range(6)]
        """,
        str(out),
    )
    assert sorted(p.name for p in out.iterdir()) == [str(i) for i in range(6)]


def test_a_project_run_at_exit_keeps_its_results_and_leaves_the_rest(tmp_path: Path) -> None:
    store = tmp_path / "projects.sqlite"
    _run(
        """
        import sys, time
        from ceranubis_jupyter.projects.commit import commit_function
        from ceranubis_jupyter.jupyter.session import POOL

        def slow(x):
            import time
            time.sleep(0.01 if x < 4 else 60)
            return x

        project = commit_function(POOL.get(None, 2), slow, [(x,) for x in range(8)],
                                  name="exiting", store=sys.argv[1])
        deadline = time.monotonic() + 60
        while project.status()[0] < 4 and time.monotonic() < deadline:
            project.wait(0.05)
        """,
        str(store),
    )
    reader = open_store(store)
    try:
        (summary,) = reader.list_projects()
        counts = reader.counts(summary.id)
    finally:
        reader.close()
    assert counts["done"] == 4 and counts["failed"] == counts["cancelled"] == 0
    assert counts["pending"] + counts["running"] == 4
