"""How often a view of a project run elsewhere looks at the store while it waits."""

from __future__ import annotations

import itertools

from ceranubis_jupyter.projects.view import FIRST_POLL_SECONDS, POLL_SECONDS, poll_pauses


def test_a_wait_looks_soon_then_backs_off_to_the_steady_pace() -> None:
    pauses = list(itertools.islice(poll_pauses(), 12))
    assert pauses[0] == FIRST_POLL_SECONDS < POLL_SECONDS
    assert all(b == min(2 * a, POLL_SECONDS) for a, b in itertools.pairwise(pauses))
    assert pauses[-1] == POLL_SECONDS  # four looks a second for a long wait, as before


def test_each_wait_starts_its_pauses_afresh() -> None:
    first, second = poll_pauses(), poll_pauses()
    for _ in range(6):
        next(first)
    assert next(second) == FIRST_POLL_SECONDS
