"""Open every page of the built book in headless Chromium and check what a reader would see.

For each page of ``_toc.yml`` (``_build/html/book/<name>.html``), served from 127.0.0.1 by a
``http.server`` thread, the page is loaded in Debian's headless ``chromium`` driven through the Chrome
DevTools Protocol (a websocket client from PyPI, ``websocket-client``), and:

- **no console errors**: ``console.error`` calls, uncaught exceptions, and browser log entries of level
  error (a 404 for a script, a failed font) all count;
- **nothing fetched from the network**: every request must go to the local server (or be ``data:`` /
  ``blob:``): the book must work offline (MathJax is served from ``_static/mathjax``);
- **the notebook ran**: a notebook page (a chapter with a jupytext header) must have its executed
  notebook (``_build/jupyter_execute/book/<name>.ipynb``, written by the build even when execution
  fails), and that notebook must have run to the end: no error output (except in a cell tagged
  ``raises-exception``), no code cell left unexecuted (except ``skip-execution`` ones), and no
  traceback report of this build (``_build/html/reports/book/<name>.err.log`` written with it); the
  page itself must show no error traceback (``.output.traceback``);
- **figures are there**: every ``<img>`` in the page is loaded (``naturalWidth > 0``); a page shows at
  least as many images as its executed notebook has image outputs (a count that means something only
  because the notebook must have run to the end: a failed run stops early and has fewer);
- **math renders**: where the page has math (Sphinx's ``.math`` elements), MathJax has produced
  ``mjx-container`` elements for it, and no ``mjx-merror``;
- a **screenshot** per page goes to ``_build/screenshots/<name>.png`` (full page, height capped).

Usage::

    python tools/browser_check.py                 # _build/html, every toc page; exit 1 on a failure
    python tools/browser_check.py --html DIR --pages intro appendix_api

Chromium comes from Debian: ``apt-get update && apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio", "--window-size=1280,1000", "--remote-debugging-port=0",
]
VIEWPORT = (1280, 1000)
MAX_SCREENSHOT_HEIGHT = 12000


# ---------------------------------------------------------------------------------------------
# a local web server and a browser
# ---------------------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Serve ``folder`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("chromium not found: apt-get update && apt-get install -y chromium")


@contextlib.contextmanager
def chromium(binary: str | None = None, timeout: float = 30.0):
    """Start headless Chromium with remote debugging on a free port; yields the DevTools HTTP base URL."""
    profile = Path(tempfile.mkdtemp(prefix="hipt-chromium-"))
    proc = subprocess.Popen(
        [binary or find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {proc.returncode} before it listened")
            if time.time() > deadline:
                raise RuntimeError("chromium did not open its DevTools port in time")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


class CDP:
    """A minimal synchronous Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str, timeout: float = 60.0):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.timeout = timeout
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.settimeout(self.timeout)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float) -> dict | None:
        """Wait for an event (already buffered or new); None on time-out."""
        import websocket

        deadline = time.time() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["method"] == method:
                    return self.events.pop(i)
            remaining = deadline - time.time()
            if remaining <= 0:
                return None
            self.ws.settimeout(remaining)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                return None
            if "method" in msg:
                self.events.append(msg)

    def drain(self, seconds: float) -> None:
        """Collect events for ``seconds`` (late console messages, late requests)."""
        import websocket

        deadline = time.time() + seconds
        while (remaining := deadline - time.time()) > 0:
            self.ws.settimeout(remaining)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str, await_promise: bool = False):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def close(self):
        self.ws.close()


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
@dataclass
class PageReport:
    name: str
    url: str
    errors: list[str] = field(default_factory=list)
    images: int = 0
    expected_images: int = 0
    notebook: str = ""  # "ok", "FAILED", "-" (not a notebook page)
    math_elements: int = 0
    mjx: int = 0
    screenshot: Path | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


PAGE_STATE_JS = """
(() => {
  const main = document.querySelector('main') || document.body;
  const imgs = Array.from(main.querySelectorAll('img'));
  return {
    images: imgs.map(i => ({src: i.currentSrc || i.src, w: i.naturalWidth, complete: i.complete})),
    math: document.querySelectorAll('.math').length,
    mjx: document.querySelectorAll('mjx-container').length,
    merror: document.querySelectorAll('mjx-merror').length,
    tracebacks: Array.from(document.querySelectorAll('.output.traceback'))
      .filter(e => !e.closest('.tag_raises-exception'))
      .map(e => (e.textContent || '').trim().split('\\n').filter(l => l.trim()).slice(-1)[0] || ''),
    title: document.title,
    height: Math.ceil(document.documentElement.scrollHeight),
  };
})()
"""

