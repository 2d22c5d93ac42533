"""``ceranubis run TARGET``: run a function over a range or a file of tasks, as a project.

::

    ceranubis run work.py:square --range 1000000 --chunksize 10000 --hosts local,gpu1 -o out.json
      ├─ target.resolve ─► the function (by value from your file, by reference if installed)
      ├─ arguments ─► the argument tuples (range, or .json/.jsonl/.csv)
      ├─ CeranubisExecutor(hosts).commit ─► a project in the store (resumable)
      └─ until it ends: results streamed to a temporary file (sink.Follower), the progress
         drawn (progress.ProgressDisplay); then the file renamed over out.json

Ctrl-C stops the run (finished results stay in the store, the output file is not
written) and ``ceranubis resume NAME`` finishes it. The exit status is 0 when every
argument is done, 1 when some failed (a summary of the errors on stderr), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cluster.hosts import Host, parse_host_list
from ..cluster.tasks import DEFAULT_RETRIES
from ..config import load_config
from ..errors import ConfigError
from ..projects.executor import CeranubisExecutor
from ..projects.project import Project
from ..projects.stores import STORE_ENV
from . import jobs
from .arguments import Tasks, file_tasks, range_tasks
from .progress import ProgressDisplay
from .projects import brief
from .queued import add_queue_options, commit_queued, follow_queued
from .sink import Follower, ResultSink, columns_of
from .target import resolve

# Seconds between checks of a running project (results followed, progress drawn).
FOLLOW_SECONDS = 0.1
# Seconds a stopped run gets to write what finished before the command gives up on it.
SETTLE_SECONDS = 60.0
# Distinct errors the summary of a failed run shows.
SUMMARY_ERRORS = 3
# Exit status after Ctrl-C, as a shell reports for SIGINT.
INTERRUPTED_STATUS = 130

EXAMPLES = """\
examples:
  ceranubis run work.py:square --range 1000000 --chunksize 10000 -o squares.json
  ceranubis run mypkg.sims:simulate --args tasks.jsonl --hosts @gpu,local --name sweep
  ceranubis run squares --range 10            # a job saved with `ceranubis job new`
