"""``ceranubis run -o FILE``: results streamed to a file as they arrive, the file whole or
not at all.

The results go, in argument order, to a temporary file next to ``FILE`` (created before
anything runs, so an unwritable place fails at once); when the run ends it is flushed to
disk and renamed over ``FILE``. On an error or Ctrl-C the temporary file is removed and
``FILE`` is left as it was: nothing half-written.

Formats, by the suffix (each row is one finished argument; failed ones are not written,
``ceranubis show NAME`` lists them):

- ``.json``: ``[{"args": [1, 2], "result": ...}, ...]`` (``"kwargs": {...}`` for keyword
  tasks), as ``ceranubis results`` writes;
- ``.jsonl``: the same objects, one per line;
- ``.csv``: a header (``arg0, arg1, ..., result``, or the keyword names then ``result``),
  one row per result; a value that is not a number or text is written as JSON.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..projects.rows import decode
from ..projects.store import Store
from .output import OUTPUT_MODE
from .target import KEYWORDS_SUFFIX

# Suffixes ``-o`` writes.
OUTPUT_FORMATS = (".json", ".jsonl", ".csv")
# Bytes buffered before the temporary file is written to: fewer system calls for many
# tiny results, and at most this much held in memory.
WRITE_BUFFER = 1 << 20
# Arguments read from the store at once while following a run: bigger batches mean
# fewer queries, smaller ones less re-read when the next one is still open.
FOLLOW_BATCH = 10_000
# States of an argument whose outcome is still to come.
_OPEN = frozenset({"pending", "running"})


class ResultSink:
    """Results of a run, streamed to a temporary file then renamed over ``path``.

    Args:
        path: the file to write; its suffix picks the format.
        columns: for CSV, the argument columns: positional width, or keyword names.

    Raises:
        ConfigError: an unknown suffix, or the temporary file cannot be made there.
    """

    def __init__(self, path: Path, columns: int | Sequence[str]) -> None:
        self.path = path
        self.kind = path.suffix.lower()
        if path.is_dir():
            raise ConfigError(f"cannot write {path}: Is a directory")
        if self.kind not in OUTPUT_FORMATS:
            raise ConfigError(
                f"-o {path}: unknown format {self.kind or '(no suffix)'!r}; use "
                + ", ".join(OUTPUT_FORMATS)
            )
        self.keywords = not isinstance(columns, int)
        self._key = "kwargs" if self.keywords else "args"
        self._width = columns if isinstance(columns, int) else 0
        self._names = [] if isinstance(columns, int) else list(columns)
        self._encode = json.JSONEncoder(default=repr).encode  # made once: per row is hot
        self.count = 0
        self._temporary = self._create()
        self._file = open(  # noqa: SIM115 - open across calls until commit or discard
            self._temporary, "w", encoding="utf-8", newline="", buffering=WRITE_BUFFER
        )
        self._csv = csv.writer(self._file) if self.kind == ".csv" else None
        self._guarded(self._begin, columns)

    def _create(self) -> str:
        try:
            fd, temporary = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
        except OSError as error:
            raise ConfigError(f"cannot write {self.path}: {error.strerror or error}") from None
        os.fchmod(fd, OUTPUT_MODE)
        os.close(fd)
        return temporary

    def _begin(self, columns: int | Sequence[str]) -> None:
        if self._csv is not None:
            names = (
                list(columns)
                if not isinstance(columns, int)
                else [f"arg{i}" for i in range(columns)]
            )
            self._csv.writerow([*names, "result"])
        elif self.kind == ".json":
            self._file.write("[")

    def write(self, args: tuple[Any, ...], result: Any) -> None:
        """Add one finished argument's result."""
        self._guarded(self._write, args, result)

    def _write(self, args: tuple[Any, ...], result: Any) -> None:
        if self._csv is not None:
            if self.keywords:  # by name: a task may leave out some, or order them otherwise
                values = [args[0].get(name, "") for name in self._names]
            else:  # shorter tuples: empty cells
                values = list(args) + [""] * (self._width - len(args))
            self._csv.writerow([csv_cell(v) for v in values] + [csv_cell(result)])
        else:
            if self.keywords:
                shown = self._encode(args[0])
            else:
                shown = "[" + ", ".join(map(self._json, args)) + "]"
            text = f'{{"{self._key}": {shown}, "result": {self._json(result)}}}'
            if self.kind == ".json":
                self._file.write(",\n" if self.count else "\n")
            else:
                text += "\n"
            self._file.write(text)
        self.count += 1

    def _json(self, value: Any) -> str:
        """``value`` as JSON: ints and strings directly (the common case, ~5x faster than
        the encoder's per-call set-up), anything else through the encoder."""
        kind = type(value)
        if kind is int:
            return int.__repr__(value)  # ValueError past int's digit limit, as json's
        if kind is str:
            return encode_basestring_ascii(value)
        return self._encode(value)

    def commit(self) -> None:
        """Finish the file, flush it to disk and rename it over ``path``."""
        self._guarded(self._commit)

    def _commit(self) -> None:
        if self.kind == ".json":
            self._file.write("\n]\n" if self.count else "]\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temporary, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)  # the rename is durable once the
        try:  # directory is on disk too
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Remove the temporary file; ``path`` stays as it was."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temporary)

    def _guarded(self, step: Any, *args: Any) -> None:
        """Run ``step``; a failure (disk full, a value JSON cannot write) discards the
        file and is one :class:`ConfigError` naming it."""
        try:
            step(*args)
        except OSError as error:
            self.discard()
            raise ConfigError(f"cannot write {self.path}: {error.strerror or error}") from None
        except ValueError as error:
            self.discard()
            raise ConfigError(f"cannot write {self.path}: {error}") from None


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: plain scalars as they are, others as JSON (else repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


class Follower:
    """Follows a project's arguments in order and hands each finished result to a sink.

    Args:
        store: the project's store; ``project_id``: its id.
        sink: where results go.
    """

    def __init__(self, store: Store, project_id: int, sink: ResultSink) -> None:
        self.store = store
        self.project_id = project_id
        self.sink = sink
        self._next_id = 0

    def drain(self) -> bool:
        """Write every result from the last one written up to the first argument still
        open; ``True`` when no argument is left open."""
        batch = 1  # first a peek: while the next argument is open, a poll reads one row
        while True:
            rows = self.store.arguments_from(self.project_id, self._next_id, batch)
            for row in rows:
                if row.state in _OPEN:
                    return False
                if row.state == "done" and row.result is not None:
                    self.sink.write(decode(row.args), decode(row.result))
                self._next_id = row.id + 1
            if len(rows) < batch:
                return True
            batch = FOLLOW_BATCH


def columns_of(args: Sequence[tuple[Any, ...]], keywords: bool) -> int | list[str]:
    """CSV columns of the arguments: the widest tuple, or every keyword in first-seen order."""
    if not keywords:
        return max((len(a) for a in args), default=0)
    names: dict[str, None] = {}
    for (kwargs,) in args:
        names.update(dict.fromkeys(kwargs))
    return list(names)


def write_results_file(store: Store, project_id: int, target: str, path: Path) -> int:
    """Write a stored project's results to ``path`` as ``ceranubis run -o`` does (after
    ``ceranubis resume -o``); returns how many were written."""
    args = [decode(blob) for blob in store.argument_blobs(project_id)]
    keywords = target.endswith(KEYWORDS_SUFFIX) and all(
        len(a) == 1 and isinstance(a[0], dict) for a in args
    )
    sink = ResultSink(path, columns_of(args, keywords))
    try:
        Follower(store, project_id, sink).drain()
        sink.commit()
    except BaseException:
        sink.discard()
        raise
    return sink.count
