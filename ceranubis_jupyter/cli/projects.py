"""``ceranubis projects | show | results | resume | rm``: projects from a shell.

Every command takes ``--store`` (default: ``$CERANUBIS_STORE`` or the user's data
directory). Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from ..cluster.hosts import parse_host_list
from ..errors import CeranubisError, ConfigError, StoreError
from ..projects.project import Project, list_projects, remove_project
from .output import printable, write_atomically
from .sink import csv_cell, write_results_file

# Seconds between progress lines while `ceranubis resume` waits.
PROGRESS_SECONDS = 1.0
# Errors shown in full by `ceranubis show` (the rest are counted).
SHOWN_ERRORS = 5
# Characters of the error `ceranubis resume` quotes when it ends failed: one screen line.
BRIEF_CHARS = 200

T = TypeVar("T")


def add_commands(subparsers: Any) -> None:
    """Register the project commands."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", help="store path or postgresql:// URL")
    named = argparse.ArgumentParser(add_help=False, parents=[store])
    named.add_argument("name", help="project name or id")
    named.add_argument("--version", type=int, help="that version of the name (default: latest)")

    parser = subparsers.add_parser("projects", parents=[store], help="list stored projects")
    parser.add_argument("--all", action="store_true", help="every version, not the latest")
    parser.add_argument("--json", action="store_true", help="print them as JSON")
    parser.set_defaults(handler=_guarded(_projects))
    parser = subparsers.add_parser("show", parents=[named], help="a project's status and errors")
    parser.set_defaults(handler=_guarded(_show))
    parser = subparsers.add_parser("results", parents=[named], help="export finished results")
    parser.add_argument("-o", "--output", help="file to write (.json or .csv); default stdout")
    parser.add_argument("--format", choices=["json", "csv"], help="default: from -o, else json")
    parser.set_defaults(handler=_guarded(_results))
    parser = subparsers.add_parser("resume", parents=[named], help="run what is not done yet")
    parser.add_argument("--hosts", help="comma-separated hosts (default: the project's)")
    parser.add_argument("--no-wait", action="store_true", help="return once it runs")
    parser.add_argument("-o", "--output", help="then write every result (.json, .jsonl, .csv)")
    parser.set_defaults(handler=_guarded(_resume))
    parser = subparsers.add_parser(
        "cancel", parents=[named], help="stop a project wherever it runs (results kept)"
    )
    parser.set_defaults(handler=_guarded(_cancel))
    parser = subparsers.add_parser(
        "rm", parents=[named], help="delete a project (every version) and its results"
    )
    parser.add_argument("--force", action="store_true", help="even if a client runs it")
    parser.set_defaults(handler=_guarded(_rm))


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ConfigError, StoreError) as error:
            print(f"ceranubis {args.command}: {error}", file=sys.stderr)
            return 2

    return run


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [head, *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def _projects(args: argparse.Namespace) -> int:
    summaries = list_projects(args.store, every_version=args.all)
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in summaries], indent=1))
        return 0
    if not summaries:
        print("no projects yet")
        return 0
    rows = [
        [s.name, str(s.version), str(s.id), s.state, f"{s.done}/{s.total}", _when(s.created)]
        for s in summaries
    ]
    print(_table(["name", "version", "id", "state", "done", "created"], rows))
    return 0


def _show(args: argparse.Namespace) -> int:
    project = Project.load(args.name, args.store, version=args.version)
    counts = project.counts()
    print(f"project  {project.name} (id {project.id}) in {project.store.url}")
    changes = f" ({printable(project.changes)})" if project.changes else ""
    print(f"version  {project.version}{changes}")
    print(f"state    {project.state}")
    print(f"target   {printable(project.target)}")
    print(f"hosts    {printable(', '.join(project.hosts)) or 'local (embedded default)'}")
    print(f"created  {_when(project.created)}")
    print(f"elapsed  {project.elapsed():.1f} s")
    print("counts   " + ", ".join(f"{state} {n}" for state, n in counts.items()))
    if project.reused:
        print(f"reused   {project.reused} stored results (same code, same arguments)")
    stats = project.store.host_stats(project.id)
    if stats:
        rows = [
            [
                printable(s.host),
                str(s.count),
                f"{s.mean_seconds:.3f}",
                _when(s.first_started),
                _when(s.last_finished),
            ]
            for s in stats
        ]
        print("\n" + _table(["host", "finished", "mean s", "first start", "last finish"], rows))
    errors = _stored(project.errors)
    for args_tuple, text in errors[:SHOWN_ERRORS]:
        print(f"\nerror for args {args_tuple!r}:\n{printable(text)}")
    if len(errors) > SHOWN_ERRORS:
        print(f"\n... and {len(errors) - SHOWN_ERRORS} more errors")
    return 0


