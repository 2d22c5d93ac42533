"""Reading the magics' lines: ``FN over ARGS --options`` and ``COMMAND [NAME] --options``.

Everything here is checked before the cell's code runs or a node starts: the shape of the
line, each option's value (finite, in range, at least one host), and the variable the
project will be bound to. Misuse raises :class:`~IPython.core.error.UsageError` with the
usage line.
"""

from __future__ import annotations

import argparse
import builtins
import io
import keyword
import math
import re
import shlex
import tokenize
from typing import NoReturn

from IPython.core.error import UsageError

from ..cluster.hosts import parse_host_list
from ..errors import ConfigError

CELL_USAGE = (
    "%%ceranubis FN over ARGS [--hosts H1,H2,...] [--name NAME] [--store URL] "
    "[--chunksize N] [--workers N] [--timeout S] [--no-wait] [--out VAR] [--replace] "
    "[--no-reuse] [--queue [--priority N] [--group NAME]]"
)
LINE_USAGE = (
    "%ceranubis hosts [--hosts H1,H2,...] [--workers N] | projects [--all] [--store URL] | "
    "status NAME [--version N] | results NAME [--version N] | cancel NAME | "
    "resume NAME [--hosts ...] [--no-wait] | rm NAME [--version N]"
)
DEFAULT_VAR = "_ceranubis"
# Workers per host the magics accept: far above any machine's cores, yet a typo such as
# 100000 is refused instead of forking processes until the host gives out.
MAX_WORKERS = 1024

_HEAD = re.compile(r"^\s*(?P<fn>[A-Za-z_][\w.]*)\s+over\s+(?P<rest>\S.*)$", re.S)
_OPTION = re.compile(r"--[a-z][a-z-]*(?=\s|=|$)")
_OPENERS, _CLOSERS = "([{", ")]}"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _cell_parser() -> _Parser:
    parser = _Parser(prog="%%ceranubis", add_help=False)
    parser.add_argument("--hosts", default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--store", default=None)
    parser.add_argument("--chunksize", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--replace", action="store_true")
    parser.add_argument("--no-reuse", action="store_true")
    parser.add_argument("--queue", action="store_true")
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--group", default=None)
    return parser


def _line_parser() -> _Parser:
    parser = _Parser(prog="%ceranubis", add_help=False)
    parser.add_argument(
        "command",
        choices=["hosts", "projects", "status", "results", "cancel", "resume", "rm"],
    )
    parser.add_argument("name", nargs="?", default=None)
    parser.add_argument("--hosts", default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--store", default=None)
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--version", type=int, default=None)
    return parser


def _parse_options(parser: _Parser, text: str, usage: str) -> argparse.Namespace:
    try:
        return parser.parse_args(shlex.split(text))
    except ValueError as error:  # shlex: "No closing quotation" and the like
        raise UsageError(f"{error} in the options\nusage: {usage}") from None
    except UsageError as error:
        raise UsageError(f"{error}\nusage: {usage}") from None


def parse_cell_line(line: str) -> tuple[str, str, argparse.Namespace]:
    """Split ``FN over ARGS --options`` into ``(fn, args_expression, options)``.

    ARGS ends at the first ``--option`` outside a string literal and outside brackets.

    Raises:
        UsageError: the line does not have that shape or an option is bad.
    """
    match = _HEAD.match(line)
    if match is None:
        raise UsageError(f"usage: {CELL_USAGE}")
    expression, options = split_expression(match["rest"])
    if not expression.strip():
        raise UsageError(f"ARGS is missing\nusage: {CELL_USAGE}")
    parsed = _parse_options(_cell_parser(), options, CELL_USAGE)
    _check_cell_options(parsed)
    return match["fn"], expression.strip(), parsed


def parse_line(line: str) -> argparse.Namespace:
    """The line magic's ``COMMAND [NAME] --options``, checked.

    Raises:
        UsageError: a bad command or option.
    """
    options = _parse_options(_line_parser(), line, LINE_USAGE)
    _check_workers(options.workers, LINE_USAGE)
    split_hosts(options.hosts, LINE_USAGE)
    return options


def split_expression(rest: str) -> tuple[str, str]:
    """``"ARGS --options"`` → ``("ARGS ", "--options")``, reading ARGS as Python tokens.

    An option starts with ``--`` after white space, at bracket depth 0: ``--`` inside a
    string literal or brackets belongs to ARGS.

    Raises:
        UsageError: ARGS has an unclosed quote or bracket.
    """
    depth = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(rest).readline):
            column = token.start[1]
            if token.type == tokenize.ERRORTOKEN and token.string in ("'", '"'):
                raise tokenize.TokenError("unclosed quote", token.start)
            if token.type != tokenize.OP:
                continue
            depth += (token.string in _OPENERS) - (token.string in _CLOSERS)
            starts_option = column > 0 and rest[column - 1].isspace()
            if depth == 0 and starts_option and _OPTION.match(rest, column):
                return rest[:column], rest[column:]
    except (tokenize.TokenError, SyntaxError):
        raise UsageError(
            f"ARGS has an unclosed quote or bracket: {rest}\nusage: {CELL_USAGE}"
        ) from None
    return rest, ""


def _check_cell_options(options: argparse.Namespace) -> None:
    if options.chunksize < 1:
        raise UsageError(f"--chunksize must be >= 1\nusage: {CELL_USAGE}")
    _check_workers(options.workers, CELL_USAGE)
    timeout = options.timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout must be a finite number of seconds > 0\nusage: {CELL_USAGE}")
    split_hosts(options.hosts, CELL_USAGE)
    if options.out is not None:
        check_variable(options.out, "--out")
    else:
        check_variable(variable_name(options.name), "--name", hint="; give --out VAR")


def _check_workers(workers: int | None, usage: str) -> None:
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}\nusage: {usage}")


def split_hosts(text: str | None, usage: str = CELL_USAGE) -> list[str] | None:
    """``"a,b, c"`` → ``["a", "b", "c"]``; ``None`` or ``local`` → ``None`` (embedded default).

    Raises:
        UsageError: no host in ``text`` (``""``, ``","``) or a bad host spec.
    """
    if text is None:
        return None
    try:
        parse_host_list(text)
    except ConfigError as error:
        raise UsageError(f"{error}\nusage: {usage}") from None
    hosts = [host.strip() for host in text.split(",") if host.strip()]
    return None if hosts == ["local"] else hosts


def variable_name(project_name: str | None) -> str:
    """The variable a project is bound to: its sanitized name, or ``_ceranubis``."""
    if not project_name:
        return DEFAULT_VAR
    name = re.sub(r"\W", "_", project_name)
    if name[0].isdigit():
        name = "_" + name
    return name + "_" if keyword.iskeyword(name) else name


def check_variable(variable: str, option: str, hint: str = "") -> None:
    """Refuse to bind a project to a name that would break the user's namespace.

    Raises:
        UsageError: not an identifier, a keyword, a dunder name or a builtin's name.
    """
    if not variable.isidentifier() or keyword.iskeyword(variable):
        problem = "is not a Python variable name"
    elif variable.startswith("__") and variable.endswith("__"):
        problem = "is a special (dunder) name Python itself uses"
    elif hasattr(builtins, variable):
        problem = "would hide the builtin of that name"
    else:
        return
    raise UsageError(f"{option}: {variable!r} {problem}{hint}\nusage: {CELL_USAGE}")
