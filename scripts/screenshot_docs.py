"""Build the documentation site and screenshot its pages in headless Chromium, as a reader would.

Usage:
    python scripts/screenshot_docs.py --out DIR [--site DIR [--no-build]] [PAGE ...]

Builds the site with `mkdocs build --strict` into --site (a temporary folder by default), serves it
on localhost, and writes one PNG per page into --out, named after the page ("layers/dense/" ->
layers-dense.png). With no PAGE it takes the home page, a layer page with math and an API page.
Needs Debian's `chromium` (`apt-get install chromium`); the docs extra (`pip install -e ".[docs]"`).
Look at each PNG: the math is typeset (not `\\(` and `$$`), the figures show, the code is
highlighted, and the navigation on the left reads in order.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["", "layers/dense/", "api/check/"]
# As the machine's own notes advise: no background networking (the network is closed), no sandbox
# (it runs as root in containers), a fresh profile.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=10000",
]  # fmt: skip


def build(site: Path) -> None:
    subprocess.run(["mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT, check=True)


def serve(site: Path) -> tuple[http.server.HTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def screenshot(browser: str, url: str, png: Path, size: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
             f"--screenshot={png}", url],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", default=PAGES, help="site paths (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--site", type=Path, help="build the site here (default: a temp folder)")
    parser.add_argument("--size", default="1280,1600", help="window WIDTH,HEIGHT in pixels")
    parser.add_argument(
        "--no-build", action="store_true", help="serve the site already built in --site as it is"
    )
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("screenshot_docs: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as temp:
        site = args.site or Path(temp) / "site"
        if args.no_build:
            if args.site is None or not (args.site / "index.html").is_file():
                print("screenshot_docs: --no-build needs --site, a built site", file=sys.stderr)
                return 2
        else:
            build(site)
        server, base = serve(site)
        args.out.mkdir(parents=True, exist_ok=True)
        try:
            for page in args.pages:
                png = args.out / f"{page.strip('/').replace('/', '-') or 'home'}.png"
                screenshot(browser, base + page, png, args.size)
                print(f"{base + page} -> {png}")
        finally:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