def _results(args: argparse.Namespace) -> int:
    project = Project.load(args.name, args.store, version=args.version)
    results = _stored(project.results)
    kind = args.format or ("csv" if args.output and args.output.endswith(".csv") else "json")
    target = args.output or "the results"
    try:
        if not args.output:
            _write_results(results, kind, sys.stdout)
            return 0
        write_atomically(Path(args.output), lambda file: _write_results(results, kind, file))
    except BrokenPipeError:
        raise  # the reader went away: main ends quietly
    except OSError as error:
        raise ConfigError(f"cannot write {target}: {error.strerror or error}") from None
    except ValueError as error:  # json/csv: e.g. an int too long to convert to text
        raise ConfigError(f"cannot write {target}: {error}") from None
    print(f"{len(results)} results of {project.name} written to {args.output}")
    return 0


def _stored(read: Callable[[], list[T]]) -> list[T]:
    """What ``read`` returns; a value that cannot be unpickled here is a one-line error."""
    try:
        return read()
    except CeranubisError:
        raise
    except Exception as error:  # unpickling raises anything: ImportError, AttributeError...
        raise ConfigError(
            f"a stored value cannot be unpickled here ({type(error).__name__}: {error}); "
            "run this where the modules it needs can be imported"
        ) from None


def _write_results(results: list[tuple[tuple[Any, ...], Any]], kind: str, file: TextIO) -> None:
    if kind == "json":
        rows = [{"args": list(args), "result": result} for args, result in results]
        json.dump(rows, file, default=repr, indent=1)
        file.write("\n")
        return
    width = max((len(args) for args, _ in results), default=0)
    writer = csv.writer(file)
    writer.writerow([f"arg{i}" for i in range(width)] + ["result"])
    for args, result in results:
        writer.writerow(
            [csv_cell(a) for a in args] + [""] * (width - len(args)) + [csv_cell(result)]
        )


def _resume(args: argparse.Namespace) -> int:
    project = Project.load(args.name, args.store, version=args.version)
    hosts = None if args.hosts is None else parse_host_list(args.hosts)
    project.resume(hosts=hosts)
    print(f"resumed {project.name}: {project.status()[0]}/{project.status()[1]} done")
    if args.no_wait:
        return 0
    while not project.wait(PROGRESS_SECONDS):
        if project.state != "running":
            break
        counts = project.counts()
        print(
            f"  {counts['done']} done, {counts['running']} running, "
            f"{counts['pending']} pending, {counts['failed']} failed",
            flush=True,
        )
    done, total = project.status()
    print(f"{project.name}: {project.state}, {done}/{total} done")
    if args.output:
        count = write_results_file(project.store, project.id, project.target, Path(args.output))
        print(f"{count} results written to {args.output}")
    if project.state == "done":
        return 0
    _explain(project, total)
    return 1


def _cancel(args: argparse.Namespace) -> int:
    project = Project.load(args.name, args.store, version=args.version)
    project.cancel()
    done, total = project.status()
    print(f"{project.name}: {project.state}, {done}/{total} done (finished results kept)")
    return 0


def _explain(project: Project, total: int) -> None:
    """Why a resumed project did not end done: how many failed, the first error, or what
    is left."""
    counts = project.counts()
    if counts["failed"]:
        args_tuple, text = _stored(project.errors)[0]
        print(
            f"{counts['failed']} of {total} arguments failed; the first, for args "
            f"{args_tuple!r}: {brief(text)}\n`ceranubis show {project.name}` shows the errors",
            file=sys.stderr,
        )
    left = counts["pending"] + counts["running"] + counts["cancelled"]
    if left:
        print(
            f"{left} of {total} arguments did not run ({project.state}); "
            f"`ceranubis resume {project.name}` runs them",
            file=sys.stderr,
        )


def brief(error_text: str) -> str:
    """The last line of an error's text (the exception), made printable and short."""
    lines = [line for line in error_text.strip().splitlines() if line.strip()]
    line = printable(lines[-1].strip() if lines else "(no error text)")
    return line if len(line) <= BRIEF_CHARS else line[: BRIEF_CHARS - 1] + "…"


def _rm(args: argparse.Namespace) -> int:
    removed = remove_project(args.name, args.store, force=args.force, version=args.version)
    which = f" version {args.version}" if args.version is not None else ""
    print(f"removed {args.name}{which}" + (f" ({removed} versions)" if removed > 1 else ""))
    return 0
