"""What each measurement means, its targets, and how the results are printed and saved.

A run produces ``samples[system][metric] -> list[float]``; the report takes medians, the
ratios ours/peer, checks the targets of issue 2 and benchmarks/README.md, prints one table per
section (local peers, SSH) and writes the whole thing as JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers import LOKY, OURS, PPE

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OURS_SSH = "ceranubis-ssh"
RAW_SSH = "asyncssh"
EXECNET_SSH = "execnet-ssh"
# Ours again, through the ssh binary (CERANUBIS_SSH_CLIENT=openssh: cluster/openssh.py).
OURS_OPENSSH = "ceranubis-openssh"

Samples = dict[str, dict[str, list[float]]]
Medians = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Target:
    """A bound on our median: a multiple of a reference median, or absolute.

    ``kind`` is ``"min"`` or ``"max"``. The reference is system ``peer``'s median of metric
    ``of`` (default: the same metric); ``peer=None`` makes the bound absolute.
    """

    kind: str
    value: float
    peer: str | None = PPE
    of: str | None = None

    def met(self, ours: float | None, medians: Medians, key: str) -> bool | None:
        """Whether the target is met; ``None`` when a number is missing."""
        if ours is None:
            return None
        reference = 1.0
        if self.peer is not None:
            found = medians.get(self.peer, {}).get(self.of or key)
            if not found:
                return None
            reference = found
        bound = self.value * reference
        return ours >= bound if self.kind == "min" else ours <= bound

    def text(self) -> str:
        """E.g. ``≥1x ppe-fork`` or ``≤200``."""
        sign = "≥" if self.kind == "min" else "≤"
        if self.peer is None:
            return f"{sign}{self.value:g}"
        of = f" {self.of}" if self.of else ""
        return f"{sign}{self.value:g}x {self.peer}{of}"


@dataclass(frozen=True)
class Metric:
    """One reported number."""

    key: str
    label: str
    unit: str
    digits: int
    target: Target | None = None
    stretch: Target | None = None


@dataclass(frozen=True)
class Section:
    """A table: our system, the systems shown beside it, and its metrics."""

    title: str
    ours: str
    systems: tuple[str, ...]
    metrics: tuple[Metric, ...]


LOCAL = Section(
    "Embedded default vs local peers (2 workers)",
    OURS,
    (OURS, PPE, LOKY),
    (
        Metric(
            "w1", "W1 map, default chunksize", "tasks/s", 0, Target("min", 1.0), Target("min", 3.0)
        ),
        Metric("w1_batched", "W1 map, chunksize=1000", "tasks/s", 0),
        Metric("w2", "W2 submit x5000, wait", "tasks/s", 0, Target("min", 1.0), Target("min", 2.0)),
        Metric("w3_median", "W3 round trip, median", "µs", 0, Target("max", 1.5)),
        Metric("w3_p99", "W3 round trip, p99", "µs", 0),
        Metric("w4_bytes", "W4 100 MB bytes", "MB/s", 0, None, Target("min", 1.0)),
        Metric("w4_numpy", "W4 100 MB numpy", "MB/s", 0, None, Target("min", 1.0)),
        Metric("w5", "W5 construct -> first result", "s", 3),
        Metric("w6", "W6 efficiency vs serial/2", "ratio", 2, None, Target("min", 0.95, None)),
        Metric("memory", "memory: 1M map RSS growth", "MB", 1, Target("max", 200.0, None)),
    ),
)

SSH = Section(
    "Over SSH to a loopback sshd (2 workers) vs bare asyncssh and execnet, same cipher",
    OURS_SSH,
    (OURS_SSH, RAW_SSH, EXECNET_SSH, OURS_OPENSSH),
    (
        Metric(
            "w1",
            "SSH W1 map, default chunksize",
            "tasks/s",
            0,
            Target("min", 2.0, EXECNET_SSH),
        ),
        Metric(
            "w1_batched",
            "SSH W1 map, chunksize=1000",
            "tasks/s",
            0,
            Target("min", 1.0, EXECNET_SSH),
        ),
        Metric("w2", "SSH W2 submit x5000, wait", "tasks/s", 0),
        Metric("w3_median", "SSH W3 round trip, median", "µs", 0, Target("max", 1.3, RAW_SSH)),
        Metric(
            "w3_p99",
            "SSH W3 round trip, p99",
            "µs",
            0,
            Target("max", 3.0, OURS_SSH, "w3_median"),
        ),
        Metric("w4_bytes", "SSH W4 100 MB bytes", "MB/s", 0, Target("min", 0.8, RAW_SSH)),
        Metric(
            "w4_numpy", "SSH W4 100 MB numpy", "MB/s", 0, Target("min", 0.8, RAW_SSH, "w4_bytes")
        ),
        Metric("w5_cold", "SSH W5 cold (bundle sent)", "s", 3, Target("max", 0.5, None)),
        Metric("w5_warm", "SSH W5 warm (bundle cached)", "s", 3, Target("max", 0.3, None)),
    ),
)

SECTIONS = (LOCAL, SSH)


def medians(samples: Samples) -> Medians:
    """The median of every system's samples for every metric."""
    return {
        system: {key: statistics.median(values) for key, values in metrics.items() if values}
        for system, metrics in samples.items()
    }


