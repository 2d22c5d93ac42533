"""Per-task options (timeout, priority, group), stopping running work, hosts coming and going."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor, ConfigError, Host, TaskTimeout
from tests.fixtures_ssh import OPENSSH_ALIAS, TEST_PYTHON
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.waiting import gated, marked_nap, wait_for


@by_value
def nap(seconds: float, value: Any = None) -> Any:
    import time

    time.sleep(seconds)
    return value


@by_value
def finish_time(label: str) -> tuple[str, float]:
    import time

    time.sleep(0.01)
    return label, time.monotonic()


@by_value
def worker_pid(_: Any = None) -> int:
    import os

    return os.getpid()


def wait_busy(executor: CeranubisExecutor, busy: int, timeout: float = 20.0) -> None:
    def enough() -> bool:
        return sum(info.busy for info in executor.hosts()) >= busy

    wait_for(enough, timeout, f"{busy} busy workers")


@pytest.fixture
def one_worker() -> Iterator[CeranubisExecutor]:
    executor = CeranubisExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=True, stop_running=True)


def test_timeout_kills_the_task_and_replaces_its_worker(one_worker: CeranubisExecutor) -> None:
    before = one_worker.submit(worker_pid).result(timeout=30)
    started = time.monotonic()
    future = one_worker.options(timeout=0.5).submit(nap, 30.0)
    # Within 20 s: the 30 s task did not end by itself, it was ended, and not too early.
    with pytest.raises(TaskTimeout, match=r"ran longer than its timeout of 0.5 s; its worker"):
        future.result(timeout=20)
    assert time.monotonic() - started >= 0.5
    assert isinstance(future.exception(), TimeoutError)
    after = one_worker.submit(worker_pid).result(timeout=30)
    assert after != before, "the worker that ran over its timeout was replaced"


def test_options_reject_bad_values(one_worker: CeranubisExecutor) -> None:
    with pytest.raises(ConfigError, match="timeout must be >= 0"):
        one_worker.options(timeout=-1)
    with pytest.raises(ConfigError, match="retries must be >= 0"):
        one_worker.options(retries=-2)


def test_higher_priority_runs_first(one_worker: CeranubisExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    blocker = one_worker.submit(gated, str(gate), "opened")  # holds the worker meanwhile
    fillers = [one_worker.submit(finish_time, "filler") for _ in range(20)]
    low = [one_worker.options(priority=0).submit(finish_time, "low") for _ in range(10)]
    high = [one_worker.options(priority=5).submit(finish_time, "high") for _ in range(10)]
    gate.touch()
    assert blocker.result(timeout=30) == "opened"
    last_high = max(f.result(timeout=30)[1] for f in high)
    first_low = min(f.result(timeout=30)[1] for f in low)
    assert last_high < first_low, "every high-priority task ends before any low one"
    assert all(f.result(timeout=30)[0] == "filler" for f in fillers)


def test_cancel_stops_a_running_task(one_worker: CeranubisExecutor, tmp_path: Path) -> None:
    before = one_worker.submit(worker_pid).result(timeout=30)
    marker = tmp_path / "running"
    running = one_worker.submit(marked_nap, str(marker), 60.0, "never")
    wait_for(marker.exists, 30, "the task running in its worker")
    one_worker.cancel([running])
    with pytest.raises(cf.CancelledError):  # well before the 60 s task could end
        running.result(timeout=10)
    assert one_worker.submit(worker_pid).result(timeout=30) != before


def test_unknown_group_fails_the_task(one_worker: CeranubisExecutor) -> None:
    future = one_worker.options(group="gpu").submit(nap, 0.0)
    with pytest.raises(ConfigError, match="asks for group 'gpu' but no host"):
        future.result(timeout=10)


@pytest.fixture
def two_hosts(hosts_openssh: list[Host]) -> Iterator[CeranubisExecutor]:
    executor = CeranubisExecutor(
        [
            Host("local", workers=1, group="near"),
            Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=1, group="far"),
        ]
    )
    yield executor
    executor.shutdown(wait=True, stop_running=True)


def test_groups_pin_tasks_to_their_hosts(two_hosts: CeranubisExecutor) -> None:
    host_of = TaskRecords(two_hosts).host
    near = [two_hosts.options(group="near").submit(nap, 0.01, i) for i in range(8)]
    far = [two_hosts.options(group="far").submit(nap, 0.01, i) for i in range(8)]
    assert [f.result(timeout=60) for f in near + far] == list(range(8)) * 2
    assert {host_of(f) for f in near} == {"local:near"}
    assert {host_of(f) for f in far} == {OPENSSH_ALIAS}


def test_a_local_host_of_another_group_can_be_added() -> None:
    with CeranubisExecutor([Host("local", workers=1)]) as executor:
        host_of = TaskRecords(executor).host
        executor.add_hosts(Host("local", workers=1, group="gpu"))
        assert sorted(info.host for info in executor.hosts()) == ["local", "local:gpu"]
        pinned = [executor.options(group="gpu").submit(nap, 0.01, i) for i in range(4)]
        assert [f.result(timeout=60) for f in pinned] == list(range(4))
        assert {host_of(f) for f in pinned} == {"local:gpu"}
        with pytest.raises(ConfigError, match="'local:gpu' is already in the executor"):
            executor.add_hosts("local:gpu")
        executor.remove_hosts(Host("local", group="gpu"))
        assert [info.host for info in executor.hosts()] == ["local"]
        assert executor.submit(nap, 0.0, "still").result(timeout=60) == "still"


def test_local_hosts_of_several_groups_at_start() -> None:
    assert Host("local:gpu") == Host("local", group="gpu")
    assert Host("local:22").port == 22 and not Host("local:22").is_local
    with CeranubisExecutor([Host("local", workers=1), "local:gpu"]) as executor:
        assert executor.options(group="gpu").submit(nap, 0.0, 1).result(timeout=60) == 1
        assert sorted(info.host for info in executor.hosts()) == ["local", "local:gpu"]
    with pytest.raises(ConfigError, match="listed twice"):
        CeranubisExecutor(["local:gpu", Host("local", group="gpu")])


def test_add_and_remove_hosts_while_running(hosts_openssh: list[Host]) -> None:
    with CeranubisExecutor([Host("local", workers=1)]) as executor:
        tasks = TaskRecords(executor)
        host_of = tasks.host
        first = [executor.submit(nap, 0.05, i) for i in range(4)]
        executor.add_hosts(Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=1))
        more = [executor.submit(nap, 0.2, i) for i in range(20)]
        assert [f.result(timeout=60) for f in first + more] == list(range(4)) + list(range(20))
        assert {host_of(f) for f in more} == {"local", OPENSSH_ALIAS}

        running = executor.submit(nap, 1.5, "drained")
        wait_for(lambda: host_of(running) is not None, 20, "the task sent to a node")
        ran_on = host_of(running)
        assert ran_on is not None
        executor.remove_hosts(ran_on, drain=True)
        assert running.done() and running.result() == "drained"
        assert tasks.of(running).attempts == 0
        rest = [executor.submit(nap, 0.01, i) for i in range(6)]
        assert [f.result(timeout=60) for f in rest] == list(range(6))
        assert {host_of(f) for f in rest} == {"local", OPENSSH_ALIAS} - {ran_on}
        assert [info.host for info in executor.hosts()] != [ran_on]


def test_remove_without_drain_requeues_running_work(hosts_openssh: list[Host]) -> None:
    remote = Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=1)
    with CeranubisExecutor([Host("local", workers=1), remote]) as executor:
        host_of = TaskRecords(executor).host
        executor.submit(nap, 0.0).result(timeout=60)
        wait_for(lambda: [i.state for i in executor.hosts()] == ["ready"] * 2, 30, "both ready")
        long = [executor.submit(nap, 1.5, i) for i in range(2)]
        wait_busy(executor, 2)
        assert {host_of(f) for f in long} == {"local", OPENSSH_ALIAS}, "spread over hosts"
        executor.remove_hosts("local", drain=False)
        assert [f.result(timeout=60) for f in long] == [0, 1]
        assert all(host_of(f) == OPENSSH_ALIAS for f in long)
        with pytest.raises(ConfigError, match="not hosts of this executor: local"):
            executor.remove_hosts("local")
