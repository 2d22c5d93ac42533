"""Where ``ceranubis run`` takes its arguments: an integer range or a file of tasks.

- ``--range [START] STOP [STEP]``: ``fn(i)`` for each ``i`` of ``range(START, STOP, STEP)``.
- ``--args FILE``, one task per item:

  - ``.json``: a JSON list; ``.jsonl``: one JSON value per line (blank lines skipped).
    An item that is a list is the positional arguments (``[2, "x"]`` → ``fn(2, "x")``), an
    object is the keyword arguments (``{"a": 2}`` → ``fn(a=2)``), anything else is the one
    argument (``7`` → ``fn(7)``). Lists and objects are not mixed in one file.
  - ``.csv``: a header row names the keyword arguments; each further row is one task.
    A cell that reads as an integer becomes an ``int``, one that reads as a decimal number
    a ``float`` (``1e3``, ``2.5``, ``nan``), every other cell stays a ``str`` (an empty
    cell is ``""``). Quote nothing to keep a number as text: use JSON for that.

Keyword tasks are stored as ``({...},)`` and run through a wrapper that calls the
function with ``**kwargs`` (``<function>_kwargs``, see :mod:`.target`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# Suffixes ``--args`` reads, and how.
ARG_FORMATS = (".json", ".jsonl", ".csv")
# Characters of a bad line quoted in an error message.
QUOTED_CHARS = 60


@dataclass(frozen=True)
class Tasks:
    """The argument tuples of a run; ``keywords``: each is ``({name: value},)``."""

    args: list[tuple[Any, ...]]
    keywords: bool = False


def range_tasks(bounds: Sequence[int]) -> Tasks:
    """``[(i,) for i in range(*bounds)]``.

    Raises:
        ConfigError: not 1 to 3 bounds, a zero step, or an empty range.
    """
    if not 1 <= len(bounds) <= 3:
        raise ConfigError("bad range: give STOP, START STOP, or START STOP STEP")
    if len(bounds) == 3 and bounds[2] == 0:
        raise ConfigError("bad range: STEP must not be 0")
    numbers = range(*bounds)
    if not numbers:
        shown = ", ".join(map(str, bounds))
        raise ConfigError(f"bad range: range({shown}) is empty; nothing to run")
    return Tasks([(i,) for i in numbers])


def file_tasks(path: Path) -> Tasks:
    """The tasks of a ``.json``, ``.jsonl`` or ``.csv`` file (see the module doc).

    Raises:
        ConfigError: an unknown suffix, a file that cannot be read, is malformed, or
            holds no task (the message names the file and line).
    """
    suffix = path.suffix.lower()
    if suffix not in ARG_FORMATS:
        raise ConfigError(
            f"--args {path}: unknown format {suffix or '(no suffix)'!r}; use "
            + ", ".join(ARG_FORMATS)
        )
    try:
        with path.open(encoding="utf-8", newline="") as file:
            items = list(_csv_items(path, file) if suffix == ".csv" else _json_items(path, file))
    except OSError as error:
        raise ConfigError(f"cannot read --args {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"--args {path} is not UTF-8 text: {error.reason}") from None
    if not items:
        raise ConfigError(f"--args {path} holds no tasks; give at least one")
    return _as_tasks(path, items)


def _json_items(path: Path, file: Any) -> Iterator[Any]:
    if path.suffix.lower() == ".json":
        try:
            data = json.load(file)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--args {path} is not valid JSON: {_where(error)}") from None
        if not isinstance(data, list):
            raise ConfigError(f"--args {path} must hold a JSON list of tasks, not a {_kind(data)}")
        yield from data
        return
    for number, line in enumerate(file, 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(
                    f"--args {path} line {number} is not valid JSON ({error.msg}): "
                    f"{line.strip()[:QUOTED_CHARS]!r}"
                ) from None


def _csv_items(path: Path, file: Any) -> Iterator[dict[str, Any]]:
    reader = csv.reader(file)
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [name.strip() for name in header]
        if not all(names) or len(set(names)) != len(names):
            raise ConfigError(
                f"--args {path}: the header row must name each column once: {header!r}"
            )
        for row in reader:
            if not row:
                continue
            if len(row) != len(names):
                raise ConfigError(
                    f"--args {path} line {reader.line_num} has {len(row)} cells, the header "
                    f"{len(names)}"
                )
            yield {name: _typed(cell) for name, cell in zip(names, row, strict=True)}
    except csv.Error as error:
        raise ConfigError(f"--args {path} line {reader.line_num}: {error}") from None


def _typed(cell: str) -> Any:
    """A CSV cell as an ``int``, else a ``float``, else the text."""
    text = cell.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return cell


def _as_tasks(path: Path, items: list[Any]) -> Tasks:
    objects = sum(isinstance(item, dict) for item in items)
    if objects and objects != len(items):
        raise ConfigError(
            f"--args {path} mixes objects (keyword arguments) with other tasks; "
            "use one kind per file"
        )
    if objects:
        return Tasks([(item,) for item in items], keywords=True)
    return Tasks([tuple(item) if isinstance(item, list) else (item,) for item in items])


def _where(error: json.JSONDecodeError) -> str:
    return f"{error.msg} at line {error.lineno} column {error.colno}"


def _kind(value: Any) -> str:
    return {dict: "object", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)
