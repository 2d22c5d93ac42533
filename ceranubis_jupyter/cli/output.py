"""What the commands write: files replaced atomically, text safe for a terminal, and a
quiet end when the reader of a pipe goes away (``ceranubis results NAME | head``)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

# Mode of a file written by `ceranubis results -o`: results may be private data, and a
# user who wants to share them can still chmod the file.
OUTPUT_MODE = 0o600
# Exit status after the reader of stdout went away: 128 + SIGPIPE, what a shell reports
# for a tool that a closed pipe ended (as `yes | head` does).
BROKEN_PIPE_STATUS = 141

# C0 controls but tab and newline, DEL, and C1 controls: they steer a terminal (colours,
# cursor moves, window titles) instead of printing.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """Give a (sub)command the ``-v`` option (the main parser's default stays when unset)."""
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="log each step (SSH connections); tracebacks on errors",
    )  # fmt: skip


def printable(text: str) -> str:
    """``text`` with control characters (but newline and tab) shown as ``\\x1b`` escapes."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def write_atomically(path: Path, write: Callable[[TextIO], None]) -> None:
    """Write a file through ``write(file)``: all of it, or nothing (an existing file stays).

    The text goes to a temporary file in the same directory, is flushed to disk, and then
    renamed over ``path``; the file gets :data:`OUTPUT_MODE`.

    Raises:
        OSError: the directory is missing or not writable, ``path`` is a directory, the
            disk is full, ...
        Exception: what ``write`` raised.
    """
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, OUTPUT_MODE)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    # The rename is only durable once the directory itself is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def silence_stdout() -> None:
    """Point stdout at ``/dev/null`` after its reader went away.

    Output still buffered would otherwise fail again when the interpreter flushes it at
    exit, with an "Exception ignored ... BrokenPipeError" message.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
