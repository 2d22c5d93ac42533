"""The ``ceranubis`` command.

Each subcommand lives in the module that owns its concept and registers itself through
an ``add_commands(subparsers)`` function listed in ``_COMMAND_MODULES``.

Manners, for every command: a mistake is one line on stderr and exit status 2 (``-v``
adds the traceback); ``-v`` also logs each step of reaching a host (SSH connection,
bundle, node start); a reader that closes the pipe early (``| head``) ends the command
quietly; Ctrl-C ends it with status 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn

from ..errors import CeranubisError
from .output import BROKEN_PIPE_STATUS, add_verbose, silence_stdout

# Modules that contribute subcommands (each has ``add_commands(subparsers)``).
_COMMAND_MODULES = ["run", "hosts", "demo", "kernel", "nodes", "nodes_remote", "projects", "strays"]
# An example for the commands whose module gives none (shown at the end of --help).
_EXAMPLES = {
    "demo": "ceranubis demo --tasks 16 --hosts local,gpu1",
    "install-kernel": "ceranubis install-kernel --user",
    "projects": "ceranubis projects --all --json",
    "show": "ceranubis show sweep --version 2",
    "results": "ceranubis results sweep -o sweep.csv",
    "resume": "ceranubis resume sweep --hosts @gpu",
    "rm": "ceranubis rm sweep --version 1",
    "cancel": "ceranubis cancel sweep --store postgresql://db/ceranubis",
    "kill-strays": "ceranubis kill-strays --hosts @gpu --dry-run",
    "node": "ceranubis node --store postgresql://db/ceranubis --workers 8 --group gpu",
    "nodes": "ceranubis nodes --store postgresql://db/ceranubis --json",
}
# Exit status of a mistake in what the user gave (as argparse uses).
USAGE_STATUS = 2
# Exit status of an unexpected failure (a bug, or something the command does not know).
FAILURE_STATUS = 1


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line that points at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_STATUS, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = _Parser(
        prog="ceranubis",
        description="Spread Python work across the cores of many machines.",
        epilog="example: ceranubis run work.py:square --range 1000 -o squares.json",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step; tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"ceranubis_jupyter.cli.{name}")
        module.add_commands(subparsers)
    for name, command in subparsers.choices.items():
        add_verbose(command)  # also after the subcommand: `ceranubis run ... -v`
        if command.epilog is None and name in _EXAMPLES:
            command.epilog = f"example: {_EXAMPLES[name]}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        _log_to_stderr()
    else:  # asyncssh's notes on its own dependencies (DSA deprecated...) are not ours to show
        warnings.filterwarnings("ignore", module=r"asyncssh(\.|$)")
    try:
        status: int = args.handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        silence_stdout()
        return BROKEN_PIPE_STATUS
    except CeranubisError as error:
        return _failed(args, str(error), USAGE_STATUS)
    except Exception as error:  # one line for anything else too; -v shows where
        return _failed(args, f"{type(error).__name__}: {error}", FAILURE_STATUS)
    return status


def _failed(args: argparse.Namespace, message: str, status: int) -> int:
    if args.verbose:
        traceback.print_exc()
    command = " ".join(c for c in (args.command, getattr(args, "verb", None)) if c)
    line = " ".join(message.split("\n")[0].split()) or "failed"
    hint = "" if args.verbose else " (-v shows more)" if status == FAILURE_STATUS else ""
    print(f"ceranubis {command}: {line}{hint}", file=sys.stderr)
    return status


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("ceranubis", "asyncssh"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if name == "ceranubis" else logging.INFO)
