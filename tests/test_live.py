"""The live view over a real project: throttled redraws, bounded output, the final state."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.jupyter.live import MIN_REDRAW_SECONDS, LiveProgress
from ceranubis_jupyter.jupyter.progress import OUTPUT_LINES_PER_HOST, Snapshot
from ceranubis_jupyter.jupyter.widget import ProgressWidget
from ceranubis_jupyter.projects.commit import commit_function
from tests.waiting import wait_for


def tiny(x: int) -> int:
    return x + 1


def chatty(x: int) -> int:
    for line in range(30):
        print(f"task {x} line {line}")
    return x


@pytest.fixture
def executor(ceranubis_store: Path) -> Iterator[CeranubisExecutor]:
    with CeranubisExecutor(max_workers=2) as ex:
        yield ex


def test_redraws_are_throttled_while_results_stream_in(executor: CeranubisExecutor) -> None:
    drawn: list[tuple[float, Snapshot]] = []
    lock = threading.Lock()

    def view(snapshot: Snapshot) -> None:
        with lock:
            drawn.append((time.monotonic(), snapshot))

    project = commit_function(executor, tiny, [(i,) for i in range(3000)], name="many")
    live = LiveProgress(project, view).start()
    assert project.wait(timeout=60)
    # The refresher draws the final state by itself (and then stops drawing).
    wait_for(lambda: drawn[-1][1].final, 30, "the final state drawn")
    by_refresher = list(drawn)
    live.stop()
    final = by_refresher[-1][1]
    assert final.final and final.counts.done == 3000, final
    times = [t for t, _ in by_refresher]
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]  # after start()'s own draw
    assert gaps and min(gaps) >= MIN_REDRAW_SECONDS * 0.9, gaps
    assert len({s.counts.done for _, s in drawn}) >= 2  # it moved, not only start and end


def test_widget_shows_bounded_output_per_host(executor: CeranubisExecutor) -> None:
    view = ProgressWidget(["local"])
    project = commit_function(executor, chatty, [(i,) for i in range(10)], name="chatty")
    live = LiveProgress(project, view.show).start()
    assert project.wait(timeout=60)
    live.stop()
    lines = view.output.value.split("<pre", 1)[1].split("\n")
    assert 1 <= len(lines) <= OUTPUT_LINES_PER_HOST, lines
    assert "line 29" in lines[-1] and "[local]" in lines[-1], lines
    assert view.bar.bar_style == "success" and view.bar.value == 10
