"""The concurrent.futures contract, as any executor must keep it, over every transport."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import json
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ceranubis_jupyter import CeranubisExecutor, ConfigError, ConfigTypeError, Host
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.waiting import gated


@by_value
def add(a: int, b: int = 0) -> int:
    return a + b


@by_value
def sleep_then(seconds: float, value: Any = None) -> Any:

    time.sleep(seconds)
    return value


@by_value
def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"{x} is bad")
    return x


@by_value
def nbytes(data: Any) -> int:
    return len(data) if isinstance(data, (bytes, bytearray)) else int(data.nbytes)


@by_value
def echo(value: Any) -> Any:
    return value


@by_value
def shout(text: str) -> str:
    print("about to shout", text)
    return text.upper()


@pytest.fixture
def ex(hosts: Any) -> Iterator[CeranubisExecutor]:
    executor = CeranubisExecutor(hosts, max_workers=2)
    yield executor
    executor.shutdown(wait=True, stop_running=True)


# ------------------------------------------------------------------ submit


def test_submit_returns_result_with_args_and_kwargs(ex: CeranubisExecutor) -> None:
    assert ex.submit(add, 2, b=40).result(timeout=30) == 42


def test_submit_fn_is_positional_only(ex: CeranubisExecutor) -> None:
    @by_value
    def takes_fn(fn: int) -> int:
        return fn * 2

    assert ex.submit(takes_fn, fn=21).result(timeout=30) == 42


def test_lambdas_closures_and_main_classes_travel_by_value(ex: CeranubisExecutor) -> None:
    offset = 1000

    @by_value
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    def shifted(p: Any) -> int:
        return int(p.x) + offset

    shifted.__module__ = "__main__"
    square = lambda x: x * x  # noqa: E731
    square.__module__ = "__main__"
    assert ex.submit(square, 12).result(timeout=30) == 144
    assert ex.submit(shifted, Point(5)).result(timeout=30) == 1005


def test_large_buffers_round_trip(ex: CeranubisExecutor) -> None:
    blob = bytes(range(256)) * 40_000  # 10 MB
    array = np.arange(1_000_000, dtype=np.float64)
    assert ex.submit(nbytes, blob).result(timeout=60) == len(blob)
    assert ex.submit(nbytes, array).result(timeout=60) == array.nbytes
    back = ex.submit(echo, array).result(timeout=60)
    assert isinstance(back, np.ndarray) and np.array_equal(back, array)


def test_print_output_is_captured_per_task(ex: CeranubisExecutor) -> None:
    with TaskRecords(ex) as tasks:
        future = ex.submit(shout, "hi")
        assert future.result(timeout=30) == "HI"
        assert "about to shout hi" in tasks.of(future).output


@by_value
def print_then_wait(go: str) -> str:
    import os
    import sys
    import time

    print("first line")
    print("first error", file=sys.stderr)
    deadline = time.monotonic() + 30
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            return "the client never saw the first lines"
        time.sleep(0.01)
    print("second line")
    return "done"


def test_what_a_running_task_prints_reaches_the_clients_streams_as_printed(
    ex: CeranubisExecutor, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    go = tmp_path / "go"
    future = ex.submit(print_then_wait, str(go))
    out = err = ""
    deadline = time.monotonic() + 30
    while "first line" not in out or "first error" not in err:
        assert not future.done(), f"the task ended first: {future.result()!r}"
        assert time.monotonic() < deadline, "the first lines never came while the task ran"
        time.sleep(0.02)
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
    go.touch()
    assert future.result(timeout=30) == "done"
    captured = capsys.readouterr()
    out, err = out + captured.out, err + captured.err
    host = ex.hosts()[0].host
    assert out == f"[{host}] first line\n[{host}] second line\n"
    assert err == f"[{host}] first error\n"


@by_value
def print_twice(x: int) -> int:
    import sys

    print("out", x)
    print("err", x, file=sys.stderr)
    return x


def test_many_tasks_that_print_all_finish_and_every_line_arrives(
    ex: CeranubisExecutor, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list(ex.map(print_twice, range(300))) == list(range(300))
    assert list(ex.map(print_twice, range(300), chunksize=7)) == list(range(300))
    captured = capsys.readouterr()
    host = ex.hosts()[0].host
    for stream, name in ((captured.out, "out"), (captured.err, "err")):
        lines = sorted(stream.splitlines())
        assert lines == sorted(2 * [f"[{host}] {name} {x}" for x in range(300)])


CHILD_SCRIPT = """
import json, sys
from ceranubis_jupyter import CeranubisExecutor, Host

