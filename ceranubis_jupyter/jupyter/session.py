"""What the magics keep between cells: executors, live projects, the view of a run.

- :class:`ExecutorPool` reuses one :class:`~ceranubis_jupyter.executor.CeranubisExecutor`
  per ``(hosts, workers)`` (no ``workers``: any of those hosts' executors), so repeated
  cells do not restart nodes; ``close()`` (on ``%unload_ext`` and at exit) shuts them
  all down.
- :func:`run_cell_body` runs a cell's code in the user namespace under a cell file name
  registered in :mod:`linecache`, with the cell's own line numbers, so remote tracebacks
  formatted on the client show the user's lines.
- :func:`follow` shows a project (the widget in a kernel, a text line elsewhere), and
  :func:`wait_or_cancel` blocks until it ends, cancelling it on a kernel interrupt.
"""

from __future__ import annotations

import linecache
import sys
import threading
from typing import Any

from ..exits import Stage, on_exit
from .live import LiveProgress, TextLine, progress_mode

# Seconds between two looks at a waited-for project: how fast the text line moves in
# a kernel's cell and how fast a finished project is noticed (an interrupt is instant).
WAIT_SLICE_SECONDS = 0.25
# Seconds granted to a cancelled project to stop its running tasks before we move on.
CANCEL_GRACE_SECONDS = 30.0
# Seconds ``%ceranubis hosts`` waits for starting nodes to report in.
HOSTS_READY_SECONDS = 20.0

PoolKey = tuple[tuple[str, ...] | None, int | None]


class ExecutorPool:
    """One executor per ``(hosts, workers)``, created on first use, closed together."""

    def __init__(self) -> None:
        self._executors: dict[PoolKey, Any] = {}
        self._lock = threading.Lock()

    def get(self, hosts: list[str] | None, workers: int | None) -> Any:
        """The executor for these hosts and worker count (``None``: the embedded default).

        ``workers=None`` means "any": the latest usable executor on these hosts is reused
        whatever its worker count, so ``%ceranubis hosts`` after a cell with ``--workers``
        shows that cell's nodes instead of starting others.
        """
        from ..projects.executor import CeranubisExecutor

        key: PoolKey = (tuple(hosts) if hosts else None, workers)
        with self._lock:
            executor = self._reusable(key)
            if executor is None:
                executor = CeranubisExecutor(list(key[0]) if key[0] else None, max_workers=workers)
                self._executors.pop(key, None)  # re-inserted last: the latest
                self._executors[key] = executor
            return executor

    def _reusable(self, key: PoolKey) -> Any | None:
        hosts, workers = key
        if workers is None:
            same_hosts = [e for (h, _), e in self._executors.items() if h == hosts]
        else:
            same_hosts = [self._executors.get(key)]
        for executor in reversed(same_hosts):
            if executor is not None and not executor.closed and not executor.scheduler.broken:
                return executor
        return None

    def latest(self) -> Any | None:
        """The most recently created executor, if any."""
        with self._lock:
            return next(reversed(self._executors.values()), None)

    def close(self) -> None:
        """Shut every executor down, stopping what still runs."""
        with self._lock:
            executors = list(self._executors.values())
            self._executors.clear()
        for executor in executors:
            executor.shutdown(wait=True, stop_running=True)


POOL = ExecutorPool()
on_exit(Stage.POOLS, POOL.close)


def run_cell_body(shell: Any, magic_line: str, body: str) -> bool:
    """Run ``body`` in the user namespace as part of the current cell.

    The code is registered in :mod:`linecache` under a cell file name with the magic line
    as line 1, so a traceback (local or remote) names ``Cell In[n], line k`` with the line
    numbers the user sees. Returns False if the code raised (IPython has shown it).
    """
    transformed = shell.transform_cell(body)
    visible = f"%%ceranubis {magic_line}\n{body}"
    filename = shell.compile.cache(visible, shell.execution_count, raw_code=visible)
    lines = [line + "\n" for line in visible.splitlines()]
    linecache.cache[filename] = (len(visible), None, lines, filename)
    code = shell.compile("\n" + transformed, filename, "exec")
    try:
        exec(code, shell.user_global_ns, shell.user_ns)
    except Exception as error:
        # Start the traceback below this frame: the user sees their cell's lines only.
        tb = error.__traceback__.tb_next if error.__traceback__ else None
        shell.showtraceback((type(error), error, tb), running_compiled_code=True)
        return False
    return True


