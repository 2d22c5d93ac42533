"""What a node says about its host: the ``Hello`` it opens with, and the figures of its
``Load`` reports (cores, load average, memory and CPU use).

Stdlib + dill only: shipped to bare hosts with the node (see ``bootstrap``). Off Linux the
figures that need ``/proc`` read as zero.
"""

from __future__ import annotations

import os
import socket
import sys

import dill

from ..wire import protocol as p


def hello() -> p.Hello:
    """The node's first message: protocol, Python and dill versions, host, cores, pid."""
    version = sys.version_info
    return p.Hello(
        protocol=p.PROTOCOL_VERSION,
        python=f"{version.major}.{version.minor}.{version.micro}",
        dill=str(dill.__version__),
        hostname=socket.gethostname(),
        cores=cores(),
        pid=os.getpid(),
    )


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def loadavg() -> float:
    """The host's one-minute load average."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return 0.0


def memory_percent() -> float:
    """Percent of the host's memory in use (not available)."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        total = int(fields["MemTotal"].split()[0])
        available = int(fields["MemAvailable"].split()[0])
        return round(100.0 * (total - available) / total, 1)
    except (OSError, KeyError, ValueError):  # pragma: no cover - not Linux
        return 0.0


def load(cpu: CpuMeter, busy: int, workers: int) -> p.Load:
    """The host's load report: ``busy`` of the node's ``workers`` hold tasks."""
    return p.Load(loadavg(), cpu.percent(), memory_percent(), busy, workers)


class CpuMeter:
    """CPU use of the whole host since the previous reading, from /proc/stat."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return sum(values), idle
        except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
            return 0, 0

    def percent(self) -> float:
        """Percent of CPU time spent busy since the last call (or since creation)."""
        total, idle = self._read()
        d_total, d_idle = total - self._last[0], idle - self._last[1]
        self._last = total, idle
        return round(100.0 * (d_total - d_idle) / d_total, 1) if d_total > 0 else 0.0
