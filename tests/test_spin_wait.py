"""The ``spin_wait`` fast path: a thread waiting for its lone task polls without sleeping
first, for at most ``SPIN_SECONDS``, and only when the previous lone answer came within
that time. (The executor contract with the switch off is in ``test_fast_path_switches.py``.)
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster import loopthread
from ceranubis_jupyter.cluster.fastpaths import FastPaths
from ceranubis_jupyter.cluster.inline_receive import SPIN_SECONDS
from tests.remote import nap_then_plus_one, plus_one

# Sequential round trips tried until one answer came within a spin (a loaded machine may
# answer slower now and then).
QUICK_TRIES = 500


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def _poller(fd: int) -> Any:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller


def test_a_spin_returns_what_is_ready(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.write(write_fd, b"x")
    ready = loopthread._spun(_poller(read_fd), time.monotonic() + 60)
    assert [fd for fd, _ in ready] == [read_fd]


def test_a_spin_with_nothing_to_read_ends_empty_after_its_time(pipe: tuple[int, int]) -> None:
    read_fd, _ = pipe
    until = time.monotonic() + 0.002
    assert loopthread._spun(_poller(read_fd), until) == []
    assert time.monotonic() >= until
    assert loopthread._spun(_poller(read_fd), time.monotonic() - 1) == []  # no time: no poll


def _spins_asked(executor: CeranubisExecutor, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The spin each inline wait asks of the loop thread, from now on."""
    asked: list[float] = []
    loop_thread = executor.scheduler.loop_thread
    original = loop_thread.serve_in_caller

    def serve_in_caller(fds: Any, done: Any, seconds: float, spin: float = 0.0) -> None:
        asked.append(spin)
        original(fds, done, seconds, spin)

    monkeypatch.setattr(loop_thread, "serve_in_caller", serve_in_caller)
    return asked


def test_quick_answers_make_the_next_wait_spin_and_a_slow_one_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with CeranubisExecutor(max_workers=1) as executor:
        assert executor.submit(plus_one, 0).result(30) == 1
        asked = _spins_asked(executor, monkeypatch)
        spun: list[float] = []  # spins begun with time left
        original_spun = loopthread._spun

        def spy(poller: Any, until: float) -> list[tuple[int, int]]:
            if until > time.monotonic():
                spun.append(until)
            return original_spun(poller, until)

        monkeypatch.setattr(loopthread, "_spun", spy)
        for i in range(QUICK_TRIES):
            assert executor.submit(plus_one, i).result(30) == i + 1
            if SPIN_SECONDS in asked[1:]:
                break  # a quick answer, then a wait that spun
        assert SPIN_SECONDS in asked[1:], asked[:20]
        assert spun  # the waiting thread polled without sleeping
        # A task longer than a spin: the wait after it sleeps at once.
        assert executor.submit(nap_then_plus_one, 1).result(30) == 2
        assert executor.submit(plus_one, 1).result(30) == 2
        assert asked[-1] == 0.0


def test_a_spin_ends_with_a_shorter_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    with CeranubisExecutor(max_workers=1) as executor:
        receiver = executor._wait_inline
        assert receiver is not None
        for i in range(QUICK_TRIES):  # until an answer came quick: the next wait spins
            assert executor.submit(plus_one, i).result(30) == i + 1
            if receiver._spin == SPIN_SECONDS:
                break
        assert receiver._spin == SPIN_SECONDS
        loop_thread = executor.scheduler.loop_thread
        deadlines: list[tuple[float, float]] = []  # (the wait's end, the spin's end)
        original = loop_thread._serve

        def serve(readers: Any, done: Any, deadline: float, spin_until: float) -> None:
            deadlines.append((deadline, spin_until))
            original(readers, done, deadline, spin_until)

        monkeypatch.setattr(loop_thread, "_serve", serve)
        future = executor.submit(nap_then_plus_one, 1)
        with pytest.raises(TimeoutError):
            future.result(timeout=SPIN_SECONDS / 10)
        assert future.result(30) == 2
    assert deadlines and all(spin_until <= deadline for deadline, spin_until in deadlines)


def test_with_spin_wait_off_no_wait_spins(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = FastPaths.without("spin_wait")
    with CeranubisExecutor(max_workers=1, fast_paths=paths) as executor:
        assert executor.submit(plus_one, 0).result(30) == 1
        asked = _spins_asked(executor, monkeypatch)
        assert [executor.submit(plus_one, i).result(30) for i in range(50)] == list(range(1, 51))
    assert asked and set(asked) == {0.0}
