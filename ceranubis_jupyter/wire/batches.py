"""Many stored arguments of one function as one task, each with an outcome of its own.

Queue mode's node daemon runs a project's tiny tasks this way (see
``ceranubis_jupyter.daemon.batches``): one frame, one result and one hand-off per batch
instead of per argument, while each argument still gets what a task of its own would:
its value in the store's form, or the exception it raised (type and remote traceback),
or why its arguments or result would not pickle, and what it printed.

A batch stops early once it has run for its time budget, or once its results reach its
byte budget (a quick function may return big values); the arguments it did not reach
come back as :data:`NOT_RUN` and the daemon submits them again. A crash of the worker,
a timeout or a cancel ends the whole batch as they end any task.

Shipped in the node bundle: stdlib, dill and ``wire`` only.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .messages import CUT_NOTE, OK, OUTPUT_LIMIT, RAISED, UNPICKLABLE
from .serialize import RemoteException, describe_failure, dumps_inband, loads

# The outcome of an argument the batch did not reach before its budget ran out.
NOT_RUN = -1
NOT_RUN_OUTCOME = (NOT_RUN, b"", None, 0.0, 0.0)

# One argument's outcome: (status, bytes, printed or None, started, finished). The bytes
# are the result as stored (codec byte, then the pickle) when OK, the remote exception
# the same way when RAISED, the reason as UTF-8 text when UNPICKLABLE; empty if NOT_RUN.
ItemOutcome = tuple[int, bytes, str | None, float, float]


class EachOutcome:
    """``fn`` over a batch of stored arguments, an outcome per argument.

    Called with ``(blobs, seconds, size)``: each blob is one argument tuple as the store
    keeps it (codec byte, then the pickle); the batch stops before its next argument once
    it has run ``seconds``, or its outcomes hold ``size`` bytes.
    """

    __slots__ = ("__weakref__", "fn")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, blobs: Sequence[bytes], seconds: float, size: int) -> list[ItemOutcome]:
        """Run ``fn`` on each argument tuple in order; their outcomes."""
        sink = io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = sink
        outcomes: list[ItemOutcome] = []
        stop_at, held = time.monotonic() + seconds, 0
        try:
            for blob in blobs:
                if outcomes and (held >= size or time.monotonic() > stop_at):
                    outcomes += [NOT_RUN_OUTCOME] * (len(blobs) - len(outcomes))
                    break
                outcome = _run_one(self.fn, blob, sink)
                held += len(outcome[1])
                outcomes.append(outcome)
        finally:
            sys.stdout, sys.stderr = saved
        return outcomes

    def __reduce__(self) -> tuple[Any, ...]:
        return EachOutcome, (self.fn,)


def _run_one(fn: Callable[..., Any], blob: bytes, sink: io.StringIO) -> ItemOutcome:
    started = time.time()
    try:
        args = loads(blob[0], memoryview(blob)[1:])
    except Exception as error:
        reason = f"the arguments could not be unpickled on the node: {describe_failure(error)}"
        return UNPICKLABLE, reason.encode(), None, started, time.time()
    try:
        value = fn(*args)
    except BaseException as error:  # as a task of its own: KeyboardInterrupt included
        codec, payload = RemoteException.capture(error, skip=1).to_bytes()
        return RAISED, bytes((codec,)) + payload, _printed(sink), started, time.time()
    try:
        codec, payload = dumps_inband(value)
    except Exception as error:
        reason = f"the result could not be pickled: {describe_failure(error)}"
        return UNPICKLABLE, reason.encode(), _printed(sink), started, time.time()
    return OK, bytes((codec,)) + payload, _printed(sink), started, time.time()


def _printed(sink: io.StringIO) -> str | None:
    """What the argument just run printed (``None``: nothing), and empty the sink."""
    if not sink.tell():
        return None
    text = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return text[:OUTPUT_LIMIT] + CUT_NOTE if len(text) >= OUTPUT_LIMIT else text


__all__ = ["NOT_RUN", "NOT_RUN_OUTCOME", "EachOutcome", "ItemOutcome"]
