"""Named jobs: a saved ``ceranubis run`` setup, run again by its name.

::

    ceranubis job new squares work.py:square --hosts @gpu,local --chunksize 1000
    ceranubis job add-host squares big1        # one more host
    ceranubis job update squares --range 0 5000 --timeout 60
    ceranubis job list                         # --json for scripts
    ceranubis run squares --range 1000000 -o out.json   # options given here win
    ceranubis job rm squares

A job keeps: the target, hosts, remote python, chunk size, timeout, retries, store, and maybe
its arguments (a range or an ``--args`` file, kept as an absolute path). Its runs are projects
named after the job (versions of that name as the code or arguments change). Jobs live in
``jobs.json`` beside the user's config file (:func:`~ceranubis_jupyter.config.jobs_path`),
written atomically; the file is the commands' to edit, the TOML config is the user's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import jobs_path
from ..errors import ConfigError
from ..projects.commit import check_project_name
from .output import add_verbose, printable, write_atomically

# The keys a job may hold (``ceranubis job update`` sets them, ``run`` reads them).
JOB_KEYS = (
    "target", "hosts", "python", "chunksize", "timeout", "retries", "store", "range", "args",
    "files", "modules", "queue", "priority", "group",
)  # fmt: skip
# Version of the jobs file's layout, stored in it: a later layout can be told apart.
JOBS_FILE_VERSION = 1


def load_jobs() -> dict[str, dict[str, Any]]:
    """Every saved job by name (none when the file does not exist yet).

    Raises:
        ConfigError: the file is not a jobs file.
    """
    path = jobs_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read the jobs file {path}: {error}") from None
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, dict):
        raise ConfigError(f'{path} is not a jobs file (no "jobs" table)')
    return jobs


def save_jobs(jobs: dict[str, dict[str, Any]]) -> None:
    """Write every job (atomically; the directory is made if needed)."""
    path = jobs_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": JOBS_FILE_VERSION, "jobs": jobs}, indent=2, sort_keys=True)
        write_atomically(path, lambda file: print(text, file=file))
    except OSError as error:
        raise ConfigError(f"cannot write the jobs file {path}: {error.strerror}") from None


def get_job(name: str) -> dict[str, Any]:
    """The saved job ``name``.

    Raises:
        ConfigError: no such job (the message lists the saved ones).
    """
    jobs = load_jobs()
    if name not in jobs:
        known = ", ".join(sorted(jobs)) or "none yet"
        raise ConfigError(f"no job {name!r} (saved jobs: {known}); `ceranubis job new` makes one")
    return dict(jobs[name])


def job_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What ``job new`` / ``job update`` were given, as a job's keys (unset ones left out)."""
    settings = {key: getattr(args, key, None) for key in JOB_KEYS}
    path = settings.get("args")
    if path is not None:
        settings["args"] = str(Path(path).resolve())
    return {key: value for key, value in settings.items() if value is not None}


