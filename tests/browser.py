"""Helpers for the dashboard's browser tests: Debian's Chromium driven by Playwright.

No browser is downloaded (``playwright install`` is not used): the tests drive the system's
``/usr/bin/chromium``. A missing Chromium skips the tests on a developer's machine and fails them
under ``CI=true`` (as a missing engine does, see :func:`tests.engines.missing`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    ViewportSize,
    expect,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

from . import engines

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
REPO = Path(__file__).resolve().parent.parent
# Read at import: the autouse fixture of conftest.py removes MONAPI_* variables for each test.
ARTIFACTS = Path(
    os.environ.get("MONAPI_TEST_ARTIFACTS") or REPO / "test-artifacts" / "dashboard"
).resolve()

T = TypeVar("T")


@contextmanager
def chromium() -> Iterator[Browser]:
    """One headless Chromium for the caller (skipped, or failed under CI, when it is missing)."""
    if not os.access(CHROMIUM, os.X_OK):
        engines.missing("Chromium", f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            engines.missing("Chromium", f"{CHROMIUM} did not start: {exc}")
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watch:
    """What the pages of one browser context did: every request URL, console errors and
    uncaught page errors."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def attach(self, context: BrowserContext) -> None:
        context.on("request", self._request)
        context.on("page", self._page)
        for page in context.pages:
            self._page(page)

    def _request(self, req: Request) -> None:
        self.requests.append(req.url)

    def _page(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(f"{page.url}: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.console_errors.append(f"{msg.location.get('url', '')}: {msg.text}")


def new_context(
    browser: Browser, viewport: ViewportSize = DESKTOP, timezone_id: str | None = None
) -> tuple[BrowserContext, Watch]:
    """A fresh context (no cookies), desktop-sized unless told, with a short default timeout,
    watched."""
    context = browser.new_context(viewport=viewport, timezone_id=timezone_id)
    context.set_default_timeout(10_000)
    watch = Watch()
    watch.attach(context)
    return context, watch


# Chromium logs a page that answers 401/404/422 as a console error ("Failed to load resource").
EXPECTED_STATUS = re.compile(
    r"^http://127\.0\.0\.1:\d+/(?!assets/)\S*: Failed to load resource: "
    r"the server responded with a status of (401|404|422) "
)


@contextmanager
def watched_context(browser: Browser) -> Iterator[tuple[BrowserContext, Watch]]:
    """A fresh context (no cookies); on leaving, no script of any page it opened may have
    thrown, and the only console errors allowed are pages that answered a status a test asked
    for (EXPECTED_STATUS)."""
    ctx, watch = new_context(browser)
    try:
        yield ctx, watch
    finally:
        ctx.close()
    assert not watch.page_errors, watch.page_errors
    unexpected = [e for e in watch.console_errors if not EXPECTED_STATUS.search(e)]
    assert not unexpected, unexpected


def assert_log_clean(log: Path) -> None:
    """No view failed while a served monapi ran (the dashboard logs an unexpected error and
    shows a 500)."""
    bad = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
    errors = [line for line in log.read_text().splitlines() if bad.search(line)]
    assert not errors, "\n".join(errors)


def log_in(page: Page, base: str, username: str, password: str) -> None:
    """Sign in through the log-in form and wait for the overview."""
    page.goto(base + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("form button[type=submit]")
    expect(page).to_have_url(base + "/")


def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG in the artifact directory."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def no_horizontal_scroll(page: Page) -> tuple[int, int]:
    """(scrollWidth, innerWidth) of the page: the first must not exceed the second."""
    width, inner = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    return int(width), int(inner)


def eventually(check: Callable[[], T], ok: Callable[[T], bool], timeout: float = 5.0) -> T:
    """Call ``check`` until ``ok`` accepts its result or ``timeout`` seconds pass; the last
    result (workers see some changes only after their caches expire, within about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)
