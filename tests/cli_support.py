"""Running the ``ceranubis`` command as a user would: a subprocess in a work directory that
holds the user's module, with its own config file and store (never the real home's)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Seconds a command may take before the test fails (generous: the machine may be loaded).
DEADLINE = 300
# Tasks with an argument of at least FREE wait for the gate file (at most a minute), so a
# run is caught in the middle whatever the machine's speed.
FREE = 6
WORK = """
import os, time
GATE = {gate!r}
FREE = {free}
VALUE = 3
def square(x):
    return x * x
def add(a, b=0):
    return a + b
def fails(x):
    if x % 3 == 0:
        raise ValueError(f"{{x}} is bad")
    return x
def huge(x):
    return x if x < 2 else 10 ** 5000
def held(x):
    deadline = time.monotonic() + 60
    while x >= FREE and not os.path.exists(GATE) and time.monotonic() < deadline:
        time.sleep(0.01)
    return -x
"""


@dataclass
class Workdir:
    """A directory with ``work.py``, a config file and a store; ``env`` for the command."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config" / "config.toml"

    @property
    def store(self) -> Path:
        return self.path / "projects.sqlite"

    @property
    def gate(self) -> Path:
        return self.path / "gate"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CERANUBIS_CONFIG": str(self.config),
            "CERANUBIS_STORE": str(self.store),
            "XDG_DATA_HOME": str(self.path / "data"),
        }

    def command(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "ceranubis_jupyter.cli", *argv]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``ceranubis ARGV`` here to its end; its output as text."""
        return subprocess.run(
            self.command(*argv), cwd=self.path, env=self.env(), capture_output=True, text=True,
            timeout=DEADLINE,
        )  # fmt: skip

    def popen(self, *argv: str, **options: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            self.command(*argv), cwd=self.path, env=self.env(), **options
        )

    def write_config(self, text: str) -> None:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(text)


def make_workdir(path: Path) -> Workdir:
    """A work directory with the test functions in ``work.py``."""
    workdir = Workdir(path)
    (path / "work.py").write_text(WORK.format(gate=str(workdir.gate), free=FREE))
    return workdir
