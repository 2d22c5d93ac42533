"""The pure progress model of a project: a frozen :class:`Snapshot` and its text form.

Numbers (counts, rate, ETA, per-host rows, the last results, errors and output lines)
live here; :mod:`~ceranubis_jupyter.widget` only draws them, and the text fallback is
:meth:`Snapshot.text`. Nothing in this module does I/O or touches a thread::

    Project / HostInfo ──snapshot_of()──► Snapshot ──► widget.ProgressWidget (HTML)
           RateMeter (samples) ──┘                 └─► Snapshot.text()  (terminal)
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..projects.display import format_duration
from ..wire.describe import short_repr

# How many finished results the snapshot keeps (more crowds the widget).
RECENT_RESULTS = 5
# How many errors (with their tracebacks) the snapshot keeps.
RECENT_ERRORS = 3
# Output lines kept per host; the rest is in ``Project.outputs()``. Bounds the widget.
OUTPUT_LINES_PER_HOST = 4
# Output lines asked from the project (over all hosts) before the per-host cut.
OUTPUT_LINES_FETCHED = 40
# Longest output line shown; a task printing a megabyte line must not flood the page.
LINE_LIMIT = 200
# Seconds of history the rate is measured over: shorter follows changes, longer is calmer.
RATE_WINDOW_SECONDS = 10.0
# Width of the text progress bar, in characters.
TEXT_BAR_WIDTH = 20

FINAL_STATES = frozenset({"done", "failed", "cancelled", "stopped"})


@dataclass(frozen=True)
class Counts:
    """Argument tuples by state."""

    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        """Every argument tuple of the project."""
        return self.pending + self.running + self.done + self.failed + self.cancelled

    @property
    def finished(self) -> int:
        """Tuples that will not run again (done or failed)."""
        return self.done + self.failed

    @classmethod
    def from_mapping(cls, counts: dict[str, int]) -> Counts:
        """From ``Project.counts()`` (missing states count zero)."""
        return cls(**{name: int(counts.get(name, 0)) for name in _COUNT_NAMES})


_COUNT_NAMES = ("pending", "running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class HostRow:
    """One host's line in the widget."""

    host: str
    state: str = "starting"
    busy: int = 0
    workers: int = 0
    done: int = 0
    loadavg: float = 0.0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    error: str = ""
    sync: str = ""  # a data sync under way or failed

    @classmethod
    def from_info(cls, info: Any) -> HostRow:
        """From a :class:`~ceranubis_jupyter.scheduler.HostInfo`."""
        return cls(
            info.host,
            info.state,
            info.busy,
            info.workers,
            info.done,
            info.loadavg,
            info.cpu_percent,
            info.memory_percent,
            info.error,
            str(getattr(info, "sync", "")),
        )


@dataclass(frozen=True)
class Snapshot:
    """Everything the widget and the text line show, at one instant.

    Attributes:
        name: the project's name.
        state: ``running``, ``done``, ``failed``, ``cancelled`` or ``stopped``.
        counts: argument tuples by state.
        elapsed: seconds since the project started.
        rate: argument tuples finished per second, lately.
        hosts: one row per host.
        recent: the last results, as ``(args, result)`` reprs.
        errors: the last errors, as ``(args repr, remote traceback text)``.
        output: the last output lines, as ``(host, line)``, a few per host.
        version: which version of its name the project is; ``changes``: how it differs
            from the one before.
        reused: arguments that took a stored result instead of running.
    """

    name: str
    state: str
    counts: Counts
    elapsed: float = 0.0
    rate: float = 0.0
    hosts: tuple[HostRow, ...] = ()
    recent: tuple[tuple[str, str], ...] = ()
    errors: tuple[tuple[str, str], ...] = ()
    output: tuple[tuple[str, str], ...] = field(default=())
    version: int = 1
    changes: str = ""
    reused: int = 0

    @property
    def total(self) -> int:
        """Every argument tuple."""
        return self.counts.total

    @property
    def fraction(self) -> float:
        """Finished share, 0.0 to 1.0 (1.0 for an empty project)."""
        return self.counts.finished / self.total if self.total else 1.0

    @property
    def final(self) -> bool:
        """True when the project will not change any more."""
        return self.state in FINAL_STATES

    @property
    def eta(self) -> float | None:
        """Seconds until the rest is finished at the current rate; None if unknown."""
        left = self.counts.pending + self.counts.running
        if self.final or left == 0:
            return 0.0
        if self.rate <= 0:
            return None
        return left / self.rate

    @property
    def style(self) -> str:
        """``success`` (green, done), ``danger`` (red, failures), ``warning`` or ``""``."""
        if self.state == "failed" or self.counts.failed:
            return "danger"
        if self.state == "done":
            return "success"
        if self.state in ("cancelled", "stopped"):
            return "warning"
        return ""

    def summary(self) -> str:
        """The counts line: ``45/100 done · 2 failed · 4 running · 49 pending · ...``."""
        c = self.counts
        parts = [
            f"{c.done}/{self.total} done",
            f"{c.failed} failed",
            f"{c.running} running",
            f"{c.pending} pending",
        ]
        if c.cancelled:
            parts.append(f"{c.cancelled} cancelled")
        parts += [f"{row.host} {row.sync}" for row in self.hosts if row.sync]
        if self.reused:
            parts.append(f"{self.reused:,} reused · {c.done - self.reused:,} run")
        parts.append(f"{format_rate(self.rate)}")
        parts.append(f"elapsed {format_duration(self.elapsed)}")
        if not self.final:
            parts.append(f"ETA {format_duration(self.eta)}")
        return " · ".join(parts)

    def text(self) -> str:
        """One line for terminals and plain notebook viewers."""
        filled = round(self.fraction * TEXT_BAR_WIDTH)
        bar = "#" * filled + "-" * (TEXT_BAR_WIDTH - filled)
        return f"{self.title} [{bar}] {self.state}: {self.summary()}"

    @property
    def title(self) -> str:
        """The name, and from the second version on which one and how it differs:
        ``sweep v2 (code changed, 10 arguments added)``."""
        if self.version == 1 and not self.changes:
            return self.name
        changes = f" ({self.changes})" if self.changes else ""
        return f"{self.name} v{self.version}{changes}"