"""


def setup_options() -> argparse.ArgumentParser:
    """The options a run and a saved job share."""
    options = argparse.ArgumentParser(add_help=False)
    source = options.add_argument_group("arguments (one of)")
    source.add_argument(
        "--range", nargs="+", metavar="N", help="[START] STOP [STEP]: fn(i) for i in range(...)"
    )
    source.add_argument("--args", metavar="FILE", help="tasks from a .json, .jsonl or .csv file")
    where = options.add_argument_group("where and how")
    where.add_argument("--hosts", help="comma-separated hosts or @groups (default: local)")
    where.add_argument("--python", help="the interpreter on remote hosts (default: python3)")
    where.add_argument("--chunksize", type=_count(1), help="arguments per task (default: 1)")
    where.add_argument("--timeout", type=_seconds, help="seconds per task (default: none)")
    where.add_argument("--retries", type=_count(0), help="re-runs after a worker died (default: 2)")
    where.add_argument("--store", help="store path or postgresql:// URL")
    where.add_argument(
        "--files", type=_names, help="data files/directories synced to every host, comma-"
        "separated, relative to here (default: the config's `files`)",
    )  # fmt: skip
    where.add_argument(
        "--modules", type=_names, help="modules whose source goes to every host (your own "
        "modules go by themselves)",
    )  # fmt: skip
    add_queue_options(options)
    return options


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names


def _count(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def add_commands(subparsers: Any) -> None:
    """Register ``ceranubis run`` and the ``ceranubis job`` verbs."""
    setup = setup_options()
    parser = subparsers.add_parser(
        "run",
        parents=[setup],
        help="run a function over a range or a file of tasks",
        description="Run TARGET once per argument, on every core of the hosts, as a project "
        "kept in the store (Ctrl-C stops it; `ceranubis resume NAME` finishes it).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", help="module:function, path/to/file.py:function, or a job")
    parser.add_argument("--name", help="the project's name (default: a job's, or FUNCTION_n)")
    parser.add_argument("-o", "--output", help="write the results to a .json, .jsonl or .csv")
    parser.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    parser.add_argument(
        "--detach", action="store_true", help="with --queue: return once it is stored"
    )
    parser.set_defaults(handler=run_command)
    jobs.add_commands(subparsers, setup)


class _Settings:
    """A run's settings: the command line's, else the saved job's, else the config's."""

    def __init__(self, args: argparse.Namespace) -> None:
        job = jobs.get_job(args.target) if ":" not in args.target else {}
        given = jobs.job_settings(args)
        given.pop("target", None)  # the positional TARGET: the job's name here
        if "range" in given or "args" in given:
            job = {k: v for k, v in job.items() if k not in ("range", "args")}
        merged = {**job, **given}
        self.target: str = merged.get("target", args.target)
        self.name: str | None = args.name or (args.target if job else None)
        self.values = merged
        self.store = merged.get("store") or os.environ.get(STORE_ENV) or load_config().store

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def run_command(args: argparse.Namespace) -> int:
    """``ceranubis run``: check everything, commit the project, follow it to its end."""
    settings = _Settings(args)
    tasks = _tasks(settings)
    target = resolve(settings.target, tasks.keywords)
    hosts = _hosts(settings.get("hosts"), settings.get("python"))
    sink = (
        ResultSink(Path(args.output), columns_of(tasks.args, tasks.keywords))
        if args.output
        else None
    )
    if settings.get("queue"):
        return _run_queued(args, settings, target.function, tasks.args, sink)
    try:
        executor = CeranubisExecutor(
            hosts, retries=settings.get("retries", DEFAULT_RETRIES),
            files=settings.get("files") or load_config().files,
            modules=settings.get("modules") or (),
        )  # fmt: skip
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    display = None if args.quiet else ProgressDisplay(sys.stdout)
    try:
        project = executor.commit(
            target.function, tasks.args, name=settings.name, store=settings.store,
            chunksize=settings.get("chunksize", 1), timeout=settings.get("timeout"),
        )  # fmt: skip
        return _follow(project, executor, sink, display)
    except BaseException:
        if sink is not None:
            sink.discard()
        executor.shutdown(wait=True, cancel_futures=True, stop_running=True)
        raise


def _run_queued(
    args: argparse.Namespace,
    settings: _Settings,
    function: Any,
    arguments: list[tuple[Any, ...]],
    sink: ResultSink | None,
) -> int:
    """``--queue``: store the project for the node daemons, then follow it (or not)."""
    try:
        project = commit_queued(settings, function, arguments)
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    done, total = project.status()
    print(f"queued {project.name} in {project.store.url}: {done}/{total} done", flush=True)
    if args.detach:
        if sink is not None:
            sink.discard()
        return 0
    display = None if args.quiet else ProgressDisplay(sys.stdout)
    stopped = follow_queued(project, sink, display)
    return _summary(project, sink) if stopped is None else stopped


def _tasks(settings: _Settings) -> Tasks:
    bounds, path = settings.get("range"), settings.get("args")
    if bounds is not None and path is not None:
        raise ConfigError("give --range or --args, not both")
    if bounds is not None:
        return range_tasks(_integers(bounds))
    if path is not None:
        return file_tasks(Path(path))
    raise ConfigError("nothing to run: give --range [START] STOP [STEP] or --args FILE")


def _integers(bounds: list[Any]) -> list[int]:
    numbers = []
    for text in bounds:
        try:
            numbers.append(int(text))
        except ValueError:
            raise ConfigError(f"bad range: {text!r} is not a whole number") from None
    return numbers


def _hosts(text: str | None, python: str | None) -> list[Host] | None:
    if text is None:
        return None
    hosts = parse_host_list(text)
    if python:
        hosts = [h if h.is_local else Host(h.address, python=python) for h in hosts]
    return hosts


def _follow(
    project: Project,
    executor: CeranubisExecutor,
    sink: ResultSink | None,
    display: ProgressDisplay | None,
) -> int:
    """Follow the run to its end; returns the exit status."""
    follower = Follower(project.store, project.id, sink) if sink is not None else None
    try:
        while not project.wait(FOLLOW_SECONDS):
            if project.state != "running":
                break
            if follower is not None:
                follower.drain()
            if display is not None:
                display.show(project, executor.hosts())
    except KeyboardInterrupt:
        return _interrupted(project, executor, sink, display)
    executor.shutdown(wait=True)
    if display is not None:
        display.show(project, executor.hosts(), final=True)
    if follower is not None and sink is not None:
        follower.drain()
        sink.commit()
    return _summary(project, sink)


def _interrupted(
    project: Project,
    executor: CeranubisExecutor,
    sink: ResultSink | None,
    display: ProgressDisplay | None,
) -> int:
    print("\ninterrupted: stopping the run (Ctrl-C again to quit at once)", file=sys.stderr)
    if sink is not None:
        sink.discard()
    executor.shutdown(wait=True, cancel_futures=True, stop_running=True)
    project.wait(SETTLE_SECONDS)
    if display is not None:
        display.show(project, (), final=True)
    done, total = project.status()
    print(
        f"{project.name}: {project.state} at {done}/{total} done; "
        f"`ceranubis resume {project.name}` finishes it",
        file=sys.stderr,
    )
    return INTERRUPTED_STATUS


def _summary(project: Project, sink: ResultSink | None) -> int:
    """The last lines: what was written, and why the run did not end done."""
    done, total = project.status()
    written = f"; {sink.count} results written to {sink.path}" if sink is not None else ""
    print(f"{project.name}: {project.state}, {done}/{total} done{written}")
    if project.state == "done":
        return 0
    errors = project.errors()
    if errors:
        kinds: Counter[str] = Counter()
        first: dict[str, str] = {}  # kind -> its first error line, as shown
        for _, text in errors:
            line = brief(text)
            kind = re.sub(r"\d+", "#", line)  # "task 3 ..." and "task 4 ..." are one kind
            kinds[kind] += 1
            first.setdefault(kind, line)
        print(f"{len(errors)} of {total} arguments failed:", file=sys.stderr)
        for kind, count in kinds.most_common(SUMMARY_ERRORS):
            print(f"  {count}x {first[kind]}", file=sys.stderr)
        if len(kinds) > SUMMARY_ERRORS:
            print(f"  ... and {len(kinds) - SUMMARY_ERRORS} other errors", file=sys.stderr)
        print(f"`ceranubis show {project.name}` shows them in full", file=sys.stderr)
    left = total - done - len(errors)
    if left:
        print(
            f"{left} arguments did not run; `ceranubis resume {project.name}` runs them",
            file=sys.stderr,
        )
    return 1
