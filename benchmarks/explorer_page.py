"""Explorer pages as a reader meets them: file size, and the time a headless Chromium takes to open each one.

For every page given, side by side in one run: its size, the objects drawn, and the time from navigation to the
moment the page's script has drawn the first view (BokehJS parsed, the document built, the status line written), the
best of ``--repeats`` loads in one browser (a fresh page each time, the file in the page cache). Debian's Chromium,
headless, driven by playwright; screenshots of the first load with ``--screenshots DIR``.

    python benchmarks/explorer_page.py results/bioparticles/explorer.html [more.html ...] [--repeats 3]

The targets (issue 16): the default study's page under 10 MB and under 3 s. Results in benchmarks/README.md.
"""

import argparse
import shutil
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

READY = (
    "() => window.Bokeh && Bokeh.documents.length > 0 && "
    "Bokeh.documents[0].get_model_by_name('status').text.includes('drawn')"
)
DRAWN = "() => Bokeh.documents[0].get_model_by_name('status').text.match(/<b>(\\d+)<\\/b> of (\\d+)/).slice(1, 3)"


def load(browser, path: Path, screenshot: Path | None) -> tuple[float, list[str], list[str]]:
    """Seconds to the first drawn view, the drawn / on-map counts, and the console errors of one load."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    start = time.perf_counter()
    page.goto(path.resolve().as_uri())
    page.wait_for_function(READY, timeout=120_000)
    seconds = time.perf_counter() - start
    drawn = page.evaluate(DRAWN)
    if screenshot is not None:
        page.screenshot(path=str(screenshot))
    page.close()
    return seconds, drawn, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshots", type=Path, help="save a screenshot of each page's first load here")
    args = parser.parse_args()
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    rows = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--headless=new"])
        for path in args.pages:
            shot = None
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                shot = args.screenshots / f"{path.parent.name}-{path.stem}.png"
            times, drawn, errors = [], None, []
            for repeat in range(args.repeats):
                seconds, drawn, errors = load(browser, path, shot if repeat == 0 else None)
                times.append(seconds)
            rows.append((path, path.stat().st_size / 1e6, drawn, min(times), max(times), len(errors)))
        browser.close()
    print(f"{'page':60s} {'MB':>7s} {'drawn':>14s} {'best s':>7s} {'worst s':>7s} {'errors':>6s}")
    for path, size, drawn, best, worst, errors in rows:
        print(f"{str(path):60s} {size:7.2f} {drawn[0] + ' of ' + drawn[1]:>14s} {best:7.2f} {worst:7.2f} {errors:6d}")


if __name__ == "__main__":
    main()
