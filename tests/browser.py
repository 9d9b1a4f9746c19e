"""Open every page of a built book in headless Chromium and report what a reader would see broken."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("MEXIT_CHROMIUM") or shutil.which("chromium")
"""The browser the pages are opened in (None where none is installed): ``$MEXIT_CHROMIUM``, else
Debian's ``chromium`` on the path (Ubuntu's ``chromium-browser`` is a snap, which Playwright cannot
drive: name a Chrome or Chromium binary in ``$MEXIT_CHROMIUM`` there)."""
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
PAGE_WIDTH = 1300
"""The window a reader's page is checked in (px): every table must fit its article at this width."""
WIDE_TABLES = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  if (!article) return [];
  const width = article.getBoundingClientRect().width;
  return Array.from(article.querySelectorAll('table'))
    .map(t => [Math.round(t.getBoundingClientRect().width), Math.round(width), (t.innerText || '').slice(0, 60).replace(/\\s+/g, ' ')])
    .filter(([w, a]) => w > a + 1);
}"""
RAW_TEX = re.compile(r"\$\$|\\\(|\\\[|\\(frac|text|mathrm|partial|sum|theta|times|log)\b")


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)
    figures: int = 0
    images: int = 0
    math: int = 0
    text: str = ""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def check_pages(html: Path, screenshots: Path) -> list[PageReport]:
    """Every ``*.html`` page but Sphinx's own (search, genindex): console errors, failed requests,
    broken images, raw TeX left in the text; a screenshot of each page's first screen (what a reader
    sees on opening it) into ``screenshots``. Whole-page screenshots took 40% more of the check's time;
    every check above reads the whole page."""
    from playwright.sync_api import sync_playwright

    screenshots.mkdir(parents=True, exist_ok=True)
    pages = sorted(
        p.relative_to(html).as_posix()
        for p in html.rglob("*.html")
        if p.name not in ("search.html", "genindex.html") and "_static" not in p.parts
    )
    reports = []
    with serve(html) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name in pages:
            report = PageReport(name)
            page = browser.new_page(viewport={"width": PAGE_WIDTH, "height": 900})
            page.on("console", lambda m, r=report: r.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e, r=report: r.problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda q, r=report: r.problems.append(f"request failed: {q.url}"))
            page.on("response", lambda s, r=report: r.problems.append(f"HTTP {s.status}: {s.url}") if s.status >= 400 and not s.url.endswith("favicon.ico") else None)
            page.route(re.compile(r".*/favicon\.ico$"), lambda route: route.fulfill(status=204, body=""))
            # "load", not "networkidle" (half a second of quiet a page, a quarter of the check): the same
            # reports; a page that redirects (the book's index) is checked where it lands, once quiet.
            redirects = 'http-equiv="Refresh"' in (html / name).read_text(errors="replace")
            page.goto(f"{base}/{name}", wait_until="networkidle" if redirects else "load")
            page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : true")
            broken = page.evaluate(
                "() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
            )
            report.problems += [f"broken image: {src}" for src in broken]
            report.figures = page.evaluate("() => document.querySelectorAll('.cell_output img, .output img').length")
            report.images = page.evaluate(
                "() => Array.from(document.querySelectorAll('main img')).filter(i => i.complete && i.naturalWidth > 0).length"
            )
            report.problems += [f"table wider than the page ({w} px > {a} px): {head}" for w, a, head in page.evaluate(WIDE_TABLES)]
            report.math = page.evaluate("() => document.querySelectorAll('mjx-container').length")
            report.text = page.inner_text("main") if page.query_selector("main") else page.inner_text("body")
            tex = [match.group(0) for match in RAW_TEX.finditer(report.text)]
            if tex:
                report.problems.append(f"raw TeX in the text: {sorted(set(tex))}")
            page.screenshot(path=str(screenshots / f"{name.replace('/', '_').removesuffix('.html')}.png"))
            page.close()
            reports.append(report)
        browser.close()
    return reports