def add_commands(subparsers: Any, run_options: argparse.ArgumentParser) -> None:
    """Register ``ceranubis job new | list | show | update | add-host | remove-host | rm``."""
    parser = subparsers.add_parser(
        "job",
        help="saved run setups: new, list, show, update, add-host, remove-host, rm",
        description="Save a run's setup under a name, then `ceranubis run NAME`.",
        epilog="example: ceranubis job new squares work.py:square --hosts @gpu,local",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    new = verbs.add_parser(
        "new", parents=[run_options], help="save a new job",
        epilog="example: ceranubis job new squares work.py:square --hosts @gpu --range 1000",
    )  # fmt: skip
    new.add_argument("name", help="the job's name (also its projects' name)")
    new.add_argument("target", help="module:function or path/to/file.py:function")
    new.set_defaults(handler=_new)
    update = verbs.add_parser(
        "update", parents=[run_options], help="change a job's target or options",
        epilog="example: ceranubis job update squares --target work2.py:square --retries 3",
    )  # fmt: skip
    update.add_argument("name", help="the job to change")
    update.add_argument("--target", help="a new module:function or file.py:function")
    update.set_defaults(handler=_update)
    _add_simple_verbs(verbs)
    for verb in verbs.choices.values():
        add_verbose(verb)


def _add_simple_verbs(verbs: Any) -> None:
    listing = verbs.add_parser(
        "list", help="the saved jobs", epilog="example: ceranubis job list --json"
    )
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(handler=_list)
    show = verbs.add_parser(
        "show", help="one job's setup", epilog="example: ceranubis job show squares"
    )
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print it as JSON")
    show.set_defaults(handler=_show)
    for verb, handler, text in (
        ("add-host", _add_host, "add hosts (or @groups) to a job"),
        ("remove-host", _remove_host, "remove hosts from a job"),
    ):
        parser = verbs.add_parser(
            verb, help=text, epilog=f"example: ceranubis job {verb} squares gpu3"
        )
        parser.add_argument("name")
        parser.add_argument("host", nargs="+", help="a host spec or @group")
        parser.set_defaults(handler=handler)
    remove = verbs.add_parser(
        "rm", help="forget a job (its projects stay)", epilog="example: ceranubis job rm squares"
    )
    remove.add_argument("name")
    remove.set_defaults(handler=_rm)


def _new(args: argparse.Namespace) -> int:
    check_project_name(args.name)
    jobs = load_jobs()
    if args.name in jobs:
        raise ConfigError(
            f"job {args.name!r} exists; `ceranubis job update {args.name}` changes it"
        )
    jobs[args.name] = job_settings(args)
    save_jobs(jobs)
    print(f"saved job {args.name}: {_describe(jobs[args.name])}")
    return 0


def _update(args: argparse.Namespace) -> int:
    jobs = load_jobs()
    job = get_job(args.name)
    changes = job_settings(args)
    if not changes:
        raise ConfigError("nothing to update: give --target or a run option")
    if "range" in changes:
        job.pop("args", None)
    if "args" in changes:
        job.pop("range", None)
    job.update(changes)
    jobs[args.name] = job
    save_jobs(jobs)
    print(f"updated job {args.name}: {_describe(job)}")
    return 0


def _hosts_of(job: dict[str, Any]) -> list[str]:
    return [h.strip() for h in str(job.get("hosts") or "").split(",") if h.strip()]


def _add_host(args: argparse.Namespace) -> int:
    jobs, job = load_jobs(), get_job(args.name)
    hosts = _hosts_of(job)
    hosts += [h for h in args.host if h not in hosts]
    job["hosts"] = ",".join(hosts)
    jobs[args.name] = job
    save_jobs(jobs)
    print(f"job {args.name} hosts: {job['hosts']}")
    return 0


def _remove_host(args: argparse.Namespace) -> int:
    jobs, job = load_jobs(), get_job(args.name)
    hosts = _hosts_of(job)
    missing = [h for h in args.host if h not in hosts]
    if missing:
        raise ConfigError(
            f"job {args.name} has no host {missing[0]!r} (its hosts: {', '.join(hosts) or 'local'})"
        )
    job["hosts"] = ",".join(h for h in hosts if h not in args.host)
    if not job["hosts"]:
        del job["hosts"]
    jobs[args.name] = job
    save_jobs(jobs)
    print(f"job {args.name} hosts: {job.get('hosts') or 'local (embedded default)'}")
    return 0


def _list(args: argparse.Namespace) -> int:
    jobs = load_jobs()
    if args.json:
        print(json.dumps(jobs, indent=1, sort_keys=True))
    elif not jobs:
        print("no jobs yet; `ceranubis job new NAME TARGET` saves one")
    for name in sorted(jobs) if not args.json else ():
        print(f"{printable(name)}  {_describe(jobs[name])}")
    return 0


def _show(args: argparse.Namespace) -> int:
    job = get_job(args.name)
    if args.json:
        print(json.dumps(job, indent=1, sort_keys=True))
        return 0
    for key in JOB_KEYS:
        if key in job:
            print(f"{key:<10} {printable(str(job[key]))}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    jobs = load_jobs()
    get_job(args.name)
    del jobs[args.name]
    save_jobs(jobs)
    print(f"removed job {args.name} (its projects stay in the store)")
    return 0


def _describe(job: dict[str, Any]) -> str:
    parts = [str(job.get("target", "?")), f"hosts {job.get('hosts') or 'local'}"]
    parts += [f"{key} {job[key]}" for key in JOB_KEYS[2:] if key in job]
    return printable(", ".join(parts))
