"""Turning functions, arguments, results and exceptions into bytes and back.

- Functions go through dill (``recurse=True``), so functions, lambdas, closures and classes
  defined in ``__main__`` or a notebook travel by value. The client sends each once per node.
- Arguments and results use the standard pickler (fast: ~0.6 µs for a small tuple) and fall
  back to dill only when they must (~16 µs): when pickle fails or the pickle refers to
  ``__main__``, which the receiving process does not have (:func:`needs_dill`, the one
  place that rule is written; the project store's encoders use it too).
- Protocol 5: bytes-like and numpy buffers are returned out-of-band, never copied into the
  payload.
- An exception raised by a task travels as :class:`RemoteException`: the original exception
  if it pickles, plus its traceback frames so the client can show the user's own lines.

Used on both sides; the node imports it on bare hosts: stdlib + dill only.
"""

from __future__ import annotations

import linecache
import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dill

from .protocol import DILL, PICKLE, Buffer

PICKLE_PROTOCOL = 5
_MAIN_MARKER = b"__main__"  # in a pickle: refers to the user's own module
# A pickled result bigger than this is not scanned for ``__main__`` (big ones are data).
SCAN_LIMIT = 1 << 20
# A ``bytes`` argument or result from this size on travels out-of-band (pickle would copy
# it into the payload); below it the copy is cheaper than a separate buffer.
OUT_OF_BAND_BYTES = 1 << 16


class FutureInArguments(TypeError):
    """An executor's future was pickled outside of ``submit``/``map`` (where the executor
    collects it as an input): raised through :func:`dumps` at once, with no dill retry."""


def needs_dill(pickled: bytes) -> bool:
    """Whether a plain pickle will not do and dill must make the payload instead.

    The one rule for arguments, results and stored values: a pickle that names ``__main__``
    refers to a function or class of the user's script or notebook, which the process that
    loads it does not have; dill ships those by value.
    """
    return _MAIN_MARKER in pickled


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Serialize a callable by value where needed (``__main__``), by reference otherwise."""
    data: bytes = dill.dumps(fn, protocol=PICKLE_PROTOCOL, recurse=True)
    return data


def loads_function(blob: Buffer) -> Callable[..., Any]:
    """Inverse of :func:`dumps_function`."""
    fn: Callable[..., Any] = dill.loads(blob)
    return fn


def dumps(obj: Any) -> tuple[int, bytes, list[pickle.PickleBuffer]]:
    """Serialize ``obj`` as ``(codec, payload, out_of_band_buffers)``.

    Raises:
        Exception: whatever pickling raised when neither pickle nor dill can do it.
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        lifted = _lift_bytes(obj)
        payload = pickle.dumps(lifted, PICKLE_PROTOCOL, buffer_callback=buffers.append)
        if len(payload) > SCAN_LIMIT or not needs_dill(payload):
            return PICKLE, payload, buffers
    except FutureInArguments:
        raise
    except Exception:
        pass
    buffers = []
    payload = dill.dumps(
        obj, protocol=PICKLE_PROTOCOL, buffer_callback=buffers.append, recurse=True
    )
    return DILL, payload, buffers


class _OutOfBandBytes:
    """Pickles a ``bytes`` object as ``bytes(<out-of-band buffer>)``: no copy in the payload."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return bytes, (pickle.PickleBuffer(self.data),)


def _lift_bytes(obj: Any) -> Any:
    """Wrap big ``bytes`` where a task's data usually is: the object itself (a result) or
    the positional arguments of a call ``(args, kwargs)``. Cheap: this is the hot path."""
    kind = type(obj)
    if kind is bytes:
        return _OutOfBandBytes(obj) if len(obj) >= OUT_OF_BAND_BYTES else obj
    if kind is tuple and len(obj) == 2 and type(obj[0]) is tuple:
        for arg in obj[0]:
            if type(arg) is bytes and len(arg) >= OUT_OF_BAND_BYTES:
                return tuple(_lift_bytes(a) for a in obj[0]), obj[1]
    return obj


def dumps_inband(obj: Any) -> tuple[int, bytes]:
    """Like :func:`dumps` with every buffer inside the payload."""
    try:
        payload = pickle.dumps(obj, PICKLE_PROTOCOL)
        if not needs_dill(payload):
            return PICKLE, payload
    except Exception:
        pass
    return DILL, dill.dumps(obj, protocol=PICKLE_PROTOCOL, recurse=True)


def loads(codec: int, payload: Buffer, buffers: tuple[Buffer, ...] = ()) -> Any:
    """Inverse of :func:`dumps`."""
    if codec == DILL:
        return dill.loads(payload, buffers=buffers)
    return pickle.loads(payload, buffers=buffers)


def describe_failure(error: BaseException) -> str:
    """A one-line reason for a (un)pickling failure."""
    return f"{type(error).__name__}: {error}"


Frame = tuple[str, int, str]


@dataclass
class RemoteException:
    """An exception raised by user code on a node, ready to travel back."""

    exception: BaseException | None
    type_name: str
    message: str
    frames: list[Frame]
    exception_text: str

    @classmethod
    def capture(cls, error: BaseException, skip: int = 1) -> RemoteException:
        """Capture ``error`` and its traceback, dropping our own ``skip`` outer frames."""
        summary = traceback.extract_tb(error.__traceback__)[skip:]
        frames = [(f.filename, f.lineno or 0, f.name) for f in summary]
        text = "".join(traceback.format_exception_only(type(error), error)).rstrip()
        return cls(error, _qualified_name(type(error)), str(error), frames, text)

    def to_bytes(self) -> tuple[int, bytes]:
        """Serialize, leaving out the exception object itself if it will not pickle."""
        try:
            return dumps_inband(self)
        except Exception:
            self.exception = None
            return dumps_inband(self)

    def format(self, header: str) -> str:
        """The traceback text, with source lines looked up on this (the client's) side."""
        lines = [header, "Traceback (most recent call last):"]
        for filename, lineno, name in self.frames:
            lines.append(f'  File "{filename}", line {lineno}, in {name}')
            source = linecache.getline(filename, lineno).strip()
            if source:
                lines.append(f"    {source}")
        lines.append(self.exception_text)
        return "\n".join(lines)


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