def ratios(meds: Medians, section: Section) -> dict[str, dict[str, float]]:
    """``ours / peer`` for every peer of the section and every metric both have."""
    ours = meds.get(section.ours, {})
    out: dict[str, dict[str, float]] = {}
    for peer in section.systems[1:]:
        values = meds.get(peer, {})
        out[peer] = {k: ours[k] / v for k, v in values.items() if k in ours and v}
    return out


def verdicts(meds: Medians, section: Section) -> dict[str, dict[str, bool | None]]:
    """Per metric: whether the target and the stretch target are met."""
    ours = meds.get(section.ours, {})
    out: dict[str, dict[str, bool | None]] = {}
    for metric in section.metrics:
        entry: dict[str, bool | None] = {}
        for name, target in (("target", metric.target), ("stretch", metric.stretch)):
            if target is not None:
                entry[name] = target.met(ours.get(metric.key), meds, metric.key)
        out[metric.key] = entry
    return out


def table(samples: Samples, section: Section) -> str:
    """One section's results as a fixed-width text table ("" if nothing was measured)."""
    meds = medians(samples)
    systems = [s for s in section.systems if s in samples]
    if section.ours not in systems:
        return ""
    rats = ratios(meds, section)
    verdict = verdicts(meds, section)
    peers = systems[1:]
    rows = [["metric", "unit", *systems, *(f"ours/{p}" for p in peers)]]
    rows[0] += ["target", "met", "stretch", "met"]
    for metric in section.metrics:
        values = [_number(meds.get(s, {}).get(metric.key), metric.digits) for s in systems]
        ratio_cells = [_ratio(rats.get(p, {}).get(metric.key)) for p in peers]
        rows.append([metric.label, metric.unit, *values, *ratio_cells, *_goals(metric, verdict)])
    return f"{section.title}\n{_render(rows)}"


def _goals(metric: Metric, verdict: dict[str, dict[str, bool | None]]) -> list[str]:
    cells = []
    for name, target in (("target", metric.target), ("stretch", metric.stretch)):
        cells.append(target.text() if target else "—")
        cells.append(_yes_no(verdict[metric.key].get(name)))
    return cells


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _yes_no(value: bool | None) -> str:
    if value is None:
        return "—"
    return "yes" if value else "NO"


def write_json(samples: Samples, extra: dict[str, Any]) -> Path:
    """Save samples, medians, ratios and verdicts; returns the file written."""
    meds = medians(samples)
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
        },
        "samples": samples,
        "medians": meds,
        "sections": [_section_json(meds, section) for section in SECTIONS],
        **extra,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False))
    return path


def _section_json(meds: Medians, section: Section) -> dict[str, Any]:
    return {
        "title": section.title,
        "ours": section.ours,
        "units": {m.key: m.unit for m in section.metrics},
        "ratios_ours_over_peer": ratios(meds, section),
        "targets": {
            m.key: {
                "target": m.target.text() if m.target else None,
                "stretch": m.stretch.text() if m.stretch else None,
            }
            for m in section.metrics
        },
        "met": verdicts(meds, section),
    }


__all__ = [
    "LOCAL",
    "LOKY",
    "OURS_OPENSSH",
    "OURS_SSH",
    "RAW_SSH",
    "SECTIONS",
    "SSH",
    "table",
    "write_json",
]
