"""The live widget in a real browser: JupyterLab + Debian's Chromium, driven by Playwright.

A ``%%ceranubis`` cell runs a real project on the embedded default while a
MutationObserver in the page logs every (counts text, bar width) the DOM shows; the test
asserts the widget rendered, moved through several intermediate values live, and ended
green with the right counts. Screenshots go to ``tests/artifacts/``.

Needs ``/usr/bin/chromium`` (``.ci/install-system-deps``) and the ``playwright`` package;
never ``playwright install``. Fails, never skips, when they are missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.jupyter_support import JupyterLab, new_notebook

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--mute-audio",
]  # fmt: skip
ARTIFACTS = Path(__file__).parent / "artifacts"
NB_NAME = "widget_live.ipynb"
TASKS = 16
TASK_SECONDS = 0.5
WORKERS = 2

WIDGET = ".jp-OutputArea-output .ceranubis-widget"
BAR = f"{WIDGET} .ceranubis-bar .progress-bar"
TRACK = f"{WIDGET} .ceranubis-bar .progress"
COUNTS = f"{WIDGET} .ceranubis-counts .widget-html-content"
HEADER = f"{WIDGET} .ceranubis-header .widget-html-content"

CELLS = (
    "%load_ext ceranubis_jupyter",
    f"%%ceranubis slow_square over [(i,) for i in range({TASKS})] --name browser-sweep"
    f" --workers {WORKERS}\n"
    "import time\n"
    "def slow_square(x):\n"
    f"    time.sleep({TASK_SECONDS})\n"
    "    return x * x",
    "print('status', browser_sweep.status(), sorted(r for _, r in browser_sweep.results()))",
)

# Logs every change of (counts text, bar width, bar class) with a timestamp.
JS_OBSERVE = """([COUNTS, BAR]) => {
  window.__log = [];
  let last = '';
  const read = () => {
    const c = document.querySelector(COUNTS), b = document.querySelector(BAR);
    if (!c || !b) return;
    const key = c.textContent + '|' + b.style.width + '|' + b.className;
    if (key === last) return;
    last = key;
    window.__log.push({t: performance.now() / 1000, counts: c.textContent,
                       width: b.style.width, cls: b.className});
  };
  new MutationObserver(read).observe(document.body, {subtree: true, childList: true,
      characterData: true, attributes: true, attributeFilter: ['style', 'class']});
}"""

JS_KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  const bar = Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'))
                   .map(e => e.textContent).join(' / ');
  return !!k && k.status === 'idle' && k.connectionStatus === 'connected'
         && / \\| Idle/.test(bar) && !/No Kernel/.test(bar);
}"""

JS_FINAL = f"""([COUNTS, BAR]) => {{
  const c = document.querySelector(COUNTS), b = document.querySelector(BAR);
  return !!c && !!b && c.textContent.startsWith('{TASKS}/{TASKS} done')
         && b.classList.contains('progress-bar-success');
}}"""


# The whole final view: counts, bar, header and the host row (its done count, 4th column).
JS_SETTLED = f"""([COUNTS, BAR, HEADER, HOSTS]) => {{
  const c = document.querySelector(COUNTS), b = document.querySelector(BAR),
        h = document.querySelector(HEADER), o = document.querySelector(HOSTS);
  if (!c || !b || !h || !o) return false;
  const rows = o.innerText.split('\\n').filter(line => line.trim());
  const row = rows.length ? rows[rows.length - 1].trim().split(/\\s+/) : [];
  return c.textContent.startsWith('{TASKS}/{TASKS} done · 0 failed · 0 running · 0 pending')
         && b.style.width === '100%' && h.textContent.includes('done')
         && row[3] === '{TASKS}';
}}"""


def done_count(counts_text: str) -> int:
    match = re.match(r"^(\d+)/\d+ done", counts_text)
    return int(match.group(1)) if match else -1


def guard(blocked: list[str]) -> Any:
    """A route handler letting only loopback requests through."""

    def handle(route: Any) -> None:
        url = route.request.url
        host = re.sub(r"^\w+://([^/:]+).*$", r"\1", url)
        if host in ("127.0.0.1", "localhost") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    return handle


