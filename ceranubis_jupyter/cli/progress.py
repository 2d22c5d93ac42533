"""A run's progress in a shell: a live bar on a terminal, plain lines in a pipe or a log.

The numbers come from :func:`~ceranubis_jupyter.jupyter.progress.snapshot_of` (the
widget's model); this module only draws them::

    squares [######----------] running: 4000/10000 done · 0 failed · 1021.5/s · ETA 0:06
      local        up   4/4 busy      2100 done  load 3.1  mem 41%
      gpu1         up   8/8 busy      1900 done  load 7.9  mem 12%

On a terminal the block is redrawn in place every :data:`TERMINAL_SECONDS`; elsewhere
one summary line is printed every :data:`PLAIN_SECONDS` (and one at the end).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from typing import Any, TextIO

from ..jupyter.progress import HostRow, RateMeter, Snapshot, format_rate, snapshot_of
from ..projects.display import format_duration
from .output import printable

# Seconds between redraws on a terminal: smooth enough to look live, rare enough to cost
# nothing next to the run.
TERMINAL_SECONDS = 0.2
# Seconds between plain lines (a pipe, a log file): a log stays short for long runs, and
# a run of a few seconds still shows that it moves.
PLAIN_SECONDS = 2.0
# Characters of the bar on a terminal.
BAR_WIDTH = 16
# Characters of a host name shown (longer ones are cut).
HOST_WIDTH = 18
# Narrowest line drawn, whatever the terminal says (a pty may report 0 columns).
MIN_WIDTH = 40
# ANSI: go to the start of the line N lines up, and clear to the end of the screen.
_UP = "\x1b[{}F"
_CLEAR = "\x1b[J"


class ProgressDisplay:
    """Draws a run's progress on ``stream``: live when it is a terminal, else plain.

    Args:
        stream: where to draw (``sys.stderr`` keeps stdout for data).
        live: redraw in place; default: whether ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO, live: bool | None = None) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.every = TERMINAL_SECONDS if self.live else PLAIN_SECONDS
        self._meter = RateMeter()
        self._drawn_lines = 0
        self._next = 0.0

    def due(self, now: float | None = None) -> bool:
        """True when the next frame should be drawn."""
        return (time.monotonic() if now is None else now) >= self._next

    def show(self, project: Any, hosts: Iterable[Any] = (), final: bool = False) -> None:
        """Draw one frame (the final one is always drawn, in plain mode as a last line)."""
        now = time.monotonic()
        if not final and now < self._next:
            return
        self._next = now + self.every
        snapshot = snapshot_of(project, hosts, self._meter, now)
        if self.live:
            self._redraw(frame_lines(snapshot))
        else:
            self.stream.write(printable(bar_line(snapshot)) + "\n")
        self.stream.flush()

    def _redraw(self, lines: list[str]) -> None:
        # Lines cut to the terminal's width: a wrapped line would throw the redraw off.
        width = max(MIN_WIDTH, shutil.get_terminal_size().columns - 1)
        lines = [line if len(line) <= width else line[: width - 1] + "…" for line in lines]
        up = _UP.format(self._drawn_lines) if self._drawn_lines else "\r"
        self.stream.write(up + _CLEAR + "\n".join(lines) + "\n")
        self._drawn_lines = len(lines)


def frame_lines(snapshot: Snapshot) -> list[str]:
    """The terminal block: the summary bar, then one line per host."""
    return [printable(bar_line(snapshot)), *(host_line(row) for row in snapshot.hosts)]


def bar_line(snapshot: Snapshot) -> str:
    """``name [#####-----] running: 45/100 done · 2 failed · 12.0/s · ETA 0:05``: the
    widget's numbers in a line that fits a terminal (the elapsed time once it ended)."""
    filled = round(snapshot.fraction * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    counts = snapshot.counts
    when = (
        f"took {format_duration(snapshot.elapsed)}"
        if snapshot.final
        else f"ETA {format_duration(snapshot.eta)}"
    )
    return (
        f"{snapshot.title} [{bar}] {snapshot.state}: {counts.done}/{snapshot.total} done · "
        f"{counts.failed} failed · {format_rate(snapshot.rate)} · {when}"
    )


def host_line(row: HostRow) -> str:
    """``  gpu1   up   8/8 busy   1900 done  load 7.9  mem 12%`` (or the host's error)."""
    name = printable(row.host)
    name = name if len(name) <= HOST_WIDTH else name[: HOST_WIDTH - 1] + "…"
    if row.error:
        return f"  {name:<{HOST_WIDTH}} {row.state}: {printable(row.error)[:80]}"
    return (
        f"  {name:<{HOST_WIDTH}} {row.state:<9} {row.busy:>3}/{row.workers:<3} busy "
        f"{row.done:>9} done  load {row.loadavg:.1f}  mem {row.memory_percent:.0f}%"
    )
