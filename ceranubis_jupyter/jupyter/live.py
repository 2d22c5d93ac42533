"""Keeping a view (the widget or a text line) in step with a running project.

::

    scheduler thread ── project listener ──► poke() ──► Event
                                                          │  (at most every MIN_REDRAW_SECONDS,
    "ceranubis-progress" thread ◄─────────────────────────┘   and every IDLE_REFRESH_SECONDS)
        snapshot_of(project, executor.hosts()) ──► view(snapshot)

The scheduler thread only sets an event, so a slow view can never slow the work down;
the refresher thread does the reading and drawing, throttled, and stops after drawing
the project's final state.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from .progress import RateMeter, Snapshot, snapshot_of

# Fastest redraw: 10 per second is smooth for the eye and cheap for the comm channel.
MIN_REDRAW_SECONDS = 0.1
# Redraw at least this often even without results (elapsed time, host load move on).
IDLE_REFRESH_SECONDS = 1.0
# Text lines in a notebook are new lines, not overwrites: keep them rare.
TEXT_NOTEBOOK_SECONDS = 5.0
# A terminal rewrites one line in place: twice a second is enough.
TEXT_TERMINAL_SECONDS = 0.5
# Environment variable forcing the view: "widget" or "text".
MODE_ENV = "CERANUBIS_PROGRESS"

View = Callable[[Snapshot], None]


class LiveProgress:
    """Redraws ``view`` from ``project`` in a background thread, throttled.

    Args:
        project: a :class:`~ceranubis_jupyter.project.Project` (anything
            :func:`~ceranubis_jupyter.progress.snapshot_of` can read, with
            ``add_listener`` and ``executor``).
        view: called with each new snapshot, from the refresher thread.
        min_interval: seconds between two redraws at most.
        executor: whose hosts to show (default: the project's while it runs).
    """

    def __init__(
        self,
        project: Any,
        view: View,
        min_interval: float = MIN_REDRAW_SECONDS,
        executor: Any = None,
    ) -> None:
        self.project = project
        self.view = view
        self.min_interval = min_interval
        self.meter = RateMeter()
        self._poked = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ceranubis-progress", daemon=True)
        self.last: Snapshot | None = None
        self.executor: Any = executor
        self._on_stop: list[Callable[[], Any]] = []

    def start(self) -> LiveProgress:
        """Draw once now, then follow the project; returns self."""
        self.refresh()
        add_listener = getattr(self.project, "add_listener", None)
        if add_listener is not None:
            add_listener(self.poke)
        self._thread.start()
        return self

    def poke(self, *_args: Any) -> None:
        """Ask for a redraw (safe from any thread; called by the scheduler's thread)."""
        self._poked.set()

    def refresh(self) -> Snapshot:
        """Read the project and draw it now; returns the snapshot drawn."""
        with self._lock:
            snapshot = snapshot_of(self.project, self._host_infos(), self.meter)
            self.view(snapshot)
            self.last = snapshot
            return snapshot

    def stop(self, timeout: float = 5.0) -> Snapshot:
        """Stop following; draws the state one last time and returns it."""
        self._stopped.set()
        self._poked.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self.refresh()

    def _host_infos(self) -> list[Any]:
        # The project lets go of its executor when it ends; the last view keeps its hosts.
        self.executor = getattr(self.project, "executor", None) or self.executor
        if self.executor is None:
            return []
        try:
            return list(self.executor.hosts())
        except Exception:  # a shut-down executor has no hosts to show
            return []

    def on_stop(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` once the refresher thread ended (what it used is let go)."""
        self._on_stop.append(callback)

    def _run(self) -> None:
        try:
            self._follow()
        finally:
            for callback in self._on_stop:
                callback()

    def _follow(self) -> None:
        while not self._stopped.is_set():
            self._poked.wait(IDLE_REFRESH_SECONDS)
            self._poked.clear()
            if self._stopped.is_set():
                return
            try:
                snapshot = self.refresh()
                if snapshot.final:
                    return
                if snapshot.counts.pending + snapshot.counts.running == 0:
                    self._poked.set()  # all in, the end state is moments away: look soon
            except Exception:  # a closed store or comm must not kill the kernel's thread
                if self._stopped.wait(IDLE_REFRESH_SECONDS):
                    return
            self._stopped.wait(self.min_interval)


class TextLine:
    """The text fallback: rewrites one line on a terminal, prints new lines elsewhere."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0

    @property
    def interval(self) -> float:
        """Seconds between two lines."""
        return TEXT_TERMINAL_SECONDS if self.terminal else TEXT_NOTEBOOK_SECONDS

    def __call__(self, snapshot: Snapshot) -> None:
        text = snapshot.text()
        if self.terminal:
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            end = "\n" if snapshot.final else ""
            self.stream.write(f"\r{text}{pad}{end}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def progress_mode() -> str:
    """``"widget"`` inside a Jupyter kernel with ipywidgets, else ``"text"``.

    ``$CERANUBIS_PROGRESS`` (``widget`` or ``text``) overrides the guess.
    """
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("widget", "text"):
        return forced
    try:
        from IPython import get_ipython

        shell = get_ipython()
        import ipywidgets  # noqa: F401
    except ImportError:
        return "text"
    return "widget" if shell is not None and getattr(shell, "kernel", None) else "text"
