"""The pure progress model, the widget drawing it, the text line and the tables."""

from __future__ import annotations

import io

import pytest

from ceranubis_jupyter.cluster.link import HostInfo
from ceranubis_jupyter.jupyter.live import TextLine
from ceranubis_jupyter.jupyter.progress import (
    OUTPUT_LINES_PER_HOST,
    Counts,
    HostRow,
    RateMeter,
    Snapshot,
    format_duration,
    format_rate,
    last_lines_per_host,
    snapshot_of,
)
from ceranubis_jupyter.jupyter.widget import ProgressWidget, render_errors, render_output
from ceranubis_jupyter.projects.display import HostsTable
from ceranubis_jupyter.wire.describe import short_repr


def snap(state: str = "running", **counts: int) -> Snapshot:
    return Snapshot("sweep-7", state, Counts(**counts), elapsed=4.0, rate=2.0)


def test_counts_total_finished_and_fraction() -> None:
    s = snap(pending=49, running=4, done=45, failed=2)
    assert s.total == 100
    assert s.counts.finished == 47
    assert s.fraction == pytest.approx(0.47)
    assert snap("done").fraction == 1.0  # empty project


def test_eta_from_rate_and_left_work() -> None:
    assert snap(pending=6, running=4, done=10).eta == pytest.approx(5.0)  # 10 left / 2/s
    stalled = Snapshot("p", "running", Counts(pending=3), rate=0.0)
    assert stalled.eta is None
    assert snap("cancelled", pending=3).eta == 0.0


@pytest.mark.parametrize(
    ("state", "counts", "style"),
    [
        ("running", {"pending": 3}, ""),
        ("running", {"pending": 3, "failed": 1}, "danger"),
        ("done", {"done": 3}, "success"),
        ("failed", {"done": 2, "failed": 1}, "danger"),
        ("cancelled", {"done": 1, "cancelled": 2}, "warning"),
    ],
)
def test_style_red_on_failure_green_when_done(
    state: str, counts: dict[str, int], style: str
) -> None:
    assert snap(state, **counts).style == style


def test_text_line_shows_bar_counts_rate_eta() -> None:
    text = snap(pending=50, running=4, done=44, failed=2).text()
    assert text.startswith("sweep-7 [#########-----------] running: ")
    for part in (
        "44/100 done",
        "2 failed",
        "4 running",
        "50 pending",
        "2.0/s",
        "elapsed 0:04",
        "ETA 0:27",
    ):
        assert part in text, (part, text)
    assert "ETA" not in snap("done", done=3).text()


def test_rate_meter_uses_a_sliding_window() -> None:
    meter = RateMeter(window=10.0)
    assert meter.add(0.0, 0) == 0.0
    assert meter.add(5.0, 50) == pytest.approx(10.0)
    assert meter.add(10.0, 100) == pytest.approx(10.0)
    # slower lately: the window forgets the fast start
    meter.add(20.0, 110)
    assert meter.add(30.0, 120) == pytest.approx(1.0)


def test_output_is_bounded_per_host_and_per_line() -> None:
    lines = [("a", f"line {i}") for i in range(50)] + [("b", "x" * 10_000)]
    kept = last_lines_per_host(lines)
    assert [line for host, line in kept if host == "a"] == [
        f"line {i}" for i in range(50 - OUTPUT_LINES_PER_HOST, 50)
    ]
    (long_line,) = [line for host, line in kept if host == "b"]
    assert len(long_line) <= 200 and long_line.endswith("...")


def test_formatting_helpers() -> None:
    assert format_duration(7) == "0:07"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(None) == "?"
    assert format_rate(0.5) == "30.0/min"
    assert format_rate(0) == "-/s"

    class Bad:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert short_repr(Bad()) == "<Bad object>"
    assert short_repr("y" * 500).endswith("...")


def test_widget_draws_a_snapshot() -> None:
    cancelled = []
    view = ProgressWidget(["local"], on_cancel=lambda: cancelled.append(True))
    s = Snapshot(
        "sweep-7",
        "running",
        Counts(pending=5, running=2, done=3, failed=1),
        2.0,
        2.0,
        hosts=(HostRow("local", "ready", 2, 4, 4, 0.5, 30.0, 40.0),),
        recent=(("(1,)", "2"),),
        errors=(("(7,)", "Traceback ...\nValueError: bad <7>"),),
        output=(("local", "hello <b>"),),
    )
    view.show(s)
    assert (view.bar.value, view.bar.max, view.bar.bar_style) == (4, 11, "danger")
    assert view.counts.value.startswith("3/11 done · 1 failed · 2 running · 5 pending")
    assert "<td>2/4</td>" in view.host_table.value
    assert "ValueError: bad &lt;7&gt;" in view.errors.value  # escaped, last line in summary
    assert "[local] hello &lt;b&gt;" in view.output.value
    assert not view.cancel_button.disabled
    view.cancel_button.click()
    assert cancelled == [True]
    view.show(Snapshot("sweep-7", "done", Counts(done=11), 3.0, 2.0))
    assert (view.bar.value, view.bar.bar_style, view.cancel_button.disabled) == (
        11,
        "success",
        True,
    )
    assert view._repr_mimebundle_()["text/plain"].startswith("sweep-7 [####")


def test_render_helpers_are_empty_without_data() -> None:
    assert render_errors(()) == "" and render_output(()) == ""


def test_text_line_rewrites_in_a_terminal_and_appends_elsewhere() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, plain = Tty(), io.StringIO()
    for stream in (tty, plain):
        line = TextLine(stream)
        line(snap(pending=2, done=1))
        line(snap("done", done=3))
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\n")
    assert plain.getvalue().count("\n") == 2 and "\r" not in plain.getvalue()


def test_hosts_table_text_and_html() -> None:
    info = HostInfo(
        "local",
        "ready",
        4,
        "3.11.7",
        busy=1,
        loadavg=0.25,
        cpu_percent=12.0,
        memory_percent=40.0,
        done=9,
    )
    table = HostsTable([info])
    assert table.rows == [("local", "ready", 4, "3.11.7", "0.25", "12%", "40%", 9)]
    assert repr(table).splitlines()[0].split() == list(HostsTable.HEAD)
    assert "<td>3.11.7</td>" in table._repr_html_()


class _Source:
    """A minimal progress source: the shape ``snapshot_of`` reads from a Project."""

    name, state = "sweep-8", "running"

    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts

    def counts(self) -> dict[str, int]:
        return self._counts

    def elapsed(self) -> float:
        return 2.0

    def recent(self, n: int = 5) -> list[tuple[tuple[int], int]]:
        return []

    def recent_errors(self, n: int = 3) -> list[tuple[tuple[int], str]]:
        return []

    def outputs(self, n: int = 20) -> list[tuple[str, str]]:
        return []


def test_tasks_queued_on_nodes_count_as_pending_not_running() -> None:
    source = _Source({"pending": 8, "running": 4, "done": 4})
    busy = [HostInfo("local", "ready", 2, "3.11.7", busy=2)]
    counts = snapshot_of(source, busy).counts
    assert (counts.running, counts.pending, counts.total) == (2, 10, 16)
    assert snapshot_of(source).counts.running == 4, "without host rows nothing is capped"
