"""Render a self-contained HTML file in real headless Chromium and report what happened.

A helper for tests (not a test file). It uses the system Chromium through the Playwright
client, never Playwright's downloaded browsers, so it works on machines without internet:

    apt-get install chromium   # or point $KDMEM_CHROMIUM at any Chromium binary
    pip install playwright     # the `test` extra; do not run `playwright install`

Typical use in a test:

    require_browser()
    page = render_page(tmp_path / "report.html", screenshot=tmp_path / "report.png")
    assert not page.page_errors and not page.blocked_requests
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Headless in a container, on a closed network. --no-sandbox: we usually run as root, where
# Chromium refuses its sandbox. The networking flags stop Chromium's own background traffic
# (updates, sync, field trials), which otherwise floods a closed network with refused
# connections; page.route below cannot see that traffic, it only sees the page's requests.
# --disable-dev-shm-usage: container /dev/shm is often 64 MB, too small for rendering.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# Everything the page can learn about itself, gathered in one round trip after `load`.
# window.__kdmem_pwned is the marker XSS payloads in tests set; undefined comes back as None.
# An image that failed to load (or was blocked) has naturalWidth 0. Lazy images below the fold
# have not loaded yet either, so they are switched to eager and awaited first: otherwise they
# would read as broken.
_INSPECT_JS = """async () => {
    const pending = Array.from(document.images).filter(img => !img.complete);
    pending.forEach(img => { img.loading = 'eager'; });
    await Promise.all(pending.map(img => img.decode().catch(() => null)));
    return {
        title: document.title,
        section_ids: Array.from(document.querySelectorAll('section'), s => s.id),
        text: document.body ? document.body.innerText : '',
        window_flags: window.__kdmem_pwned,
        script_count: document.scripts.length,
        broken_images: Array.from(document.images)
            .filter(img => img.naturalWidth === 0)
            .map(img => (img.getAttribute('src') || '').slice(0, 80)),
    };
}"""


@dataclass
class RenderedPage:
    title: str
    console_errors: list[str]  # console messages of type "error", including failed loads
    page_errors: list[str]  # uncaught exceptions ("pageerror")
    dialogs: list[str]  # alert/confirm/prompt, as "type: message"; all were dismissed
    blocked_requests: list[str]  # URLs the page tried to fetch that are not file: or data:
    section_ids: list[str]  # id of every <section>, in document order ("" if it has none)
    text: str  # document.body.innerText
    window_flags: Any  # window.__kdmem_pwned, None when undefined
    script_count: int  # number of <script> elements
    broken_images: list[str]  # src (first 80 chars) of each <img> with naturalWidth 0


def chromium_path() -> str | None:
    """$KDMEM_CHROMIUM if set, else chromium / chromium-browser from PATH."""
    return os.environ.get("KDMEM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> str:
    """Skip the calling test when there is no browser, or fail it when CI demands one.

    CI sets KDMEM_REQUIRE_BROWSER=1 so a missing browser is an error there, not a quiet skip.
    Returns the Chromium path.
    """
    missing = None
    if importlib.util.find_spec("playwright") is None:
        missing = "no Playwright: pip install -e '.[test]' (or pip install playwright)"
    elif (path := chromium_path()) is None:
        missing = "no Chromium: apt-get install chromium, or set KDMEM_CHROMIUM"
    if missing is None:
        return path
    if os.environ.get("KDMEM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{missing} (KDMEM_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(missing)


def render_page(html_path: Path, screenshot: Path | None = None) -> RenderedPage:
    """Load html_path in headless Chromium, with the network cut off, and inspect the result."""
    # Imported here so that test modules importing this helper still collect without Playwright.
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("no Chromium found; call require_browser() first")

    console_errors: list[str] = []
    page_errors: list[str] = []
    dialogs: list[str] = []
    blocked: list[str] = []

    def route(route):
        # A self-contained file may only read itself and data: URIs; anything else is recorded
        # and refused, so a test sees the attempt without any real traffic.
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    def dialog(d):
        # An unhandled dialog would block the page; dismiss it, but keep a record.
        dialogs.append(f"{d.type}: {d.message}")
        d.dismiss()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            # The route sits on the context so popups opened by the page are covered too.
            context = browser.new_context()
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(f"{e.name}: {e.message}"))
            page.on("dialog", dialog)
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load")
            info = page.evaluate(_INSPECT_JS)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    return RenderedPage(
        title=info["title"],
        console_errors=console_errors,
        page_errors=page_errors,
        dialogs=dialogs,
        blocked_requests=blocked,
        section_ids=info["section_ids"],
        text=info["text"],
        window_flags=info.get("window_flags"),  # an undefined property may be left out
        script_count=info["script_count"],
        broken_images=info["broken_images"],
    )