def shout(text):
    print("to stdout:", text)
    print("to stderr:", text, file=sys.stderr)
    return text.upper()

spec = json.loads(sys.argv[1])
hosts = None if spec is None else [Host(spec[0], python=spec[1])]
with CeranubisExecutor(hosts, max_workers=1) as executor:
    print("result:", executor.submit(shout, "hi").result(timeout=60), flush=True)
    name = executor.hosts()[0].host
print("host:", name)
"""


def test_a_scripts_tasks_print_on_its_own_stdout_and_stderr(hosts: Any) -> None:
    spec = None if hosts is None else [hosts[0].address, hosts[0].python]
    child = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    name = child.stdout.rsplit("host: ", 1)[1].strip()
    assert f"[{name}] to stdout: hi\nresult: HI\n" in child.stdout
    assert f"[{name}] to stderr: hi\n" in child.stderr


def test_task_id_of_names_a_futures_task_while_the_caller_holds_it(
    ex: CeranubisExecutor,
) -> None:
    with TaskRecords(ex) as tasks:
        future = ex.submit(add, 1, 2)
        task_id = ex.task_id_of(future)
        assert isinstance(task_id, int)
        assert future.result(timeout=30) == 3
        assert ex.task_id_of(future) == task_id == tasks.of(future).task_id
    assert ex.task_id_of(cf.Future()) is None
    assert ex.task_id_of(object()) is None  # type: ignore[arg-type]


def test_a_dropped_future_takes_its_task_and_result_with_it(ex: CeranubisExecutor) -> None:
    future = ex.submit(echo, np.arange(1000))
    result = weakref.ref(future.result(timeout=30))
    dropped = weakref.ref(future)
    del future
    ex.scheduler.in_flight_threadsafe()  # one turn of the loop: it let go of the task too
    gc.collect()
    assert dropped() is None and result() is None


def travelling_classes() -> tuple[type, type]:
    """``Box``, a weakly referable argument or result, and ``AddTo``, a callable object:
    defined in a function, so that their methods too travel by value."""

    @by_value
    class Box:
        def __init__(self, value: int) -> None:
            self.value = value

    @by_value
    class AddTo:
        def __init__(self, base: int) -> None:
            self.base = base

        def __call__(self, box: Any) -> Any:
            return type(box)(box.value + self.base)

    return Box, AddTo


Box, AddTo = travelling_classes()


def local_adder(base: int) -> Any:
    def add_base(box: Any) -> Any:
        return type(box)(box.value + base)

    return by_value(add_base)


def all_freed(executor: CeranubisExecutor, refs: list[weakref.ref[Any]]) -> bool:
    executor.scheduler.in_flight_threadsafe()  # one turn of the loop: it let go too
    gc.collect()
    return [ref() for ref in refs] == [None] * len(refs)


@pytest.mark.parametrize("make_fn", [AddTo, local_adder], ids=["callable", "local"])
def test_a_done_submit_keeps_no_function_argument_or_result(
    ex: CeranubisExecutor, make_fn: Any
) -> None:
    fn, argument = make_fn(1), Box(41)
    future = ex.submit(fn, argument)
    result = future.result(timeout=30)
    assert result.value == 42
    refs = [weakref.ref(fn), weakref.ref(argument), weakref.ref(result)]
    del fn, argument, result, future
    assert all_freed(ex, refs)


@pytest.mark.parametrize("chunksize", [1, 2])
@pytest.mark.parametrize("make_fn", [AddTo, local_adder], ids=["callable", "local"])
def test_a_map_keeps_no_function_argument_or_result(
    ex: CeranubisExecutor, make_fn: Any, chunksize: int
) -> None:
    fn, arguments = make_fn(1), [Box(i) for i in range(4)]
    results = ex.map(fn, arguments, chunksize=chunksize)
    refs = [weakref.ref(fn), *(weakref.ref(box) for box in arguments)]
    del fn, arguments
    first = next(results)
    assert first.value == 1
    refs.append(weakref.ref(first))
    del first
    assert all_freed(ex, refs), "the map still holds a result it handed out, or its inputs"
    rest = list(results)
    assert [box.value for box in rest] == [2, 3, 4]
    refs += [weakref.ref(box) for box in rest]
    del rest, results
    assert all_freed(ex, refs)


def test_a_function_is_shipped_once_per_node_while_it_lives(ex: CeranubisExecutor) -> None:
    fn = AddTo(1)
    assert ex.register_function(fn) == ex.register_function(fn)
    first = ex.submit(fn, Box(1)).result(timeout=30)
    assert ex.submit(fn, first).result(timeout=30).value == 3
    # A bound method is a new object at each access: found again by what it pickles to.
    assert ex.register_function(fn.__call__) == ex.register_function(fn.__call__)
    assert ex.register_function(AddTo(2)) != ex.register_function(fn)


def test_submit_from_many_threads(ex: CeranubisExecutor) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def client(base: int) -> None:
        futures = [ex.submit(add, base, i) for i in range(50)]
        values = [f.result(timeout=60) for f in futures]
        with lock:
            results.extend(values)

    threads = [threading.Thread(target=client, args=(1000 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == sorted(1000 * t + i for t in range(4) for i in range(50))


def test_submit_after_shutdown_raises(hosts: Any) -> None:
    executor = CeranubisExecutor(hosts, max_workers=1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(add, 1)


def test_context_manager_waits_and_shuts_down(hosts: Any) -> None:
    with CeranubisExecutor(hosts, max_workers=2) as executor:
        futures = [executor.submit(sleep_then, 0.2, i) for i in range(4)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError):
        executor.submit(add, 1)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_not_above_zero_is_the_stdlib_value_error(bad: int) -> None:
    with pytest.raises(ValueError) as ours:
        CeranubisExecutor(max_workers=bad)
    with pytest.raises(ValueError) as stdlib:
        cf.ProcessPoolExecutor(max_workers=bad)
    assert str(ours.value) == str(stdlib.value) == "max_workers must be greater than 0"
    assert isinstance(ours.value, ConfigError)


@pytest.mark.parametrize("bad", ["2", 1.5])
def test_max_workers_of_another_type_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="max_workers must be an int") as raised:
        CeranubisExecutor(max_workers=bad)
    assert isinstance(raised.value, ConfigTypeError)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CeranubisExecutor(heartbeat_timeout="5"),
        lambda: CeranubisExecutor(retries=1.5),
        lambda: Host("local", workers="2"),
        lambda: Host("local", group=3),
        lambda: CeranubisExecutor([42]),
    ],
    ids=["heartbeat_timeout", "retries", "workers", "group", "host"],
)
def test_arguments_of_the_wrong_type_are_type_errors(make: Any) -> None:
    with pytest.raises(TypeError):
        make()


def test_bad_task_options_are_value_or_type_errors(ex: CeranubisExecutor) -> None:
    with pytest.raises(TypeError):
        ex.options(timeout="1")
    with pytest.raises(TypeError):
        ex.options(priority=1.5)
    with pytest.raises(ValueError):
        ex.options(timeout=-1)


def test_submitting_what_is_not_callable_is_a_type_error(ex: CeranubisExecutor) -> None:
    with pytest.raises(TypeError, match="is not callable"):
        ex.submit(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is not callable"):
        ex.map(42, [1])  # type: ignore[arg-type]


def test_future_cancel_of_pending_work(hosts: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with CeranubisExecutor(hosts, max_workers=1) as executor:
        blocker = executor.submit(gated, str(gate), "done")  # holds the one worker
        queued = [executor.submit(add, i) for i in range(60)]
        last = queued[-1]
        assert last.cancel(), "work beyond the node's credit is still pending"
        assert last.cancelled()
        with pytest.raises(cf.CancelledError):
            last.result()
        gate.touch()
        assert blocker.result(timeout=30) == "done"
        assert [f.result(timeout=30) for f in queued[:-1]] == list(range(59))


# ------------------------------------------------------------------ map


def test_map_keeps_order_over_several_iterables(ex: CeranubisExecutor) -> None:
    assert list(ex.map(add, range(100), range(100, 200))) == [
        a + b for a, b in zip(range(100), range(100, 200), strict=True)
    ]


@pytest.mark.parametrize("chunksize", [1, 3, 64, 1000])
def test_map_chunksize_gives_the_same_results(ex: CeranubisExecutor, chunksize: int) -> None:
    assert list(ex.map(add, range(250), chunksize=chunksize)) == list(range(250))


def test_map_rejects_bad_chunksize(ex: CeranubisExecutor) -> None:
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        ex.map(add, range(3), chunksize=0)


def test_map_timeout_raises_timeout_error(ex: CeranubisExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # shut until the timeout fired: the second call cannot end
    results = ex.map(gated, [str(tmp_path), str(gate)], timeout=0.5)
    with pytest.raises(cf.TimeoutError):
        list(results)
    gate.touch()


def test_map_raises_at_the_failing_item(ex: CeranubisExecutor) -> None:
    results = ex.map(fail_on, range(5), [3] * 5)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="3 is bad"):
        next(results)


def test_map_results_are_lazy(ex: CeranubisExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # opened only once map has returned
    results = ex.map(gated, [str(gate)] * 2, ["a", "b"])
    gate.touch()
    assert list(results) == ["a", "b"], "map must return before the work is done"


def test_map_over_empty_input(ex: CeranubisExecutor) -> None:
    assert list(ex.map(add, [])) == []


@by_value
def logged_at_gate(directory: str, i: int) -> int:
    """Log the call in ``directory``; calls after the first wait for ``directory/gate``."""
    import os
    import pathlib

    pathlib.Path(directory, f"ran-{i}").touch()
    deadline = time.monotonic() + 60
    while i and not os.path.exists(os.path.join(directory, "gate")):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return i


def test_a_closed_map_cancels_the_calls_not_started(ex: CeranubisExecutor, tmp_path: Path) -> None:
    # The first call returns; the rest wait at a gate, so the calls on a node when the map
    # is closed are still there after. Only those run; every other call is cancelled.
    results = ex.map(logged_at_gate, [str(tmp_path)] * 60, range(60))
    assert next(results) == 0
    results.close()  # type: ignore[attr-defined]
    on_nodes = sum(len(link.inflight) for link in ex.scheduler.links)
    (tmp_path / "gate").touch()
    assert ex.scheduler.wait_idle_threadsafe(timeout=30.0)
    ran = len(list(tmp_path.glob("ran-*")))
    assert ran <= 1 + on_nodes < 60, (ran, on_nodes)


def test_many_threads_iterate_their_own_maps(ex: CeranubisExecutor) -> None:
    # Each map has its own waiter: a result wakes only the consumer of its own map.
    outcomes: dict[int, list[int]] = {}

    def consume(offset: int) -> None:
        outcomes[offset] = list(ex.map(add, range(300), [offset] * 300))

    threads = [threading.Thread(target=consume, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == {k * 1000: [x + k * 1000 for x in range(300)] for k in range(4)}


# ------------------------------------------------------------------ waiting


def test_wait_first_completed(ex: CeranubisExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    slow = ex.submit(gated, str(gate), "slow")
    fast = ex.submit(sleep_then, 0.05, "fast")
    done, not_done = cf.wait([slow, fast], timeout=10, return_when=cf.FIRST_COMPLETED)
    assert fast in done and slow in not_done
    gate.touch()


def test_wait_first_exception(ex: CeranubisExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    slow = ex.submit(gated, str(gate))
    bad = ex.submit(fail_on, 1, 1)
    done, not_done = cf.wait([slow, bad], timeout=10, return_when=cf.FIRST_EXCEPTION)
    assert bad in done and slow in not_done
    gate.touch()


def test_wait_all_completed(ex: CeranubisExecutor) -> None:
    futures = [ex.submit(sleep_then, 0.05 * i, i) for i in range(6)]
    done, not_done = cf.wait(futures, timeout=20)
    assert done == set(futures) and not not_done


def test_as_completed_yields_every_future_fastest_first(
    ex: CeranubisExecutor, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"  # the slow one ends only once the fast one was yielded
    futures = [ex.submit(gated, str(gate), "slow"), ex.submit(sleep_then, 0.05, "fast")]
    completed = cf.as_completed(futures, timeout=20)
    first = next(completed).result()
    gate.touch()
    assert [first, *(f.result() for f in completed)] == ["fast", "slow"]


def test_as_completed_timeout(ex: CeranubisExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with pytest.raises(cf.TimeoutError):
        list(cf.as_completed([ex.submit(gated, str(gate))], timeout=0.3))
    gate.touch()


def test_asyncio_wrap_future(ex: CeranubisExecutor) -> None:
    async def main() -> list[int]:
        wrapped = [asyncio.wrap_future(ex.submit(add, i, 1)) for i in range(5)]
        return list(await asyncio.gather(*wrapped))

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ shutdown


def test_shutdown_wait_finishes_running_work(hosts: Any) -> None:
    executor = CeranubisExecutor(hosts, max_workers=2)
    futures = [executor.submit(sleep_then, 0.3, i) for i in range(4)]
    executor.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [0, 1, 2, 3]


def test_shutdown_cancel_futures_cancels_pending(hosts: Any) -> None:
    executor = CeranubisExecutor(hosts, max_workers=1)
    futures = [executor.submit(sleep_then, 0.2, i) for i in range(40)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures)
    assert any(f.cancelled() for f in futures), "cancelled work must not be run"


def wait_running(future: cf.Future[Any], timeout: float = 30.0) -> None:
    """Until the future's task is on a node (a state the loop thread sets)."""
    deadline = time.monotonic() + timeout
    while not future.running() and not future.done():
        assert time.monotonic() < deadline, "the task never reached a node"
        time.sleep(0.01)


