"""``wire.serialize.needs_dill``: the one rule for pickle or dill, as every encoder applies it."""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass

import pytest

from ceranubis_jupyter.projects import rows
from ceranubis_jupyter.wire import protocol as p
from ceranubis_jupyter.wire.serialize import (
    PICKLE_PROTOCOL,
    dumps,
    dumps_inband,
    loads,
    needs_dill,
)


@dataclass
class Point:
    x: int


@pytest.fixture
def point_of_main(monkeypatch: pytest.MonkeyPatch) -> type[Point]:
    """``Point`` as if the user's script or notebook defined it (plain pickle names it)."""
    monkeypatch.setattr(Point, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "Point", Point, raising=False)
    return Point


def test_every_encoder_takes_dill_exactly_when_the_pickle_names_main(
    point_of_main: type[Point],
) -> None:
    plain, of_main = (1, "a", b"xyz"), point_of_main(7)
    assert not needs_dill(pickle.dumps(plain, PICKLE_PROTOCOL))
    assert needs_dill(pickle.dumps(of_main, PICKLE_PROTOCOL))
    for value, codec in ((plain, p.PICKLE), (of_main, p.DILL)):
        assert dumps(value)[0] == codec
        assert dumps_inband(value)[0] == codec
        assert rows.encode(value)[0] == codec
        back = rows.decode(rows.encode(value))  # by value: dill may rebuild the class
        assert back == value or (type(back).__name__, back.x) == ("Point", 7)
    stored = rows.encode_many([plain, of_main, plain])
    assert [blob[0] for blob in stored] == [p.PICKLE, p.DILL, p.PICKLE]
    assert rows.encode_many([plain, plain]) == [rows.encode(plain)] * 2
    codec, payload, buffers = dumps(of_main)
    back = loads(codec, payload, tuple(b.raw() for b in buffers))
    assert (type(back).__name__, back.x) == ("Point", 7)
