"""Browser tests: Playwright for Python driving Debian's Chromium against the live test server.

Without a Chromium the tests are skipped with the reason, except under CI=true, where they fail:
CI must run them. Screenshots go to test-artifacts/screenshots/ (or $SCREENSHOT_DIR); with
UPDATE_DOCS_SCREENSHOTS=1 the ones the README shows are copied to docs/screenshots/ as well.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR") or ROOT / "test-artifacts" / "screenshots")
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
# The shots the README and docs/console.md show.
DOCUMENTED = {
    "connector-list",
    "connector-editor",
    "send-test-ok",
    "send-test-failed",
    "template-preview",
    "connector-narrow",
}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """Return the path of a Chromium to drive, or None."""
    for candidate in (
        os.environ.get("CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip the browser tests, or fail them under CI, where they must run."""
    if in_ci():
        pytest.fail(f"{reason}; CI must run the browser tests", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Return a headless Chromium, shared by the tests of one module."""
    path = find_chromium()
    if path is None:
        unavailable("no Chromium found: apt-get install chromium chromium-driver, or set CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright for Python is not installed: pip install -e '.[test]'")
    # Playwright's sync API keeps an event loop in this thread, so Django takes every ORM call
    # made here for one from async code; they are synchronous, so allow them while it runs.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=path, headless=True, args=CHROMIUM_ARGS
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Session:
    """One browser tab, with everything the server sent it and every CSP complaint it made."""

    def __init__(self, context: Any, base_url: str) -> None:
        self.context = context
        self.base_url = base_url
        self.page = context.new_page()
        self.responses: list[Any] = []
        self.problems: list[str] = []
        self.context.on("response", lambda response: self.responses.append(response))
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _console(self, message: Any) -> None:
        text = message.text
        # A refused request (403, 400) is logged as an error too; those the tests check themselves.
        if "Content Security Policy" in text or (
            message.type == "error" and not text.startswith("Failed to load resource")
        ):
            self.problems.append(f"console {message.type}: {text}")

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base_url + path)

    def log_in(self, username: str, password: str) -> None:
        self.goto("/login/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_url(self.base_url + "/")

    def screenshot(self, name: str, *, full_page: bool = False) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        if name in DOCUMENTED and os.environ.get("UPDATE_DOCS_SCREENSHOTS"):
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, DOCS_SCREENSHOTS / path.name)

    def bodies(self) -> Iterator[tuple[str, str]]:
        """Yield (url, text) for every response the server sent with a body."""
        for response in self.responses:
            try:
                body = response.body()
            except Exception:  # redirects and aborted loads have no body to read
                continue
            yield response.url, body.decode("utf-8", "replace")


@pytest.fixture
def session(browser: Any, live_server: Any) -> Iterator[Session]:
    """Return a fresh browser session (no cookies) on the live server, desktop-sized."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.set_default_timeout(15_000)
    tab = Session(context, live_server.url)
    yield tab
    context.close()
    assert not tab.problems, "\n".join(tab.problems)
