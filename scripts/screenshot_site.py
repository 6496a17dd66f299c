"""Take the picture of the documentation site's start page, docs/images/site-home.png.

Build the site first (`make docs`, or `mkdocs build --strict`, into site/); this serves site/ on a local port and
photographs its start page in a headless Chromium through Playwright (the `demo` extra installs Playwright; the
browser is the system's Chromium, as in the Space's browser test).

    python scripts/screenshot_site.py [--site site] [--output docs/images/site-home.png] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def serve(folder: Path) -> http.server.ThreadingHTTPServer:
    """An HTTP server of ``folder`` on a free local port, answering in a background thread."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A static-file handler that logs nothing."""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


def screenshot(site: Path, output: Path, chromium: str, width: int = 1280, height: int = 900) -> Path:
    """Photograph ``site``'s start page at ``width`` x ``height`` CSS pixels into ``output`` (PNG); returns it."""
    from playwright.sync_api import sync_playwright

    if not (site / "index.html").is_file():
        raise FileNotFoundError(f"--site: no index.html in {site}; build the site first (make docs)")
    output.parent.mkdir(parents=True, exist_ok=True)
    server = serve(site)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html", wait_until="networkidle")
            page.screenshot(path=str(output))
            browser.close()
    finally:
        server.shutdown()
    return output


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", default=str(ROOT / "site"), help="the built site")
    parser.add_argument("--output", default=str(ROOT / "docs" / "images" / "site-home.png"), help="the PNG to write")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    args = parser.parse_args(argv)
    return screenshot(Path(args.site), Path(args.output), args.chromium)


if __name__ == "__main__":
    print(main())