MATHJAX_READY_JS = """
(async () => {
  if (!document.querySelector('script[src*="mathjax"]')) return false;
  for (let i = 0; i < 100 && !(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise); i++)
    await new Promise(r => setTimeout(r, 100));
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    await window.MathJax.startup.promise;
    return true;
  }
  return false;
})()
"""


# the traceback report myst-nb writes next to a failed notebook is written within a moment of the
# executed notebook itself; an older one is left over from an earlier build
_REPORT_SLACK_S = 5.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class NotebookRun:
    """What the build's execution of one page left behind."""

    is_notebook: bool
    images: int = 0
    errors: list[str] = field(default_factory=list)


def is_notebook_page(name: str) -> bool:
    """True when ``book/<name>.md`` is a MyST notebook (executed by the build)."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    from sync_notebooks import is_notebook_source

    return is_notebook_source(ROOT / "book" / f"{name}.md")


def notebook_run(build_dir: Path, name: str, is_notebook: bool | None = None,
                 html: Path | None = None) -> NotebookRun:
    """Read ``<build>/jupyter_execute/book/<name>.ipynb``: did it run to the end, how many image outputs.

    ``errors`` is empty only for a notebook page whose executed notebook exists, has no error output
    (outside ``raises-exception`` cells), has every code cell executed (``skip-execution`` and empty
    cells aside) and has no traceback report (``<html>/reports/book/<name>.err.log``, ``html`` by default
    ``<build>/html``) from the same build.  ``images`` counts the image outputs of the cells that are not
    removed from the page.
    """
    if is_notebook is None:
        is_notebook = is_notebook_page(name)
    nb_path = build_dir / "jupyter_execute" / "book" / f"{name}.ipynb"
    run = NotebookRun(is_notebook)
    if not nb_path.is_file():
        if is_notebook:
            run.errors.append(f"executed notebook missing: {nb_path}")
        return run
    run.is_notebook = True
    try:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        run.errors.append(f"executed notebook unreadable: {nb_path} ({e})")
        return run
    not_run = []
    for k, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        outputs = cell.get("outputs", [])
        for out in outputs:
            if out.get("output_type") == "error" and "raises-exception" not in tags:
                evalue = _ANSI.sub("", str(out.get("evalue", "")))
                run.errors.append(f"notebook failed: code cell {k} raised {out.get('ename', '?')}: {evalue[:200]}")
        if "skip-execution" not in tags and source.strip() and cell.get("execution_count") is None:
            not_run.append(k)
        if "remove-output" in tags or "remove-cell" in tags:
            continue
        run.images += sum(1 for out in outputs if any(key.startswith("image/") for key in out.get("data", {})))
    if not_run:
        run.errors.append(f"notebook did not run to the end: {len(not_run)} code cell(s) not executed "
                          f"(first: cell {not_run[0]})")
    report = (html if html is not None else build_dir / "html") / "reports" / "book" / f"{name}.err.log"
    if report.is_file() and report.stat().st_mtime >= nb_path.stat().st_mtime - _REPORT_SLACK_S:
        text = _ANSI.sub("", report.read_text(encoding="utf-8", errors="replace"))
        lines = [line for line in text.splitlines() if line.strip()]
        run.errors.append(f"notebook execution failed in this build ({report}): {lines[-1][:200] if lines else ''}")
    return run


def expected_image_count(build_dir: Path, name: str) -> int:
    """Image outputs in the page's executed notebook (``_build/jupyter_execute/book/<name>.ipynb``)."""
    return notebook_run(build_dir, name, is_notebook=False).images


def _local(url: str, base: str) -> bool:
    return url.startswith(base) or url.startswith(("data:", "blob:", "about:"))


