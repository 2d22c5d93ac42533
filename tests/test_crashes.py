"""The crash-case table (loky/CPython style): each failure, its exact error, and recovery.

Every case fails only its own future, with a precise type and message, and the very next
task on the same executor still succeeds.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ceranubis_jupyter import (
    CeranubisExecutor,
    ConfigError,
    RemoteTraceback,
    TaskError,
    UnpicklableError,
    WorkerCrashed,
)
from ceranubis_jupyter.projects.commit import commit_function, commit_project
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.waiting import wait_for


@by_value
def identity(x: Any) -> Any:
    return x


@by_value
def pair(a: Any, b: Any) -> tuple[Any, Any]:
    return a, b


@by_value
def raise_value_error(x: int) -> int:
    limit = 10
    if x > limit:
        raise ValueError(f"{x} is over the limit of {limit}")
    return x


@by_value
def return_generator(_: int) -> Any:
    return (i for i in range(3))


@by_value
def exit_worker(code: int) -> None:
    import os

    os._exit(code)


@by_value
def sigkill_self(_: int) -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@by_value
def segfault(_: int) -> None:
    import ctypes

    ctypes.string_at(0)


@by_value
def raise_unpicklable_exception(_: int) -> None:
    error = RuntimeError("holds a generator")
    error.payload = (i for i in range(3))  # type: ignore[attr-defined]
    raise error


@pytest.fixture
def ex(hosts: Any) -> Iterator[CeranubisExecutor]:
    executor = CeranubisExecutor(hosts, max_workers=2, retries=1)
    yield executor
    executor.shutdown(wait=True, stop_running=True)


# (name, fn, argument, expected type, message pattern)
CRASH_CASES: list[tuple[str, Callable[..., Any], Any, type[BaseException], str]] = [
    ("exception in fn", raise_value_error, 11, ValueError, r"^11 is over the limit of 10$"),
    (
        "unpicklable argument",
        identity,
        (i for i in range(3)),
        UnpicklableError,
        r"argument 1 of call 1 \(<generator object <genexpr> at 0x[0-9a-f]+>\) cannot "
        r"be pickled: TypeError: cannot pickle 'generator' object; use plain data",
    ),
    (
        "unpicklable result",
        return_generator,
        1,
        UnpicklableError,
        r"task \d+ on \S+: the result could not be pickled: TypeError: cannot pickle "
        r"'generator' object",
    ),
    (
        "unpicklable exception",
        raise_unpicklable_exception,
        1,
        TaskError,
        r"task \d+ on \S+ raised RuntimeError: holds a generator \(the exception itself "
        r"could not be pickled\)",
    ),
    (
        "worker exit",
        exit_worker,
        3,
        WorkerCrashed,
        r"worker \d+ on \S+ died with exit code 3 while running task \d+ \(2 attempts\); "
        r"the task ended its process",
    ),
    (
        "worker SIGKILL",
        sigkill_self,
        1,
        WorkerCrashed,
        r"worker \d+ on \S+ died with SIGKILL\(-9\) while running task \d+ \(2 attempts\); "
        r"check the host's memory",
    ),
    (
        "segfault",
        segfault,
        1,
        WorkerCrashed,
        r"worker \d+ on \S+ died with SIGSEGV\(-11\) while running task \d+ \(2 attempts\)",
    ),
]


@pytest.mark.parametrize(
    ("fn", "argument", "error_type", "pattern"),
    [case[1:] for case in CRASH_CASES],
    ids=[case[0] for case in CRASH_CASES],
)
def test_crash_case(
    ex: CeranubisExecutor,
    fn: Callable[..., Any],
    argument: Any,
    error_type: type[BaseException],
    pattern: str,
) -> None:
    future = ex.submit(fn, argument)
    with pytest.raises(error_type) as caught:
        future.result(timeout=60)
    assert type(caught.value) is error_type
    assert re.search(pattern, str(caught.value)), str(caught.value)
    assert ex.submit(identity, "still working").result(timeout=60) == "still working"


def test_user_exception_carries_the_remote_traceback(ex: CeranubisExecutor) -> None:
    with pytest.raises(ValueError) as caught:
        ex.submit(raise_value_error, 12).result(timeout=60)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    text = str(cause)
    assert re.search(r"Remote traceback of task \d+ on \S+:", text)
    lines, first = inspect.getsourcelines(raise_value_error)
    line = first + next(i for i, text in enumerate(lines) if "raise ValueError" in text)
    assert f'File "{__file__}", line {line}, in raise_value_error' in text
    assert 'raise ValueError(f"{x} is over the limit of {limit}")' in text
    assert text.rstrip().endswith("ValueError: 12 is over the limit of 10")


def test_crash_errors_carry_host_and_task(ex: CeranubisExecutor) -> None:
    with TaskRecords(ex) as tasks:
        future = ex.submit(sigkill_self, 1)
        with pytest.raises(WorkerCrashed) as caught:
            future.result(timeout=60)
        assert caught.value.exitcode == -9
        assert caught.value.task_id == ex.task_id_of(future) == tasks.of(future).task_id
        assert caught.value.host == tasks.of(future).host


def test_unserializable_function_fails_at_submit(ex: CeranubisExecutor) -> None:
    gen = (i for i in range(3))

    def uses_generator() -> int:
        return next(gen)

    uses_generator.__module__ = "__main__"
    with pytest.raises(
        UnpicklableError, match=r"'.*uses_generator' cannot be serialized with dill"
    ):
        ex.submit(uses_generator)
    assert ex.submit(identity, 5).result(timeout=60) == 5


def test_submit_map_and_a_project_name_the_same_unpicklable_argument(
    ex: CeranubisExecutor, tmp_path: Path
) -> None:
    bad = (i for i in range(3))
    with pytest.raises(UnpicklableError) as by_submit:
        ex.submit(pair, 1, bad).result(timeout=60)
    with pytest.raises(UnpicklableError) as by_map:
        list(ex.map(pair, [1], [bad], timeout=60))
    with pytest.raises(UnpicklableError) as by_project:
        code = "def pair(a, b):\n    return a, b\n"
        commit_project(code, "pair", [(1, bad)], store=str(tmp_path / "projects.sqlite"))
    message = str(by_submit.value)
    assert re.match(r"argument 2 of call 1 \(<generator .*\) cannot be pickled: TypeError", message)
    assert str(by_map.value) == message and str(by_project.value) == message
    assert isinstance(by_project.value, ConfigError), "the magics report ConfigErrors"
    with pytest.raises(UnpicklableError, match=r"^argument 2 of call 3 \(<generator"):
        list(ex.map(pair, [0, 1, 2], [0, 0, bad], chunksize=2, timeout=60))
    assert ex.submit(identity, 5).result(timeout=60) == 5


def test_submit_and_a_project_name_the_same_unserializable_function(
    ex: CeranubisExecutor, tmp_path: Path
) -> None:
    gen = (i for i in range(3))

    def uses_generator(_: int) -> int:
        return next(gen)

    uses_generator.__module__ = "__main__"
    with pytest.raises(UnpicklableError) as by_submit:
        ex.submit(uses_generator, 1)
    with pytest.raises(UnpicklableError) as by_project:
        commit_function(ex, uses_generator, [(1,)], store=str(tmp_path / "projects.sqlite"))
    assert str(by_project.value) == str(by_submit.value)
    assert "uses_generator' cannot be serialized with dill: TypeError" in str(by_submit.value)


def test_a_worker_killed_from_outside_is_retried(hosts: Any, tmp_path: Path) -> None:
    @by_value
    def slow_pid(marker: str) -> int:
        import os
        import time

        if marker and not os.path.exists(marker):  # the first attempt: killed in here
            open(marker, "w").close()
            time.sleep(60)
        return os.getpid()

    marker = tmp_path / "started"
    with CeranubisExecutor(hosts, max_workers=1) as executor:
        first = executor.submit(slow_pid, "").result(timeout=60)
        future = executor.submit(slow_pid, str(marker))
        import os
        import signal

        wait_for(marker.exists, 60, "the task running in the worker")
        _kill_if_local(first, signal.SIGKILL, os)
        second = future.result(timeout=60)
        assert second != first, "the retried task ran in a fresh worker"


def _kill_if_local(pid: int, sig: int, os_module: Any) -> None:
    os_module.kill(pid, sig)


def _module_function(directory: Path, name: str) -> Callable[..., Any]:
    """``triple`` from a new module ``name`` in ``directory``, imported here by reference."""
    (directory / f"{name}.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(directory))
    function: Callable[..., Any] = module.triple
    return function


def test_a_function_the_node_cannot_import_fails_its_tasks_clearly(
    ex: CeranubisExecutor, tmp_path: Path
) -> None:
    # Its module was importable only while the client imported it (the file is gone now):
    # dill sends it by reference, and no node can load it. Each task must fail, not hang.
    assert ex.submit(identity, "nodes up").result(timeout=60) == "nodes up"
    triple = _module_function(tmp_path, "cj_gone_module")
    (tmp_path / "cj_gone_module.py").unlink()
    try:
        for _ in range(2):
            with pytest.raises(UnpicklableError) as caught:
                ex.submit(triple, 2).result(timeout=60)
            assert re.search(
                r"task \d+ on \S+: the function could not be loaded on the node: "
                r"ModuleNotFoundError: No module named 'cj_gone_module'\. .*define the "
                r"function in the notebook",
                str(caught.value),
            ), str(caught.value)
    finally:
        del sys.modules["cj_gone_module"]
    assert ex.submit(identity, "still working").result(timeout=60) == "still working"


def test_local_nodes_import_what_the_client_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    triple = _module_function(tmp_path, "cj_beside_the_notebook")
    try:
        with CeranubisExecutor(max_workers=1) as executor:
            assert executor.submit(triple, 5).result(timeout=60) == 15
    finally:
        del sys.modules["cj_beside_the_notebook"]