def follow(project: Any, executor: Any = None, *, waiting: bool = True) -> LiveProgress:
    """Show ``project`` live: the widget in a Jupyter kernel, a text line elsewhere.

    ``executor`` is the one running it; its host rows stay in the view after the end. A
    queued project shows the store's node daemons as its hosts, and is redrawn on its
    ``NOTIFY`` events (PostgreSQL) rather than by polling alone.
    A text line is only kept moving while the cell waits (``waiting``): lines printed
    from a background thread would land in the middle of later cells or the prompt.
    """
    nodes = queue_hosts(project) if executor is None else None
    executor = executor if executor is not None else nodes
    if progress_mode() == "widget":
        from .widget import ProgressWidget

        view = ProgressWidget(list(project.hosts), on_cancel=lambda: _cancel_running(project))
        live = LiveProgress(project, view.show, executor=executor)
        live.refresh()
        view.display()
        _settle_after_cells(live)
        return _woken_by_events(project, live.start(), nodes)
    text = TextLine()
    live = LiveProgress(project, text, min_interval=text.interval, executor=executor)
    if waiting:
        return _woken_by_events(project, live.start(), nodes)
    live.refresh()
    print(f"running in the background; `%ceranubis status {project.name}` shows progress")
    return live


def queue_hosts(project: Any) -> Any:
    """For a queued project: its store's node daemons, read as an executor's hosts."""
    from ..projects.queue_listen import QueueNodes

    store = getattr(project, "store", None)
    if store is None or not store.is_queued(project.id):
        return None
    return QueueNodes(store)


def _woken_by_events(project: Any, live: LiveProgress, nodes: Any) -> LiveProgress:
    """Redraw a queued project on each of its events (PostgreSQL LISTEN), until the
    view stops following it."""
    from ..projects.queue_listen import watch

    if nodes is not None:
        listener = watch(nodes.store, project.id, live.poke)
        if listener is not None:
            live.on_stop(listener.stop)
    return live


def _cancel_running(project: Any) -> None:
    # A click queued while the kernel was busy may arrive after the end: keep "done".
    if project.state == "running":
        project.cancel()


def _settle_after_cells(live: LiveProgress) -> None:
    """Draw the final state by the end of the first cell that runs after the project ended.

    The refresher thread draws it too, but up to a redraw interval later; a notebook
    run by nbclient would miss that last comm message if its kernel stops first.
    """
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return

    def settle(*_args: Any) -> None:
        if live.last is not None and live.last.final:
            shell.events.unregister("post_run_cell", settle)
        elif live.project.state != "running":
            live.refresh()

    shell.events.register("post_run_cell", settle)


def wait_or_cancel(project: Any, live: LiveProgress) -> None:
    """Block until ``project`` ends; on ``KeyboardInterrupt`` cancel it and re-raise.

    Cancelling drops pending arguments, stops running ones and keeps finished results.
    """
    try:
        while not project.wait(timeout=WAIT_SLICE_SECONDS):
            if project.state != "running":  # stopped with work left (e.g. hosts lost)
                break
    except KeyboardInterrupt:
        project.cancel()
        project.wait(timeout=CANCEL_GRACE_SECONDS)
        snapshot = live.stop()
        print(
            f"interrupted: project {project.name!r} cancelled; {snapshot.counts.done} results kept",
            file=sys.stderr,
        )
        raise
    snapshot = live.stop()
    if snapshot.state == "stopped":
        _explain_stop(project, snapshot.hosts)


def _explain_stop(project: Any, hosts: tuple[Any, ...]) -> None:
    left = sum(project.counts()[state] for state in ("pending", "running", "cancelled"))
    reasons = "".join(f"\n  - {row.error}" for row in hosts if row.error)
    print(
        f"project {project.name!r} stopped with {left} arguments left{reasons or ''}\n"
        f"fix the hosts, then `%ceranubis resume {project.name}` runs the rest",
        file=sys.stderr,
    )


def wait_hosts_ready(executor: Any, timeout: float = HOSTS_READY_SECONDS) -> list[Any]:
    """``executor.hosts()`` once no host is still starting (or after ``timeout``)."""
    done = threading.Event()
    infos = executor.hosts()
    slices = int(timeout / WAIT_SLICE_SECONDS)
    for _ in range(slices):
        if infos and all(info.state != "starting" for info in infos):
            break
        done.wait(WAIT_SLICE_SECONDS)
        infos = executor.hosts()
    return list(infos)
