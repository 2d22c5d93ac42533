"""Rows for PostgreSQL's binary ``COPY`` and binary array parameters, built in one pass
(no per-value driver call).

psycopg's ``write_row`` adapts each value of each row in Python, ~3.5 µs a row of a
project's arguments; packing the fixed-width fields with one :class:`struct.Struct` per
row and joining the whole stream costs a fraction of that, and the server parses binary
rows without decoding text (a ``bytea``'s hex, a float's digits).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

from .store import DONE_VALUES

# The stream's signature, flags and header extension length; and its end.
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER = b"\xff\xff"
# (project BIGINT, position INTEGER, args BYTEA): field count, then length and value
# of each fixed-width field, then the length of the args that follow.
_ARGUMENT = struct.Struct("!hiqiii")
# The same for a store made when ``project`` was an INTEGER column (binary COPY takes each
# column's own width).
_ARGUMENT_NARROW = struct.Struct("!hiiiii")
# Rows per piece of the stream: bigger pieces cost fewer writes, smaller ones keep less
# in memory at once (a million arguments are not joined into one buffer).
ROWS_PER_PIECE = 8192


def argument_rows(
    project_id: int, blobs: Sequence[bytes], project_bytes: int = 8
) -> Iterator[bytes]:
    """The binary ``COPY arguments (project, position, args)`` stream of a project's
    argument blobs in position order, in pieces; ``project_bytes``: the width of the
    ``project`` column (8, or 4 in a store made before it was a BIGINT)."""
    pack = (_ARGUMENT if project_bytes == 8 else _ARGUMENT_NARROW).pack
    parts = [SIGNATURE]
    for position, blob in enumerate(blobs):
        parts.append(pack(3, project_bytes, project_id, 4, position, len(blob)))
        parts.append(blob)
        if len(parts) >= 2 * ROWS_PER_PIECE:
            yield b"".join(parts)
            parts = []
    parts.append(TRAILER)
    yield b"".join(parts)


# One-dimensional arrays in PostgreSQL's binary format (what ``array_recv`` reads): the
# number of dimensions, whether any element is NULL, the element type's OID, the length
# and the lower bound; then each element as its length and bytes (-1: NULL).
_ARRAY_HEAD = struct.Struct("!iiiii")
_LENGTH = struct.Struct("!i")
_NULL = b"\xff\xff\xff\xff"


class ArrayParameter(bytes):
    """An array query parameter already in PostgreSQL's binary format: sent as it is
    (the store registers a dumper per subclass), not adapted element by element."""

    ARRAY_OID = 0


class BigintArray(ArrayParameter):
    """``bigint[]``."""

    ARRAY_OID = 1016


class ByteaArray(ArrayParameter):
    """``bytea[]``."""

    ARRAY_OID = 1001


class TextArray(ArrayParameter):
    """``text[]``."""

    ARRAY_OID = 1009


class IntegerArray(ArrayParameter):
    """``integer[]``."""

    ARRAY_OID = 1007


class DoubleArray(ArrayParameter):
    """``double precision[]``."""

    ARRAY_OID = 1022


ARRAY_PARAMETERS = (BigintArray, ByteaArray, TextArray, IntegerArray, DoubleArray)
_BIGINT, _BYTEA, _TEXT, _INTEGER, _DOUBLE = 20, 17, 25, 23, 701
# Bytes of results one statement carries at most: a query parameter (and the server's copy
# of it) must stay far below PostgreSQL's 1 GB limit per value; a flush holding more is
# written by several statements in its transaction.
STATEMENT_BYTES = 64 << 20
_BIGINT_ITEM = struct.Struct("!iq")
_INTEGER_ITEM = struct.Struct("!ii")
_DOUBLE_ITEM = struct.Struct("!id")


def outcome_slices(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """The flat run of outcomes (``DONE_VALUES`` per outcome) in consecutive slices whose
    results hold at most :data:`STATEMENT_BYTES` together (one outcome at least)."""
    if sum(map(len, values[1::DONE_VALUES])) <= STATEMENT_BYTES:
        yield values  # the usual flush: one statement, no walk in Python
        return
    start = size = 0
    for at in range(0, len(values), DONE_VALUES):
        grown = size + len(values[at + 1])
        if grown > STATEMENT_BYTES and at > start:
            yield values[start:at]
            start, grown = at, len(values[at + 1])
        size = grown
    if start < len(values):
        yield values[start:]


def outcome_arrays(values: Sequence[Any]) -> tuple[ArrayParameter, ...]:
    """The columns of finished outcomes given as one flat run of ``id, result, host,
    attempts, started, finished`` per outcome, as six binary array parameters: one
    ``UPDATE ... FROM unnest(...)`` then writes them all, without a staging table."""
    step = DONE_VALUES
    ids, results, hosts = values[0::step], values[1::step], values[2::step]
    attempts, started, finished = values[3::step], values[4::step], values[5::step]
    bigint, integer = _BIGINT_ITEM.pack, _INTEGER_ITEM.pack
    return (
        BigintArray(_array(_BIGINT, len(ids), [bigint(8, v) for v in ids])),
        ByteaArray(_array(_BYTEA, len(results), _blobs(results))),
        TextArray(_array(_TEXT, len(hosts), _texts(hosts))),
        IntegerArray(_array(_INTEGER, len(attempts), [integer(4, v) for v in attempts])),
        DoubleArray(_array(_DOUBLE, len(started), _doubles(started), None in started)),
        DoubleArray(_array(_DOUBLE, len(finished), _doubles(finished), None in finished)),
    )


def _array(element_oid: int, count: int, parts: list[bytes], has_nulls: bool = False) -> bytes:
    return b"".join([_ARRAY_HEAD.pack(1, int(has_nulls), element_oid, count, 1), *parts])


def _blobs(blobs: Sequence[bytes]) -> list[bytes]:
    """Each blob's length, then the blob itself (not copied before the final join)."""
    length = _LENGTH.pack
    parts: list[bytes] = []
    for blob in blobs:
        parts += (length(len(blob)), blob)
    return parts


def _texts(texts: Sequence[str]) -> list[bytes]:
    encoded: dict[str, bytes] = {}
    return [encoded.get(text) or encoded.setdefault(text, _text(text)) for text in texts]


def _doubles(values: Sequence[float | None]) -> list[bytes]:
    double = _DOUBLE_ITEM.pack
    return [_NULL if value is None else double(8, value) for value in values]


def _text(value: str) -> bytes:
    data = value.encode()
    return _LENGTH.pack(len(data)) + data


__all__ = [
    "ARRAY_PARAMETERS",
    "STATEMENT_BYTES",
    "ArrayParameter",
    "argument_rows",
    "outcome_arrays",
    "outcome_slices",
]
