"""Rich displays for the notebook: host and project tables, and a project's reprs.

Each table keeps its rows (for code) and renders as HTML in Jupyter and as aligned text
in a terminal. :func:`project_html` and :func:`project_pretty` are what
``Project._repr_html_`` and ``Project._repr_pretty_`` return. Pure: no I/O here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

_TABLE_STYLE = "<style>.ceranubis-table td,.ceranubis-table th{padding:1px 8px}</style>"


def _html_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'{_TABLE_STYLE}<table class="ceranubis-table"><tr>{cells}</tr>{body}</table>'


def _text_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    texts = [list(head), *([str(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in texts) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in texts
    )


class HostsTable:
    """``%ceranubis hosts``: host, state, workers, python, load, CPU, memory, done."""

    HEAD = ("host", "state", "workers", "python", "load", "CPU", "memory", "done")

    def __init__(self, infos: Sequence[Any]) -> None:
        self.infos = list(infos)

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """One tuple per host, in ``HEAD`` order."""
        return [
            (
                i.host,
                i.state + (f" ({i.error})" if i.error else ""),
                i.workers,
                i.python,
                f"{i.loadavg:.2f}",
                f"{i.cpu_percent:.0f}%",
                f"{i.memory_percent:.0f}%",
                i.done,
            )
            for i in self.infos
        ]

    def _repr_html_(self) -> str:
        return _html_table(self.HEAD, self.rows)

    def __repr__(self) -> str:
        return _text_table(self.HEAD, self.rows)


class ProjectsTable:
    """``%ceranubis projects``: name, version, state, done/total, created, id."""

    HEAD = ("name", "version", "state", "done", "created", "id")

    def __init__(self, summaries: Sequence[Any]) -> None:
        self.summaries = list(summaries)

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """One tuple per project, in ``HEAD`` order."""
        return [
            (s.name, s.version, s.state, f"{s.done}/{s.total}", _when(s.created), s.id)
            for s in self.summaries
        ]

    def _repr_html_(self) -> str:
        return _html_table(self.HEAD, self.rows)

    def __repr__(self) -> str:
        return _text_table(self.HEAD, self.rows)


def _when(created: Any) -> str:
    if isinstance(created, (int, float)):
        import datetime

        stamp = datetime.datetime.fromtimestamp(created)
        return stamp.strftime("%Y-%m-%d %H:%M:%S")
    return str(created)[:19]


def _project_facts(project: Any) -> list[tuple[str, str]]:
    done, total = project.status()
    hosts = ", ".join(project.hosts) if project.hosts else "local"
    reused = project.reused
    facts = [
        ("version", version_text(project.version, project.changes)),
        ("state", str(project.state)),
        ("done", f"{done}/{total}" + (f" ({reused:,} reused)" if reused else "")),
        ("target", str(project.target)),
        ("hosts", hosts),
        ("elapsed", format_duration(project.elapsed())),
    ]
    return facts


def version_text(version: int, changes: str) -> str:
    """``2 (code changed, 10 arguments added)``, or ``1``."""
    return f"{version} ({changes})" if changes else str(version)


def project_html(project: Any) -> str:
    """``Project._repr_html_``: name, status, hosts."""
    facts = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in _project_facts(project)
    )
    title = f"<b>Project {html.escape(str(project.name))}</b>"
    return f'{_TABLE_STYLE}{title}<table class="ceranubis-table">{facts}</table>'


def project_text(project: Any) -> str:
    """One line: ``<Project sweep v2: running 45/100, hosts: local>``."""
    facts = dict(_project_facts(project))
    return (
        f"<Project {project.name} v{project.version}: {facts['state']} {facts['done']}, "
        f"hosts: {facts['hosts']}>"
    )


def project_pretty(project: Any, printer: Any, cycle: bool) -> None:
    """``Project._repr_pretty_`` for IPython's pretty printer."""
    printer.text("<Project ...>" if cycle else project_text(project))


def format_duration(seconds: float | None) -> str:
    """``0:07``, ``12:03``, ``1:02:03``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
