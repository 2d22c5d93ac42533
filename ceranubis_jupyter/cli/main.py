"""The ``ceranubis`` command.

Each subcommand lives in the module that owns its concept and registers itself through
an ``add_commands(subparsers)`` function listed in ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .output import BROKEN_PIPE_STATUS, silence_stdout

# Modules that contribute subcommands (each has ``add_commands(subparsers)``).
# ``nodes_remote`` adds ``start``/``stop`` under ``nodes``, so it comes after it.
_COMMAND_MODULES = ["demo", "kernel", "nodes", "nodes_remote", "projects", "strays"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ceranubis", description="Spread Python work across the cores of many machines."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"ceranubis_jupyter.cli.{name}")
        module.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        silence_stdout()
        return BROKEN_PIPE_STATUS
    return status
