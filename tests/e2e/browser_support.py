"""Debian's headless Chromium for the browser tests, with every origin but the API server's blocked.

The browser is Debian's `chromium` (scripts/setup.sh installs it), driven by Playwright pointed at that
executable: Playwright's own browser download would need the internet these tests prove the pages do without.
The server is reached by a host name mapped to this machine, as on a real deployment.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def chromium(host: str) -> Iterator[Browser]:
    """Headless Chromium resolving `host` to 127.0.0.1; its absence fails the test, which would go unchecked."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: scripts/setup.sh installs Debian's (apt-get install chromium)")
    args = ["--disable-gpu", "--disable-quic", f"--host-resolver-rules=MAP {host} 127.0.0.1"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            browser.close()


def offline_context(browser: Browser, origin: str, **options) -> BrowserContext:
    """A browser context whose requests to any origin but `origin` are aborted as if the network were down."""
    context = browser.new_context(service_workers="block", **options)
    context.route("**/*", lambda route: route.continue_() if same_origin(route.request.url, origin)
                  else route.abort("internetdisconnected"))
    return context


def same_origin(url: str, origin: str) -> bool:
    parts = urlsplit(url)
    # data: and blob: URLs are made inside the page and never reach the network.
    return parts.scheme in ("data", "blob") or f"{parts.scheme}://{parts.netloc}" == origin
