"""A PNG of one page of the built documentation site, rendered by a headless Chromium.

    mkdocs build --strict --site-dir /tmp/site
    python benchmarks/docs_screenshot.py /tmp/site /tmp/docs-page.png --page api/objectives/ --anchor lit_dr.ANCE

Needs `pip install playwright` and a Chromium: `playwright install chromium` where its download host is reachable,
or a system build (Debian: `apt-get install chromium-headless-shell`, then `--chromium
/usr/bin/chromium-headless-shell`). The site is served from a local HTTP server (Material's search needs one).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import threading


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("site")
    p.add_argument("out")
    p.add_argument("--page", default="api/objectives/")
    p.add_argument("--anchor", default="lit_dr.ANCE", help="element id scrolled to the top (below the header)")
    p.add_argument("--chromium", default=None, help="a Chromium executable (default: playwright's own)")
    p.add_argument("--size", default="1280x1500")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args.site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    width, height = (int(x) for x in args.size.split("x"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/{args.page}", wait_until="networkidle")
        if args.anchor:
            page.evaluate("id => { document.getElementById(id).scrollIntoView(); window.scrollBy(0, -70); }",
                          args.anchor)
        page.screenshot(path=args.out)
        browser.close()
    server.shutdown()
    print(args.out)


if __name__ == "__main__":
    main()
