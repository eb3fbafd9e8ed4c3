"""Open a report in a real browser (headless Chromium through Playwright) and say what went wrong.

    python -m mnist1d_lab.report.browser outputs/paper/index.html     # checks, and writes screenshot.png beside it

Uses the system's chromium (`shutil.which("chromium")`, or $CHROMIUM): nothing is downloaded. Playwright
is a test dependency, imported only here.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def chromium() -> str | None:
    """Path of the system's Chromium, or None."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    return None


def check(index: Path, screenshot: Path | None = None, timeout_ms: int = 30000) -> dict:
    """Load index.html from file:// and report {console_errors, page_errors, failed_requests, images
    [(src, naturalWidth)], table_ids, title}; save a full-page screenshot when asked."""
    from playwright.sync_api import sync_playwright

    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (apt-get install chromium)")
    out = {"console_errors": [], "page_errors": [], "failed_requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: out["console_errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out["page_errors"].append(str(e)))
            page.on("requestfailed", lambda r: out["failed_requests"].append(r.url))
            page.goto(Path(index).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
            out["images"] = page.evaluate(
                "() => Array.from(document.images).map(i => [i.getAttribute('src'), i.complete ? i.naturalWidth : 0])")
            out["table_ids"] = page.evaluate("() => Array.from(document.querySelectorAll('table')).map(t => t.id)")
            out["title"] = page.title()
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: check a report, write screenshot.png beside it, print what failed."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mnist1d_lab.report.browser <index.html>", file=sys.stderr)
        return 2
    index = Path(argv[0])
    result = check(index, index.with_name("screenshot.png"))
    broken = [src for src, width in result["images"] if not width]
    print(f"{len(result['images'])} images ({len(broken)} not decoded), tables {result['table_ids']}, "
          f"console errors {result['console_errors']}, page errors {result['page_errors']}, "
          f"failed requests {result['failed_requests']}; screenshot {index.with_name('screenshot.png')}")
    return 1 if broken or result["console_errors"] or result["page_errors"] or result["failed_requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
