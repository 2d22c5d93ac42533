"""What tasks print, on this process's own stdout and stderr, as they print it.

Nodes stream a running task's printed lines (``OUTPUT`` results, at most
``node.output.OUTPUT_FLUSH_SECONDS`` late); the scheduler hands them here, and each line is
written to the client's ``sys.stdout`` or ``sys.stderr`` (the stream it was printed to),
after ``[host]``. That is for scripts and terminal IPython: in a Jupyter kernel the
progress widget shows the lines, and the kernel's streams belong to whichever cell runs,
so nothing is written there. A task's whole output stays in its result either way (the
widget's and the project store's).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from ..wire import protocol as p

log = logging.getLogger("ceranubis")


def echo_output(host: str, chunks: Sequence[p.Result]) -> None:
    """Write ``OUTPUT`` chunks from ``host`` to this process's stdout / stderr, prefixed."""
    if in_kernel():
        return
    written = set()
    try:
        for chunk in chunks:
            stream = sys.stderr if chunk.payload == p.STDERR else sys.stdout
            stream.write(prefixed(host, chunk.output))
            written.add(stream)
        for stream in written:  # once per batch: a chatty task's lines come by the hundred
            stream.flush()
    except (OSError, ValueError):  # closed or broken: the output is in the result
        log.debug("[host=%s] task output could not be echoed", host, exc_info=True)


def prefixed(host: str, text: str) -> str:
    """``text`` with ``[host] `` before each line, ending in a newline (``""`` stays)."""
    if not text:
        return ""
    lines = text.splitlines(keepends=True)
    joined = "".join(f"[{host}] {line}" for line in lines)
    return joined if joined.endswith("\n") else joined + "\n"


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (its stdout is the kernel's stream)."""
    return type(sys.stdout).__module__.startswith("ipykernel")
