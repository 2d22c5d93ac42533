"""The SSH peer of benchmarks/README.md: execnet over ssh with a minimal dill executor.

Each of ``workers`` gateways is one remote Python (one core) reached with the OpenSSH
client through the bench's alias; it runs a loop that takes ``(id, key, function blob or
None, dill'd list of argument tuples)`` and answers ``(id, ok, dill'd list of results or
error text)``. Tasks go to the gateway with the fewest outstanding ones; ``map`` sends
``chunksize`` calls per message. execnet's ssh command asks for compression (``-C``),
which would shrink W4's zero bytes to nothing: it is dropped, as in benchmarks/README.md's
measurement, and the cipher is the one the other SSH systems use.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

import dill
import execnet
from execnet import gateway_io

# Seconds a gateway gets to end at shutdown before it is killed.
TERMINATE_SECONDS = 5.0

_REMOTE = """
import dill
functions = {}
for task_id, key, blob, arguments in channel:
    if blob is not None:
        functions[key] = dill.loads(blob)
    try:
        fn = functions[key]
        channel.send((task_id, True, dill.dumps([fn(*args) for args in dill.loads(arguments)])))
    except Exception as error:
        channel.send((task_id, False, repr(error)))
"""


def _ssh_args_without_compression(spec: Any) -> list[str]:
    return [arg for arg in _original_ssh_args(spec) if arg != "-C"]


_original_ssh_args = gateway_io.ssh_args
gateway_io.ssh_args = _ssh_args_without_compression


class _Gateway:
    """One remote Python: its channel, the functions it has, its outstanding tasks."""

    def __init__(self, group: execnet.Group, spec: str, on_result: Callable[[Any], None]):
        self.channel = group.makegateway(spec).remote_exec(_REMOTE)
        self.channel.setcallback(on_result)
        self.known: set[int] = set()
        self.outstanding = 0


class ExecnetExecutor(Executor):
    """A ``concurrent.futures.Executor`` on execnet gateways over ssh."""

    def __init__(self, alias: str, ssh_config: str, python: str, cipher: str, workers: int) -> None:
        # The OpenSSH client reads the passwd entry's ~/.ssh, not $HOME's: name the config.
        options = f"-c {cipher} -o BatchMode=yes -o StrictHostKeyChecking=yes"
        spec = f"ssh={options} {alias}//ssh_config={ssh_config}//python={python}"
        self._group = execnet.Group()
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Future[Any], bool, _Gateway]] = {}
        self._ids = itertools.count()
        self._gateways = [_Gateway(self._group, spec, self._on_result) for _ in range(workers)]

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """One call in one message."""
        assert not kwargs, "the minimal executor takes positional arguments only"
        return self._send(fn, [args], single=True)

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``chunksize`` calls per message, results in order."""
        calls = iter(zip(*iterables, strict=False))
        futures = []
        while chunk := list(itertools.islice(calls, chunksize)):
            futures.append(self._send(fn, chunk, single=False))
        return (value for future in futures for value in future.result(timeout))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """End every gateway (killed after TERMINATE_SECONDS)."""
        self._group.terminate(TERMINATE_SECONDS)

    def _send(
        self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], single: bool
    ) -> Future[Any]:
        future: Future[Any] = Future()
        key = id(fn)
        with self._lock:
            gateway = min(self._gateways, key=lambda g: g.outstanding)
            gateway.outstanding += 1
            task_id = next(self._ids)
            self._pending[task_id] = (future, single, gateway)
            blob = None if key in gateway.known else dill.dumps(fn, recurse=True)
            gateway.known.add(key)
        gateway.channel.send((task_id, key, blob, dill.dumps(calls)))
        return future

    def _on_result(self, message: Any) -> None:
        task_id, ok, payload = message
        with self._lock:
            future, single, gateway = self._pending.pop(task_id)
            gateway.outstanding -= 1
        if not ok:
            future.set_exception(RuntimeError(payload))
            return
        values = dill.loads(payload)
        future.set_result(values[0] if single else values)
