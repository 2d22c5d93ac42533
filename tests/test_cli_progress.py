"""``ceranubis run`` while it runs: the live bar in a pseudo-terminal, plain lines in a
pipe, and Ctrl-C then ``ceranubis resume`` (exactly one result per argument).

Every run here uses ``work:held``: arguments below ``FREE`` finish at once, the others wait
for the gate file, so the test sees the run in its middle for as long as it needs, and
opens the gate when it has seen what it waits for (no timing window)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ceranubis_jupyter.cli.output import BROKEN_PIPE_STATUS
from ceranubis_jupyter.errors import CeranubisError
from ceranubis_jupyter.projects.project import Project
from tests.cli_support import DEADLINE, FREE, Workdir, make_workdir
from tests.waiting import wait_for

TASKS = 30
# The terminal's redraw: cursor up N lines, clear to the end of the screen.
CLEAR = "\x1b[J"


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    return make_workdir(tmp_path)


def _read_until(fd: int, seen: Callable[[str], bool], what: str) -> str:
    """Read ``fd`` (bounded in time) until ``seen(all text so far)``; returns the text."""
    text = ""
    deadline = time.monotonic() + DEADLINE
    while not seen(text):
        left = deadline - time.monotonic()
        assert left > 0, f"not within {DEADLINE} s: {what}; got {text[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty reads EIO once the other side is closed
                chunk = b""
            assert chunk, f"the output ended before {what}; got {text[-2000:]!r}"
            text += chunk.decode("utf-8", "replace")
    return text


def _read_until_end(fd: int) -> str:
    text = ""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        text += chunk.decode("utf-8", "replace")
    return text


def _running_frames(text: str) -> list[str]:
    """The distinct frames drawn while the run was still running."""
    frames = [frame for frame in text.split(CLEAR) if "running:" in frame]
    return list(dict.fromkeys(frames))


def test_the_live_bar_redraws_in_a_terminal(workdir: Workdir) -> None:
    master, slave = pty.openpty()
    process = workdir.popen(
        "run", "work:held", "--range", str(TASKS), "--name", "bar",
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    try:
        text = _read_until(master, lambda t: len(_running_frames(t)) >= 2, "two frames")
        frame = _running_frames(text)[-1]
        assert "bar [" in frame and f"/{TASKS} done" in frame and "ETA" in frame
        assert "  local " in frame  # one line per host
        workdir.gate.touch()
        text += _read_until_end(master)
        assert process.wait(timeout=DEADLINE) == 0
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "\x1b[" in text and "F" in text  # drawn in place: cursor moved up
    assert f"bar [################] done: {TASKS}/{TASKS} done · 0 failed" in text
    assert f"bar: done, {TASKS}/{TASKS} done" in text


def test_plain_lines_when_piped(workdir: Workdir) -> None:
    process = workdir.popen(
        "run", "work:held", "--range", str(TASKS), "--name", "plain",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        fd = process.stdout.fileno()
        text = _read_until(fd, lambda t: "plain [" in t and "running:" in t, "a progress line")
        workdir.gate.touch()
        text += _read_until_end(fd)
        assert process.wait(timeout=DEADLINE) == 0
        assert process.stderr.read() == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert all(line.startswith("plain") for line in lines), lines
    assert "running:" in lines[0]
    assert lines[-1] == f"plain: done, {TASKS}/{TASKS} done"


def _done(store: Path, name: str) -> int:
    """How many arguments of ``name`` the store shows done (0 while it is not there)."""
    if not store.exists():
        return 0
    try:
        return Project.load(name, str(store)).status()[0]
    except CeranubisError:  # not committed yet, or the store is being created
        return 0


def test_ctrl_c_stops_cleanly_and_resume_finishes_with_one_result_each(
    workdir: Workdir,
) -> None:
    process = workdir.popen(
        "run", "work:held", "--range", str(TASKS), "--name", "stopped", "-o", "out.json",
        "--quiet", stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _done(workdir.store, "stopped") >= FREE, DEADLINE, "the free tasks done")
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole group
        _out, err = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert err.decode().splitlines()[-1].startswith(f"stopped: stopped at {FREE}/{TASKS} done")
    assert "`ceranubis resume stopped` finishes it" in err.decode()
    assert sorted(p.name for p in workdir.path.iterdir() if "out" in p.name) == []

    workdir.gate.touch()
    resumed = workdir.run("resume", "stopped", "-o", "out.json")
    assert resumed.returncode == 0, resumed.stderr
    assert f"stopped: done, {TASKS}/{TASKS} done" in resumed.stdout
    assert f"{TASKS} results written to out.json" in resumed.stdout
    rows = json.loads((workdir.path / "out.json").read_text())
    assert rows == [{"args": [x], "result": -x} for x in range(TASKS)]
    exported = workdir.run("results", "stopped", "-o", "all.json")
    assert exported.returncode == 0, exported.stderr
    assert [r["args"] for r in json.loads((workdir.path / "all.json").read_text())] == [
        [x] for x in range(TASKS)
    ]  # exactly one result per argument in the store too


def test_a_reader_that_closes_the_pipe_early_ends_the_run_quietly(workdir: Workdir) -> None:
    with (workdir.path / "stderr").open("wb") as err:
        process = workdir.popen(
            "run", "work:held", "--range", str(TASKS), "--name", "headed",
            stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
        assert process.stdout is not None
        head = subprocess.run(
            ["head", "-n", "1"], stdin=process.stdout, capture_output=True, timeout=DEADLINE
        )
        process.stdout.close()  # head is now the only reader, and it is gone
        status = process.wait(timeout=DEADLINE)
    assert head.returncode == 0 and head.stdout.startswith(b"headed [")
    assert (workdir.path / "stderr").read_bytes() == b""
    assert status == BROKEN_PIPE_STATUS
