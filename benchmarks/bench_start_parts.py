"""Where one host's start-up CPU goes, step by step, on one loopback sshd.

Each step is run ``--repeats`` times over ``ssh`` (OpenSSH's client, the host's sshd) and
costs what the sshd and every session it reaped burned (:func:`sshd.host_side_cpu`):
the session and the account's shell with its rc files (``true``), Python's start, the
node's imports, and a whole start of ours (executor, one task, shutdown). The differences
between the steps are each part's share.

``.venv/bin/python benchmarks/bench_start_parts.py``
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable

import sshd

from ceranubis_jupyter import CeranubisExecutor, Host
from ceranubis_jupyter.cluster.bootstrap import node_bundle

NODE_MODULE = "ceranubis_jupyter.node.supervisor"


def inc(x: int) -> int:
    """The tiny task (in ``__main__``: it travels by value)."""
    return x + 1


def host_cost(pids: list[int], step: Callable[[], object], repeats: int) -> float:
    """Median host-side CPU milliseconds of ``step``."""
    samples = []
    for _ in range(repeats):
        sshd.wait_reaped(pids)
        before = sshd.host_side_cpu(pids)
        step()
        sshd.wait_reaped(pids)
        samples.append((sshd.host_side_cpu(pids) - before) * 1000)
    return statistics.median(samples)


def one_start(alias: str) -> None:
    """A whole start of ours: executor, one task, shutdown."""
    with CeranubisExecutor([Host(alias, python=sys.executable, workers=1)]) as ex:
        ex.submit(inc, 1).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args(argv)
    with sshd.loopback_hosts(1) as hosts:
        server = hosts.servers[0]
        one_start(server.alias)  # installs the bundle (the steps below are warm)
        bundle = os.path.join(server.cache, "ceranubis", node_bundle().digest)
        python = shlex.quote(sys.executable)
        ssh = ["ssh", "-F", str(hosts.ssh_config), server.alias]
        steps: list[tuple[str, Callable[[], object]]] = [
            ("ssh session + the account's shell (true)", lambda: _ssh(ssh, "true")),
            ("... + python -E -s -c pass", lambda: _ssh(ssh, f"{python} -E -s -c pass")),
            (
                "... + the node's imports",
                lambda: _ssh(
                    ssh, f"cd {shlex.quote(bundle)} && {python} -E -s -c 'import {NODE_MODULE}'"
                ),
            ),
            ("a start of ours: executor, 1 task, shutdown", lambda: one_start(server.alias)),
        ]
        for label, step in steps:
            print(f"{label:<48} {host_cost(hosts.pids, step, args.repeats):6.0f} ms host CPU")
    return 0


def _ssh(ssh: list[str], command: str) -> None:
    subprocess.run([*ssh, command], check=True, stdin=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
