"""The ipywidgets view of a :class:`~ceranubis_jupyter.progress.Snapshot`.

:class:`ProgressWidget` owns the widgets (a bar, the counts, a host table, the last
results, errors and output lines, a Cancel button) and only draws what a snapshot says;
the ``render_*`` functions turn parts of a snapshot into HTML and are pure. Who calls
:meth:`ProgressWidget.show`, and how often, is :mod:`~ceranubis_jupyter.live`'s business.

Every part carries a ``ceranubis-*`` CSS class, so tests and users can find it.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from .progress import HostRow, Snapshot

# Width of the bar; wide enough to read 1 % steps, narrow enough for a split screen.
BAR_WIDTH = "420px"
BUTTON_WIDTH = "100px"
# Seconds to wait for the kernel to start the subshell that handles clicks.
SUBSHELL_START_SECONDS = 5.0
# Height at which the output and error panes scroll instead of growing the notebook.
PANE_MAX_HEIGHT = "12em"

_STYLE = (
    "<style>.ceranubis-table td,.ceranubis-table th{padding:1px 8px;text-align:right}"
    ".ceranubis-table td:first-child,.ceranubis-table th:first-child{text-align:left}"
    ".ceranubis-pre{margin:0;font-size:85%;white-space:pre-wrap}</style>"
)


def render_header(snapshot: Snapshot, hosts: list[str]) -> str:
    """``<b>name</b> · state · hosts: a, b`` (the name with its version from v2 on)."""
    where = ", ".join(hosts) if hosts else "local"
    colour = {"success": "green", "danger": "#c00", "warning": "#b60"}.get(snapshot.style, "")
    state = html.escape(snapshot.state)
    if colour:
        state = f'<span style="color:{colour}">{state}</span>'
    return f"<b>{html.escape(snapshot.title)}</b> · {state} · hosts: {html.escape(where)}"


def render_hosts(rows: tuple[HostRow, ...]) -> str:
    """The host table: workers busy/total, done, load, CPU, memory (or the host's error)."""
    if not rows:
        return ""
    head = (
        "<tr><th>host</th><th>state</th><th>workers</th><th>done</th><th>load</th>"
        "<th>CPU</th><th>memory</th></tr>"
    )
    body = "".join(_host_row(row) for row in rows)
    return f'{_STYLE}<table class="ceranubis-table">{head}{body}</table>'


def _host_row(row: HostRow) -> str:
    state = html.escape(
        row.state + (f": {row.error}" if row.error else "") + (f" · {row.sync}" if row.sync else "")
    )
    return (
        f"<tr><td>{html.escape(row.host)}</td><td>{state}</td>"
        f"<td>{row.busy}/{row.workers}</td><td>{row.done}</td><td>{row.loadavg:.2f}</td>"
        f"<td>{row.cpu_percent:.0f}%</td><td>{row.memory_percent:.0f}%</td></tr>"
    )


def render_recent(recent: tuple[tuple[str, str], ...]) -> str:
    """The last results as ``args → result`` lines."""
    if not recent:
        return ""
    lines = "\n".join(f"{a} → {r}" for a, r in recent)
    return f'{_STYLE}<b>last results</b><pre class="ceranubis-pre">{html.escape(lines)}</pre>'


def render_errors(errors: tuple[tuple[str, str], ...]) -> str:
    """The last errors: a summary line each, the remote traceback folded under it."""
    if not errors:
        return ""
    items = "".join(
        f"<details><summary>{html.escape(args)}: {html.escape(_last_line(text))}</summary>"
        f'<pre class="ceranubis-pre">{html.escape(cell_labels(text))}</pre></details>'
        for args, text in errors
    )
    return f'{_STYLE}<b style="color:#c00">last errors</b>{items}'


def cell_labels(text: str) -> str:
    """Name notebook cells as IPython does: ``File "/tmp/ipykernel_1/123.py", line 4``
    becomes ``Cell In[7], line 4`` for code this kernel ran (its cells and magics)."""
    try:
        from IPython import get_ipython

        known = get_ipython().compile._filename_map
    except AttributeError:  # no shell: leave the text alone
        return text

    def label(match: re.Match[str]) -> str:
        number = known.get(match.group(1))
        return match.group(0) if number is None else f"Cell In[{number}], line {match.group(2)}"

    return _FILE_LINE.sub(label, text)


_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)')


