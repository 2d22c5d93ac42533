"""The queue benchmark's table, ratios and verdicts (targets of issue 19)."""

from __future__ import annotations

Medians = dict[str, dict[str, float]]

OURS_QUEUE = "ceranubis-queue"
OURS_SINGLE = "ceranubis-queue-single"  # a task per argument: batches off
OURS_MAP = "ceranubis-map"
IDLE = "server-idle"
PEERS = ("pgqueuer", "procrastinate")
ROWS = (OURS_QUEUE, OURS_SINGLE, OURS_MAP, *PEERS, IDLE)
# Issue 19's targets.
Q1_VS_BEST_PEER = 2.0
Q1_VS_MAP = 0.75
Q3_MAX_CORE_PCT = 1.0


def per_consumer(meds: Medians, system: str, consumers: int) -> float | None:
    """% of a core per idle consumer, the idle server's own cost taken off."""
    total = meds.get(system, {}).get("q3_core_pct")
    idle = meds.get(IDLE, {}).get("q3_core_pct", 0.0)
    return None if total is None else max(0.0, total - idle) / consumers


def _cell(value: float | None, form: str) -> str:
    return "—" if value is None else format(value, form)


def table(meds: Medians, consumers: int) -> str:
    """One row per system: Q1 tasks/s, Q2 median ms, Q3 % of a core (all, per consumer)."""
    lines = [
        f"| system | Q1 tasks/s | Q2 median ms | Q3 server % core ({consumers} idle) "
        "| Q3 per consumer, % core |",
        "|---|---|---|---|---|",
    ]
    for system in ROWS:
        m = meds.get(system)
        if not m:
            continue
        each = None if system == IDLE else per_consumer(meds, system, consumers)
        lines.append(
            f"| {system} | {_cell(m.get('q1'), ',.0f')} | {_cell(m.get('q2_ms'), '.2f')} "
            f"| {_cell(m.get('q3_core_pct'), '.3f')} | {_cell(each, '.4f')} |"
        )
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def verdicts(meds: Medians, consumers: int) -> dict[str, tuple[float | None, str, bool | None]]:
    """Each target: (our ratio or figure, the bound, met?) — ``None`` when not measured."""
    ours = meds.get(OURS_QUEUE, {})
    best_peer = max((meds.get(p, {}).get("q1", 0.0) for p in PEERS), default=0.0)
    found: dict[str, tuple[float | None, str, bool | None]] = {}

    def add(name: str, value: float | None, bound: str, ok: bool | None) -> None:
        found[name] = (value, bound, None if value is None else ok)

    q1_peer = _ratio(ours.get("q1"), best_peer)
    add("Q1 / best peer", q1_peer, f"≥ {Q1_VS_BEST_PEER:g}", (q1_peer or 0) >= Q1_VS_BEST_PEER)
    q1_map = _ratio(ours.get("q1"), meds.get(OURS_MAP, {}).get("q1"))
    add("Q1 / our map", q1_map, f"≥ {Q1_VS_MAP:g}", (q1_map or 0) >= Q1_VS_MAP)
    q2 = _ratio(ours.get("q2_ms"), meds.get("pgqueuer", {}).get("q2_ms"))
    add("Q2 / pgqueuer", q2, "≤ 1", (q2 or 0) <= 1)
    q3 = ours.get("q3_core_pct")
    add("Q3 server % core", q3, f"≤ {Q3_MAX_CORE_PCT:g}", (q3 or 0) <= Q3_MAX_CORE_PCT)
    mine, theirs = (
        per_consumer(meds, OURS_QUEUE, consumers),
        per_consumer(meds, "pgqueuer", consumers),
    )
    add(
        "Q3 per consumer - pgqueuer's, % core",
        None if mine is None or theirs is None else mine - theirs,
        "≤ 0",
        mine is not None and theirs is not None and mine <= theirs,
    )
    return found


def render(meds: Medians, consumers: int) -> tuple[str, dict[str, bool | None]]:
    """The table and the ratio lines as text, and each target's verdict."""
    found = verdicts(meds, consumers)
    lines = [table(meds, consumers), ""]
    for name, (value, bound, ok) in found.items():
        mark = {True: "met", False: "MISSED", None: "not measured"}[ok]
        lines.append(f"{name}: {_cell(value, '.3f')} (target {bound}): {mark}")
    pgq, pro = (meds.get(p, {}).get("q1") for p in PEERS)
    plain = meds.get(OURS_MAP, {}).get("q1")
    single = meds.get(OURS_SINGLE, {}).get("q1")
    best = max(pgq or 0.0, pro or 0.0)
    lines.append(
        f"Q1 a task per argument (batches off; not a target): "
        f"{_cell(_ratio(single, best), '.3f')} of the best peer, "
        f"{_cell(_ratio(single, plain), '.3f')} of our map"
    )
    lines.append(
        f"peers' Q1 / our map: pgqueuer {_cell(_ratio(pgq, plain), '.3f')}, "
        f"procrastinate {_cell(_ratio(pro, plain), '.3f')}"
    )
    return "\n".join(lines), {name: ok for name, (_, _, ok) in found.items()}
