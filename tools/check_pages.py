"""Look at the built book in a real browser: clipped code lines, rendered math, screenshots.

Usage: python tools/check_pages.py [BOOK_HTML] [--out FOLDER] [--full-page]

Opens every page under BOOK_HTML/notebooks and BOOK_HTML/book (default: _build/html) in headless
Chromium at 1280x900, with every http(s) request blocked, so the pages load as they would
offline. For each page it reports

- code blocks whose lines are clipped (a ``div.highlight pre`` wider than its box): code cells,
  collapsed ones included, fail the check; cell outputs and code blocks in the prose are only
  reported;
- whether MathJax typeset the page's math (``mjx-container`` elements for its ``.math`` ones);
- figures the page shows at less than 75 % of their size (their labels shrink with them);
- requests to the network the page attempted (all blocked);

and saves a screenshot of each page, as the reader first sees it, in FOLDER (default
_build/screenshots; ``--full-page`` for the whole length). It exits with status 1 when a code
cell is clipped or a page's math did not render.

Needs selenium (``pip install selenium``, not a dependency of the course) and Chromium with its
driver (Debian: ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

WIDTH, HEIGHT = 1280, 900
MATH_TIMEOUT_S = 20.0
SMALL_FIGURE = 0.75

# Every code block: clipped when its content is wider than its box. Collapsed cells (myst-nb's
# <details>) are opened first, so hidden inputs are measured too.
MEASURE_CODE = """
document.querySelectorAll('details').forEach(d => { d.open = true; });
return Array.from(document.querySelectorAll('div.highlight pre')).map(pre => ({
    cell: pre.closest('.cell_input') !== null,
    clipped: pre.scrollWidth > pre.clientWidth + 1,
    overflow: pre.scrollWidth - pre.clientWidth,
    first: (pre.innerText.split('\\n').find(l => l.length > 79) || pre.innerText).slice(0, 100),
}));
"""
MEASURE_MATH = """
return [document.querySelectorAll('.math').length,
        document.querySelectorAll('mjx-container').length];
"""
MEASURE_FIGURES = """
return Array.from(document.querySelectorAll('.cell_output img, figure img')).filter(
    img => img.naturalWidth > 0 && img.clientWidth > 0
).map(img => ({src: img.getAttribute('src'), natural: img.naturalWidth,
               shown: img.clientWidth}));
"""


@dataclass
class PageReport:
    """What one page showed."""

    page: str
    clipped_code: list[str] = field(default_factory=list)
    clipped_other: list[str] = field(default_factory=list)
    math: tuple[int, int] = (0, 0)
    small_figures: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.clipped_code) or (self.math[0] > 0 and self.math[1] == 0)


def browser():
    """Headless Chromium with http(s) blocked and network requests logged."""
    try:
        from selenium import webdriver
    except ImportError:
        sys.exit("check_pages.py needs selenium: pip install selenium "
                 "(and Chromium with its driver: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--allow-file-access-from-files", f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # The system's driver when there is one: otherwise selenium looks for one online.
    found = shutil.which("chromedriver")
    service = webdriver.ChromeService(executable_path=found) if found else None
    driver = webdriver.Chrome(options=options, service=service)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*"]})
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    return driver


def network_requests(driver) -> list[str]:
    """The http(s) URLs the page asked for since the last call (all of them were blocked)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.startswith(("http://", "https://")):
                urls.append(url)
    return sorted(set(urls))


def screenshot(driver, path: Path, full_page: bool) -> None:
    """The page as first seen (the top of it), or its whole length."""
    if not full_page:
        driver.save_screenshot(str(path))
        return
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))


def check_page(driver, html: Path, root: Path, out: Path, full_page: bool) -> PageReport:
    report = PageReport(str(html.relative_to(root)))
    driver.get(html.resolve().as_uri())
    deadline = time.monotonic() + MATH_TIMEOUT_S
    while True:
        report.math = tuple(driver.execute_script(MEASURE_MATH))
        if report.math[0] == 0 or report.math[1] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    time.sleep(0.5)  # let MathJax finish the page and the layout settle
    screenshot(driver, out / (report.page.replace("/", "__").removesuffix(".html") + ".png"),
               full_page)
    for block in driver.execute_script(MEASURE_CODE):
        if block["clipped"]:
            line = f"+{block['overflow']} px: {block['first']}"
            (report.clipped_code if block["cell"] else report.clipped_other).append(line)
    for img in driver.execute_script(MEASURE_FIGURES):
        if img["shown"] < SMALL_FIGURE * img["natural"]:
            report.small_figures.append(
                f"{img['src']}: {img['natural']} px shown at {img['shown']} px "
                f"({img['shown'] / img['natural']:.0%})")
    report.network = network_requests(driver)
    return report


def print_report(report: PageReport) -> None:
    found, typeset = report.math
    math = "no math" if not found else (
        f"math: {typeset} typeset of {found}" if typeset else f"MATH NOT RENDERED ({found})")
    status = "FAIL" if report.failed else "ok"
    print(f"{status:4} {report.page}: {len(report.clipped_code)} clipped code cells, "
          f"{len(report.clipped_other)} clipped outputs or prose code blocks, {math}, "
          f"{len(report.small_figures)} shrunken figures, {len(report.network)} blocked requests")
    for title, lines in (("clipped code cell", report.clipped_code),
                         ("clipped output or block", report.clipped_other),
                         ("shrunken figure", report.small_figures),
                         ("blocked request", report.network)):
        for line in lines:
            print(f"       {title}: {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("book", nargs="?", default="_build/html", type=Path,
                        help="the built book's HTML folder (default: _build/html)")
    parser.add_argument("--out", default=Path("_build/screenshots"), type=Path,
                        help="folder for the screenshots (default: _build/screenshots)")
    parser.add_argument("--full-page", action="store_true",
                        help="screenshot each page's whole length, not only its top")
    args = parser.parse_args(argv)
    pages = sorted(args.book.glob("notebooks/*.html")) + sorted(args.book.glob("book/*.html"))
    if not pages:
        sys.exit(f"no pages under {args.book}/notebooks or {args.book}/book: build the book first")
    args.out.mkdir(parents=True, exist_ok=True)
    driver = browser()
    try:
        reports = [check_page(driver, page, args.book, args.out, args.full_page)
                   for page in pages]
    finally:
        driver.quit()
    for report in reports:
        print_report(report)
    failed = [r.page for r in reports if r.failed]
    print(f"{len(reports)} pages, {len(failed)} failed; screenshots in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