def render_output(output: tuple[tuple[str, str], ...]) -> str:
    """The last output lines, prefixed by their host."""
    if not output:
        return ""
    lines = "\n".join(f"[{host}] {line}" for host, line in output)
    return f'{_STYLE}<b>output</b><pre class="ceranubis-pre">{html.escape(lines)}</pre>'


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class ProgressWidget:
    """The live view of one project.

    Args:
        hosts: the project's hosts, for the header.
        on_cancel: called (in the kernel thread) when the Cancel button is clicked.
    """

    def __init__(self, hosts: list[str], on_cancel: Callable[[], Any] | None = None) -> None:
        self.hosts = list(hosts)
        self.header = _html("ceranubis-header")
        self.bar = widgets.IntProgress(value=0, min=0, max=1, layout={"width": BAR_WIDTH})
        self.bar.add_class("ceranubis-bar")
        self.counts = _html("ceranubis-counts")
        self.cancel_button = widgets.Button(
            description="Cancel",
            icon="stop",
            button_style="warning",
            layout={"width": BUTTON_WIDTH},
        )
        self.cancel_button.add_class("ceranubis-cancel")
        self.host_table = _html("ceranubis-hosts")
        self.recent = _html("ceranubis-recent")
        self.errors = _html("ceranubis-errors", scroll=True)
        self.output = _html("ceranubis-output", scroll=True)
        if on_cancel is not None:
            self.cancel_button.on_click(lambda _button: on_cancel())
            route_to_subshell(self.cancel_button)
        self.box = widgets.VBox(
            [
                self.header,
                widgets.HBox([self.bar, self.cancel_button]),
                self.counts,
                self.host_table,
                self.recent,
                self.errors,
                self.output,
            ]
        )
        self.box.add_class("ceranubis-widget")
        self.last: Snapshot | None = None
        self._handle: Any = None

    def display(self) -> None:
        """Show the widget in the current cell's output."""
        from IPython.display import display

        self._handle = display(self, display_id=True)  # type: ignore[no-untyped-call]

    def show(self, snapshot: Snapshot) -> None:
        """Draw ``snapshot``, sending only the parts that changed."""
        _set(self.bar, "max", max(1, snapshot.total))
        _set(self.bar, "value", snapshot.counts.finished)
        _set(self.bar, "bar_style", snapshot.style)
        _set(self.header, "value", render_header(snapshot, self.hosts))
        _set(self.counts, "value", snapshot.summary())
        _set(self.host_table, "value", render_hosts(snapshot.hosts))
        _set(self.recent, "value", render_recent(snapshot.recent))
        _set(self.errors, "value", render_errors(snapshot.errors))
        _set(self.output, "value", render_output(snapshot.output))
        _set(self.cancel_button, "disabled", snapshot.final)
        first_final = snapshot.final and not (self.last is not None and self.last.final)
        self.last = snapshot
        if first_final and self._handle is not None:
            # Re-send the output once, so viewers without widgets (nbconvert, GitHub)
            # show the final text line instead of the first one.
            self._handle.update(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        data = self.box._repr_mimebundle_(**kwargs)
        if self.last is not None and isinstance(data, dict):
            data["text/plain"] = self.last.text()
        return data


_subshell: dict[str, str | None] = {}
_subshell_lock = threading.Lock()


def route_to_subshell(widget: Any) -> bool:
    """Have ``widget``'s front-end messages handled by a kernel subshell thread.

    A cell waiting for its project blocks the kernel's main thread, and front-end messages
    (a click on Cancel) queue behind it. ipykernel 7 can route a comm's messages to a
    subshell (JEP 91), which runs in its own thread, so the click is handled at once.
    Returns False (clicks then wait for the cell) where the kernel cannot do that.
    """
    comm = getattr(widget, "comm", None)
    subshell_id = _kernel_subshell()
    if comm is None or subshell_id is None or not hasattr(comm, "_reply_subshell_for"):
        return False
    comm._reply_subshell_id = subshell_id
    return True


def _kernel_subshell() -> str | None:
    """One subshell per kernel for widget clicks, created on first use (or None)."""
    with _subshell_lock:
        if "id" not in _subshell:
            _subshell["id"] = _create_subshell()
        return _subshell["id"]


def _create_subshell() -> str | None:
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        manager = kernel.shell_channel_thread.manager  # type: ignore[union-attr]
        create, loop = manager._create_subshell, manager._shell_channel_io_loop
    except AttributeError:  # not in ipykernel >= 7 with subshells
        return None
    created: list[str] = []
    done = threading.Event()

    def run() -> None:  # subshells are made on the shell channel thread only
        try:
            created.append(create())
        finally:
            done.set()

    loop.add_callback(run)
    done.wait(SUBSHELL_START_SECONDS)
    return created[0] if created else None


def _html(css_class: str, scroll: bool = False) -> Any:
    layout = {"max_height": PANE_MAX_HEIGHT, "overflow": "auto"} if scroll else {}
    widget = widgets.HTML(value="", layout=layout)
    widget.add_class(css_class)
    return widget


def _set(widget: Any, name: str, value: Any) -> None:
    # A trait assignment sends a comm message even for an equal value in some
    # ipywidgets versions; skipping unchanged ones keeps the redraws cheap.
    if getattr(widget, name) != value:
        setattr(widget, name, value)