class RateMeter:
    """Finished-per-second over a sliding window of ``(time, finished)`` samples."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, finished: int) -> float:
        """Record a sample; returns the rate over the window (0.0 until two samples)."""
        self._samples.append((now, finished))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_t, first_n = self._samples[0]
        if now - first_t <= 0:
            return 0.0
        return max(0.0, (finished - first_n) / (now - first_t))


class ProgressSource(Protocol):
    """What :func:`snapshot_of` needs from a project (``project.Project`` has it; its
    ``version``, ``changes`` and ``reused`` are read when present)."""

    name: str

    @property
    def state(self) -> str: ...

    def counts(self) -> dict[str, int]: ...

    def elapsed(self) -> float: ...

    def recent(self, n: int = ...) -> Sequence[Any]: ...

    def recent_errors(self, n: int = ...) -> Sequence[Any]: ...

    def outputs(self, n: int = ...) -> Sequence[Any]: ...


def snapshot_of(
    project: ProgressSource,
    hosts: Iterable[Any] = (),
    meter: RateMeter | None = None,
    now: float | None = None,
) -> Snapshot:
    """Read a project (and its executor's ``HostInfo`` list) into a :class:`Snapshot`."""
    rows = tuple(HostRow.from_info(info) for info in hosts)
    counts = _running_capped(Counts.from_mapping(project.counts()), rows)
    elapsed = float(project.elapsed())
    if meter is not None:
        rate = meter.add(time.monotonic() if now is None else now, counts.finished)
    else:
        rate = counts.finished / elapsed if elapsed > 0 else 0.0
    return Snapshot(
        name=project.name,
        state=project.state,
        counts=counts,
        elapsed=elapsed,
        rate=rate,
        hosts=rows,
        recent=tuple((short_repr(a), short_repr(r)) for a, r in project.recent(RECENT_RESULTS)),
        errors=tuple((short_repr(a), str(t)) for a, t in project.recent_errors(RECENT_ERRORS)),
        output=last_lines_per_host(project.outputs(OUTPUT_LINES_FETCHED)),
        version=int(getattr(project, "version", 1)),
        changes=str(getattr(project, "changes", "")),
        reused=int(getattr(project, "reused", 0)),
    )


def _running_capped(counts: Counts, rows: tuple[HostRow, ...]) -> Counts:
    """Count as running only what busy workers can run; tasks queued on nodes are pending."""
    if not rows:
        return counts
    busy = sum(row.busy for row in rows)
    if counts.running <= busy:
        return counts
    queued = counts.running - busy
    return dataclasses.replace(counts, running=busy, pending=counts.pending + queued)


def last_lines_per_host(
    lines: Iterable[tuple[str, str]], per_host: int = OUTPUT_LINES_PER_HOST
) -> tuple[tuple[str, str], ...]:
    """Keep the last ``per_host`` lines of each host, in their original order, cut short."""
    kept: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for host, line in reversed(list(lines)):
        if seen.get(host, 0) < per_host:
            seen[host] = seen.get(host, 0) + 1
            kept.append((host, cut(line.rstrip("\n"), LINE_LIMIT)))
    kept.reverse()
    return tuple(kept)


def cut(text: str, limit: int) -> str:
    """``text`` shortened to ``limit`` characters with a trailing ``...``."""
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def format_rate(rate: float) -> str:
    """``12.3/s``, or ``4.0/min`` when slower than one per second."""
    if rate <= 0:
        return "-/s"
    if rate < 1:
        return f"{rate * 60:.1f}/min"
    return f"{rate:.1f}/s"