def test_shutdown_cancel_futures_lets_running_tasks_finish(hosts: Any) -> None:
    executor = CeranubisExecutor(hosts, max_workers=1)
    running = executor.submit(sleep_then, 0.5, "kept")
    wait_running(running)
    queued = [executor.submit(sleep_then, 0.2, i) for i in range(40)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert running.result(timeout=0) == "kept"
    outcomes = [f.cancelled() or f.exception(timeout=0) for f in queued]
    assert all(outcome is True or outcome is None for outcome in outcomes), outcomes
    assert any(f.cancelled() for f in queued)


def test_shutdown_stop_running_stops_running_tasks_too(hosts: Any) -> None:
    executor = CeranubisExecutor(hosts, max_workers=1)
    running = executor.submit(sleep_then, 30.0, "never")
    wait_running(running)
    queued = [executor.submit(sleep_then, 30.0, i) for i in range(10)]
    started = time.monotonic()
    executor.shutdown(wait=True, stop_running=True)
    assert time.monotonic() - started < 15.0, "the running task was waited for"
    with pytest.raises(cf.CancelledError):
        running.result(timeout=0)
    assert all(f.done() for f in queued)


def test_shutdown_without_wait_returns_at_once_and_work_completes(
    hosts: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"  # opened only once shutdown has returned
    executor = CeranubisExecutor(hosts, max_workers=2)
    futures = [executor.submit(gated, str(gate), i) for i in range(2)]
    executor.shutdown(wait=False)
    assert not any(f.done() for f in futures)
    gate.touch()
    assert [f.result(timeout=30) for f in futures] == [0, 1]
    executor.shutdown(wait=True)


def test_shutdown_is_idempotent(hosts: Any) -> None:
    executor = CeranubisExecutor(hosts, max_workers=1)
    assert executor.submit(add, 1, 1).result(timeout=30) == 2
    executor.shutdown()
    executor.shutdown()
    executor.shutdown(wait=False, cancel_futures=True)


def test_a_result_is_not_held_back_by_a_long_task_after_it(hosts: Any, tmp_path: Path) -> None:
    with CeranubisExecutor(hosts, max_workers=1) as executor:
        executor.submit(add, 0).result(timeout=30)
        gate = tmp_path / "gate"  # the long task ends only once the short result is in
        short, long = executor.submit(sleep_then, 0.0, "short"), executor.submit(gated, str(gate))
        assert short.result(timeout=30) == "short", "the short result waited for the long task"
        assert not long.done()
        gate.touch()


def test_short_results_are_not_held_back_by_a_long_task_in_their_batch(
    hosts: Any, tmp_path: Path
) -> None:
    """Several tiny tasks then a long one, likely in one batch to the one worker: the
    worker's flusher must send every short result while the long task runs (it is woken
    once per wait, not once per result)."""
    with CeranubisExecutor(hosts, max_workers=1) as executor:
        executor.submit(add, 0).result(timeout=30)
        gate = tmp_path / "gate"  # the long task ends only once the short results are in
        shorts = [executor.submit(sleep_then, 0.0, i) for i in range(5)]
        long = executor.submit(gated, str(gate), "long")
        assert [f.result(timeout=30) for f in shorts] == list(range(5))
        assert not long.done()
        gate.touch()
        assert long.result(timeout=30) == "long"


def test_hosts_are_known_from_the_executor_s_first_moment(hosts: Any) -> None:
    with CeranubisExecutor(hosts, max_workers=1) as executor:
        first = executor.hosts()  # before the loop thread has started any node link
        assert len(first) == 1 and first[0].host, first
        assert executor.submit(add, 1, 1).result(timeout=30) == 2
        assert [info.host for info in executor.hosts()] == [first[0].host]
