"""Projects across processes, on both back ends: a client killed mid-run and resumed by a
new process; two processes reading one running project at the same time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ceranubis_jupyter.projects.project import Project
from ceranubis_jupyter.projects.stores import open_store

# The work: slow enough to kill part way, logs each call (CJ_LOG) to count executions.
CODE = """
import os, time

def work(x):
    time.sleep(float(os.environ.get("CJ_SLEEP", "0.1")))
    log = os.environ.get("CJ_LOG")
    if log:
        with open(log, "a") as file:
            file.write(f"{x}\\n")
    return x * x + 1
"""

CLIENT = """
import sys
from ceranubis_jupyter.projects.commit import commit_project
code, store, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
project = commit_project(code, "work", [(x,) for x in range(count)], name=name, store=store)
print("committed", flush=True)
project.wait()
print("finished", project.state, flush=True)
"""

RESUMER = """
import sys
from ceranubis_jupyter.projects.project import Project
project = Project.load(sys.argv[1], sys.argv[2])
print("loaded", project.state, project.status(), flush=True)
project.resume()
print("waited", project.wait(60), project.state, flush=True)
"""

READER = """
import json, sys, time
from ceranubis_jupyter.projects.project import Project
from ceranubis_jupyter.errors import ConfigError
name, store = sys.argv[1], sys.argv[2]
print("ready", flush=True)
deadline = time.monotonic() + 60
while True:  # started before the project exists: wait for it
    try:
        project = Project.load(name, store)
        break
    except ConfigError:
        assert time.monotonic() < deadline, "the project never appeared"
        time.sleep(0.02)
reads, dones, bad = 0, [], []
while time.monotonic() < deadline:
    state = project.state
    done, total = project.status()
    results = project.results()
    bad += [(a, r) for a, r in results if r != a[0] * a[0] + 1]
    dones.append((done, len(results), total))
    reads += 1
    if state != "running":
        break
    time.sleep(0.05)
print(json.dumps({"reads": reads, "dones": dones, "bad": bad, "state": state}), flush=True)
"""

# Seconds a whole scenario may take, and the arguments each runs.
DEADLINE = 90
COUNT = 40


def expected(x: int) -> int:
    return x * x + 1


def _spawn(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _expect_line(process: subprocess.Popen[str], prefix: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}; " + (
        process.stderr.read() if process.poll() is not None and process.stderr else ""
    )
    return line


def _logged(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_killed_client_then_resume_runs_only_the_rest(store_url: str, tmp_path: Path) -> None:
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    client = _spawn(CLIENT, CODE, store_url, "killed", str(COUNT), env={"CJ_LOG": str(first_log)})
    try:
        _expect_line(client, "committed")
        watcher = Project.load("killed", open_store(store_url))
        deadline = time.monotonic() + DEADLINE
        while watcher.status()[0] < COUNT // 4:
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.02)
        seen_before_kill = watcher.results()
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
    assert COUNT // 4 <= len(seen_before_kill) < COUNT, "kill came too late to test resume"

    loaded = Project.load("killed", open_store(store_url))
    assert loaded.state == "stopped"  # its client is gone, work is left
    kept = dict(loaded.results())
    assert set(seen_before_kill) <= set(kept.items())  # nothing committed was lost
    assert all(value == expected(x) for (x,), value in kept.items())
    assert loaded.counts()["running"] == 0

    resumer = _spawn(RESUMER, "killed", store_url, env={"CJ_LOG": str(second_log)})
    out, err = resumer.communicate(timeout=DEADLINE)
    assert resumer.returncode == 0, err
    assert "waited True done" in out, out + err

    final = Project.load("killed", open_store(store_url))
    results = final.results()
    assert final.state == "done" and final.status() == (COUNT, COUNT)
    assert results == [((x,), expected(x)) for x in range(COUNT)]  # one each, in order
    rerun = _logged(second_log)
    assert sorted(rerun) == sorted(set(range(COUNT)) - {x for (x,) in kept})  # only the rest
    rows = open_store(store_url).arguments(final.id, ["pending", "running", "done", "failed"])
    assert len(rows) == COUNT and {row.state for row in rows} == {"done"}


def test_two_processes_read_one_running_project(store_url: str) -> None:
    readers = [_spawn(READER, "watched", store_url) for _ in range(2)]
    for reader in readers:
        _expect_line(reader, "ready")
    client = _spawn(CLIENT, CODE, store_url, "watched", str(COUNT), env={"CJ_SLEEP": "0.1"})
    try:
        _expect_line(client, "committed")
        outputs = [reader.communicate(timeout=DEADLINE) for reader in readers]
        client_out, client_err = client.communicate(timeout=DEADLINE)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=30)
    assert "finished done" in client_out, client_err
    for (out, err), reader in zip(outputs, readers, strict=True):
        assert reader.returncode == 0, err
        report = json.loads(out)
        assert report["bad"] == []
        dones = [done for done, _, _ in report["dones"]]
        assert dones == sorted(dones), "done went backwards"
        assert any(0 < done < COUNT for done in dones), f"never saw partial progress: {dones}"
        assert all(total == COUNT and n_results <= COUNT for _, n_results, total in report["dones"])
        assert report["state"] == "done" and dones[-1] == COUNT
