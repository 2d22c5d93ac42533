"""The "ceranubis" joblib backend: registration, Parallel, batching, streaming, sklearn."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
from joblib import Parallel, delayed
from joblib.parallel import get_active_backend
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

from ceranubis_jupyter import CeranubisExecutor, Host
from tests.remote import by_value
from tests.task_records import TaskRecords
from tests.waiting import gated

ROOT = Path(__file__).resolve().parent.parent


@by_value
def square(x: int) -> int:
    return x * x


@by_value
def refuse(x: int) -> int:
    if x == 3:
        raise ValueError(f"{x} refused")
    return x


@pytest.fixture
def executor() -> Iterator[CeranubisExecutor]:
    with CeranubisExecutor(max_workers=2) as ex:
        yield ex


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return done.stdout.strip()


def test_registered_when_joblib_is_imported_later_without_importing_it() -> None:
    out = _python(
        "import sys, ceranubis_jupyter\n"
        "print('joblib' in sys.modules)\n"
        "import joblib.parallel\n"
        "print('ceranubis' in joblib.parallel.BACKENDS)\n"
        "print('ceranubis_jupyter.cluster.joblib_backend' in sys.modules)"
    )
    assert out.split() == ["False", "True", "False"]


def test_registered_when_joblib_was_imported_first() -> None:
    out = _python(
        "import joblib.parallel, ceranubis_jupyter\nprint('ceranubis' in joblib.parallel.BACKENDS)"
    )
    assert out == "True"


def test_parallel_on_the_embedded_default() -> None:
    with joblib.parallel_config(backend="ceranubis", max_workers=2):
        backend, _ = get_active_backend()
        try:
            assert Parallel(n_jobs=-1)(delayed(square)(x) for x in range(50)) == [
                x * x for x in range(50)
            ]
            assert backend.effective_n_jobs(-1) == 2
        finally:
            backend.executor.shutdown()


def test_auto_batching_sends_fewer_tasks_than_calls(executor: CeranubisExecutor) -> None:
    calls = 5000
    with (
        TaskRecords(executor) as records,
        joblib.parallel_config(backend="ceranubis", executor=executor),
    ):
        got = Parallel(n_jobs=-1)(delayed(square)(x) for x in range(calls))
        assert got == [x * x for x in range(calls)]
        assert len(records.finished) < calls / 4


def test_generator_streams_results(executor: CeranubisExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with joblib.parallel_config(backend="ceranubis", executor=executor):
        results = Parallel(n_jobs=2, batch_size=1, return_as="generator")(
            [delayed(square)(3), delayed(gated)(str(gate), 7)]
        )
        assert next(results) == 9  # while the second call still waits for its gate
        gate.touch()
        assert list(results) == [7]


def test_an_exception_ends_the_call(executor: CeranubisExecutor) -> None:
    with (
        joblib.parallel_config(backend="ceranubis", executor=executor),
        pytest.raises(ValueError, match="3 refused"),
    ):
        Parallel(n_jobs=2, batch_size=1)(delayed(refuse)(x) for x in range(8))


def _grid_search(n_jobs: int) -> dict[str, Any]:
    features, labels = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0], "gamma": ["scale", 0.1], "kernel": ["rbf", "linear"]}
    search = GridSearchCV(SVC(), grid, cv=3, n_jobs=n_jobs).fit(features, labels)
    return {
        "best": search.best_params_,
        "scores": list(search.cv_results_["mean_test_score"]),
        "ranks": list(search.cv_results_["rank_test_score"]),
    }


def test_grid_search_on_the_embedded_default_equals_a_local_run(
    executor: CeranubisExecutor,
) -> None:
    local = _grid_search(n_jobs=1)
    with TaskRecords(executor) as records:
        with joblib.parallel_config(backend="ceranubis", executor=executor):
            remote = _grid_search(n_jobs=-1)
        assert records.finished  # it did run on the executor
    assert remote == local


def test_grid_search_over_ssh_equals_a_local_run(hosts_openssh: list[Host]) -> None:
    local = _grid_search(n_jobs=1)
    with (
        CeranubisExecutor(hosts_openssh, max_workers=2) as ex,
        TaskRecords(ex) as records,
    ):
        with joblib.parallel_config(backend="ceranubis", executor=ex):
            remote = _grid_search(n_jobs=-1)
        hosts = {record.host for record in records.finished.values()}
    assert remote == local
    assert hosts == {hosts_openssh[0].name}
