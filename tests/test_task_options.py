"""Per-task options (timeout, priority, group), stopping running work, hosts coming and going."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor, ConfigError, Host, TaskTimeout
from tests.fixtures_ssh import OPENSSH_ALIAS, TEST_PYTHON
from tests.remote import by_value
from tests.task_records import TaskRecords


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
    deadline = time.monotonic() + timeout
    while sum(info.busy for info in executor.hosts()) < busy:
        assert time.monotonic() < deadline, f"never {busy} busy workers: {executor.hosts()}"
        time.sleep(0.05)


@pytest.fixture
def one_worker() -> Iterator[CeranubisExecutor]:
    executor = CeranubisExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=True, stop_running=True)


def test_timeout_kills_the_task_and_replaces_its_worker(one_worker: CeranubisExecutor) -> None:
    before = one_worker.submit(worker_pid).result(timeout=30)
    started = time.monotonic()
    future = one_worker.options(timeout=0.5).submit(nap, 30.0)
    with pytest.raises(TaskTimeout, match=r"ran longer than its timeout of 0.5 s; its worker"):
        future.result(timeout=20)
    assert time.monotonic() - started < 5.0
    assert isinstance(future.exception(), TimeoutError)
    after = one_worker.submit(worker_pid).result(timeout=30)
    assert after != before, "the worker that ran over its timeout was replaced"


def test_options_reject_bad_values(one_worker: CeranubisExecutor) -> None:
    with pytest.raises(ConfigError, match="timeout must be >= 0"):
        one_worker.options(timeout=-1)
    with pytest.raises(ConfigError, match="retries must be >= 0"):
        one_worker.options(retries=-2)


def test_higher_priority_runs_first(one_worker: CeranubisExecutor) -> None:
    blocker = one_worker.submit(nap, 0.5)
    fillers = [one_worker.submit(finish_time, "filler") for _ in range(20)]
    low = [one_worker.options(priority=0).submit(finish_time, "low") for _ in range(10)]
    high = [one_worker.options(priority=5).submit(finish_time, "high") for _ in range(10)]
    blocker.result(timeout=30)
    last_high = max(f.result(timeout=30)[1] for f in high)
    first_low = min(f.result(timeout=30)[1] for f in low)
    assert last_high < first_low, "every high-priority task ends before any low one"
    assert all(f.result(timeout=30)[0] == "filler" for f in fillers)


def test_cancel_stops_a_running_task(one_worker: CeranubisExecutor) -> None:
    before = one_worker.submit(worker_pid).result(timeout=30)
    running = one_worker.submit(nap, 60.0, "never")
    time.sleep(1.5)  # surely on the worker by now (load reports lag up to a second)
    started = time.monotonic()
    one_worker.cancel([running])
    with pytest.raises(cf.CancelledError):
        running.result(timeout=10)
    assert time.monotonic() - started < 5.0
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
        deadline = time.monotonic() + 20
        while (ran_on := host_of(running)) is None:
            assert time.monotonic() < deadline, "the task never reached a node"
            time.sleep(0.01)
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
        wait_ready = time.monotonic() + 30
        while len([i for i in executor.hosts() if i.state == "ready"]) < 2:
            assert time.monotonic() < wait_ready
            time.sleep(0.05)
        long = [executor.submit(nap, 1.5, i) for i in range(2)]
        wait_busy(executor, 2)
        assert {host_of(f) for f in long} == {"local", OPENSSH_ALIAS}, "spread over hosts"
        executor.remove_hosts("local", drain=False)
        assert [f.result(timeout=60) for f in long] == [0, 1]
        assert all(host_of(f) == OPENSSH_ALIAS for f in long)
        with pytest.raises(ConfigError, match="not hosts of this executor: local"):
            executor.remove_hosts("local")
