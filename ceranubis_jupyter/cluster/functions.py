"""Functions' ids: each function is serialized and shipped once, without being kept alive.

A task names its function by id; the scheduler sends the function's bytes to each node
once, before the first task that needs it. Two lookups find a function's id:

- by the object, while it lives: a weak reference keyed by ``id(fn)`` (a dict lookup and
  an ``is`` check per submit, no pickling);
- by what it pickles to (a digest of its bytes), for what cannot be weakly referenced
  (builtins) or is made anew at each call (a bound method): same bytes, same id.

Neither keeps the function, its closure or its instance alive: a dropped function is
freed, as with the standard executors.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..wire.describe import unpicklable_function
from ..wire.serialize import dumps_function

# Bytes of a function's digest: 16 make a collision of two different functions as likely
# as a random 128-bit match; fewer would save nothing that matters.
DIGEST_SIZE = 16

Ship = Callable[[int, bytes], None]


class FunctionIds:
    """The id of each function an executor was given; ``ship`` gets each new one's bytes."""

    def __init__(self, ship: Ship) -> None:
        self._ship = ship
        self._ids = itertools.count(1)
        self._by_object: dict[int, tuple[weakref.ref[Any], int]] = {}
        self._by_digest: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def id_of(self, fn: Callable[..., Any]) -> int:
        """``fn``'s id; its bytes go to ``ship`` the first time they are seen.

        Raises:
            UnpicklableError: ``fn`` cannot be serialized.
        """
        known = self._by_object.get(id(fn))
        if known is not None and known[0]() is fn:
            return known[1]
        try:
            blob = dumps_function(fn)
        except Exception as error:
            raise unpicklable_function(fn, error) from error
        digest = hashlib.blake2b(blob, digest_size=DIGEST_SIZE).digest()
        with self._lock:
            fn_id = self._by_digest.get(digest)
            if fn_id is None:
                fn_id = next(self._ids)
                self._ship(fn_id, blob)
                self._by_digest[digest] = fn_id
            self._remember(fn, fn_id)
        return fn_id

    def _remember(self, fn: Callable[..., Any], fn_id: int) -> None:
        key = id(fn)
        try:
            ref = weakref.ref(fn, lambda dead: self._forget(key, dead))
        except TypeError:  # not weakly referable: found by its digest next time
            return
        self._by_object[key] = (ref, fn_id)

    def _forget(self, key: int, dead: weakref.ref[Any]) -> None:
        """``fn`` was freed: its id number may now name another object."""
        known = self._by_object.get(key)
        if known is not None and known[0] is dead:
            del self._by_object[key]