def check_page(cdp: CDP, base: str, name: str, build_dir: Path, shots: Path, timeout: float,
               html: Path | None = None) -> PageReport:
    url = f"{base}/book/{name}.html"
    run = notebook_run(build_dir, name, html=html)
    report = PageReport(name, url, expected_images=run.images,
                        notebook=("FAILED" if run.errors else "ok") if run.is_notebook else "-")
    report.errors.extend(run.errors)
    start = time.time()
    cdp.events.clear()
    cdp.call("Page.navigate", url=url)
    if cdp.wait_for("Page.loadEventFired", timeout) is None:
        report.errors.append(f"page did not load within {timeout:.0f} s")
    try:
        if not cdp.evaluate(MATHJAX_READY_JS, await_promise=True):
            pass  # no MathJax on this page (Sphinx adds it only where there is math); checked below
    except RuntimeError as e:
        report.errors.append(f"MathJax: {e}")
    # let images, fonts and late scripts finish
    cdp.evaluate("Promise.all(Array.from(document.images).map(i => i.complete ? 0 : "
                 "new Promise(r => { i.onload = i.onerror = r; })))", await_promise=True)
    cdp.drain(1.0)
    state = cdp.evaluate(PAGE_STATE_JS)

    for ev in cdp.events:
        method, p = ev["method"], ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            report.errors.append(f"console.{p['type']}: {text[:300]}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "")
            report.errors.append(f"uncaught exception: {text[:300]}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            report.errors.append(f"browser log: {e.get('text', '')[:200]} {e.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            req_url = p.get("request", {}).get("url", "")
            if not _local(req_url, base):
                report.errors.append(f"network request outside the book: {req_url[:200]}")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            report.errors.append(f"failed to load a resource: {p.get('errorText')} ({p.get('type')})")

    imgs = state["images"]
    report.images = sum(1 for i in imgs if i["complete"] and i["w"] > 0)
    for i in imgs:
        if not (i["complete"] and i["w"] > 0):
            report.errors.append(f"image not loaded: {i['src'][:200]}")
    if report.images < report.expected_images:
        report.errors.append(f"{report.expected_images} figures in the executed notebook, {report.images} shown")
    for tb in state["tracebacks"]:
        report.errors.append(f"error traceback shown on the page: {tb[:200]}")
    report.math_elements, report.mjx = state["math"], state["mjx"]
    if report.math_elements and report.mjx < report.math_elements:
        report.errors.append(f"math not rendered: {report.math_elements} math elements, {report.mjx} mjx-container")
    if state["merror"]:
        report.errors.append(f"{state['merror']} MathJax errors (mjx-merror)")

    # screenshot of the whole page (height capped): a viewport as tall as the page, so that the capture
    # is what a reader sees (captureBeyondViewport shifts pages whose outputs scroll sideways)
    height = min(state["height"], MAX_SCREENSHOT_HEIGHT)
    cdp.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=height, deviceScaleFactor=1,
             mobile=False)
    cdp.evaluate("window.scrollTo(0, 0)")
    cdp.drain(0.3)
    shot = cdp.call("Page.captureScreenshot", format="png")
    cdp.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1], deviceScaleFactor=1,
             mobile=False)
    report.screenshot = shots / f"{name}.png"
    report.screenshot.write_bytes(base64.b64decode(shot["data"]))
    report.seconds = time.time() - start
    return report


def toc_pages() -> list[str]:
    sys.path.insert(0, str(ROOT / "tools"))
    from sync_notebooks import toc_files

    return [p.stem for p in toc_files(ROOT)]


def run_checks(html: Path, pages: list[str], shots: Path, timeout: float = 60.0,
               binary: str | None = None) -> list[PageReport]:
    shots.mkdir(parents=True, exist_ok=True)
    build_dir = html.parent
    reports = []
    with serve(html) as base, chromium(binary) as devtools:
        targets = json.load(urllib.request.urlopen(f"{devtools}/json/list", timeout=10))
        page_target = next(t for t in targets if t.get("type") == "page")
        cdp = CDP(page_target["webSocketDebuggerUrl"], timeout=timeout)
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.call(f"{domain}.enable")
            cdp.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                     deviceScaleFactor=1, mobile=False)
            for name in pages:
                if not (html / "book" / f"{name}.html").is_file():
                    reports.append(PageReport(name, "", errors=["page not built"]))
                    continue
                reports.append(check_page(cdp, base, name, build_dir, shots, timeout, html=html))
        finally:
            cdp.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--html", type=Path, default=ROOT / "_build" / "html", help="the built site")
    p.add_argument("--pages", nargs="*", help="page names (default: every page of _toc.yml)")
    p.add_argument("--screenshots", type=Path, default=None, help="default: <html>/../screenshots")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per page load")
    p.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    args = p.parse_args(argv)
    if not (args.html / "book").is_dir():
        sys.exit(f"{args.html}: no built book here (run make book first)")
    pages = args.pages or toc_pages()
    shots = args.screenshots or args.html.parent / "screenshots"
    reports = run_checks(args.html, pages, shots, args.timeout, args.chromium)
    width = max(len(r.name) for r in reports)
    print(f"{'page':<{width}}  result  notebook  images (expected)  math/mjx  seconds")
    for r in reports:
        print(f"{r.name:<{width}}  {'ok' if r.ok else 'FAIL':<6}  {r.notebook:<8}  {r.images:>6} "
              f"({r.expected_images:>3})      {r.math_elements:>4}/{r.mjx:<4} {r.seconds:6.1f}")
        for e in r.errors:
            print(f"    - {e}")
    failed = [r for r in reports if not r.ok]
    print(f"{len(reports) - len(failed)} passed, {len(failed)} failed (screenshots in {shots})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