def open_notebook(page: Any, server: JupyterLab) -> None:
    """Load the notebook and wait until its kernel is idle and connected (REST, then DOM)."""
    page.goto(f"{server.url}/lab/tree/{NB_NAME}?token={server.token}",
              wait_until="domcontentloaded", timeout=60_000)  # fmt: skip
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=60_000)
    for _ in range(900):  # 90 s; page.wait_for_timeout keeps Playwright's loop running
        if server.kernel_connected(NB_NAME):
            break
        page.wait_for_timeout(100)
    else:
        raise AssertionError("the notebook's kernel never became idle and connected")
    page.wait_for_function(JS_KERNEL_IDLE, timeout=30_000, polling=100)


def run_and_watch(page: Any) -> dict[str, Any]:
    """Run all cells; returns the observer log, mid and final DOM reads."""
    page.evaluate(JS_OBSERVE, [COUNTS, BAR])
    # Fire and forget: the command's promise resolves only after the last cell.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    page.wait_for_selector(f"{TRACK}, .jp-Dialog", state="visible", timeout=60_000)
    dialog = page.locator(".jp-Dialog")
    assert not (dialog.count() and dialog.first.is_visible()), dialog.first.inner_text()
    page.wait_for_function(
        """([COUNTS, lo, hi]) => { const c = document.querySelector(COUNTS);
             const m = c && c.textContent.match(/^(\\d+)\\//);
             return !!m && +m[1] >= lo && +m[1] <= hi; }""",
        arg=[COUNTS, 4, TASKS - 4], polling=50, timeout=60_000,
    )  # fmt: skip
    mid = page.inner_text(COUNTS)
    page.screenshot(path=str(ARTIFACTS / "browser-widget-mid.png"))
    page.wait_for_function(JS_FINAL, arg=[COUNTS, BAR], polling=50, timeout=60_000)
    hosts = f"{WIDGET} .ceranubis-hosts"
    page.wait_for_function(JS_SETTLED, arg=[COUNTS, BAR, HEADER, hosts], polling=50)
    page.screenshot(path=str(ARTIFACTS / "browser-widget-final.png"))
    page.locator(WIDGET).first.screenshot(path=str(ARTIFACTS / "browser-widget-final-cell.png"))
    final = {
        "counts": page.inner_text(COUNTS),
        "header": page.inner_text(HEADER),
        "width": page.evaluate(f"() => document.querySelector('{BAR}').style.width"),
        "hosts": page.inner_text(f"{WIDGET} .ceranubis-hosts"),
    }
    page.wait_for_selector(f"text=status ({TASKS}, {TASKS})", timeout=30_000)
    return {"log": page.evaluate("() => window.__log"), "mid": mid, "final": final}


@pytest.mark.timeout(240)
def test_widget_updates_live_in_jupyterlab(jupyterlab: JupyterLab) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run .ci/install-system-deps"
    ARTIFACTS.mkdir(exist_ok=True)
    nbformat.write(new_notebook(*CELLS), jupyterlab.root / NB_NAME)
    console: list[str] = []
    blocked: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS, timeout=60_000)  # fmt: skip
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", guard(blocked))
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            open_notebook(page, jupyterlab)
            seen = run_and_watch(page)
        finally:
            browser.close()
    (ARTIFACTS / "browser-widget-log.json").write_text(json.dumps(seen, indent=1))
    history = [done_count(entry["counts"]) for entry in seen["log"]]
    assert history == sorted(history), f"progress went backwards: {history}"
    intermediate = sorted({n for n in history if 0 < n < TASKS})
    assert len(intermediate) >= 3, f"too few live values: {seen['log']}"
    assert 4 <= done_count(seen["mid"]) <= TASKS - 1, seen["mid"]
    assert seen["final"]["counts"].startswith(
        f"{TASKS}/{TASKS} done · 0 failed · 0 running · 0 pending"
    ), seen["final"]
    assert seen["final"]["width"] == "100%"
    assert "browser-sweep" in seen["final"]["header"] and "done" in seen["final"]["header"]
    host_row = seen["final"]["hosts"].splitlines()[-1].split()
    assert host_row[:2] == ["local", "ready"] and host_row[3] == str(TASKS), host_row
    assert "progress-bar-success" in seen["log"][-1]["cls"]
    assert not blocked, blocked
    assert not [line for line in console if line.startswith("pageerror")], console
