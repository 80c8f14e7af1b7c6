"""End-to-end tests of the status page: a real headless Chromium, driven by Playwright, against
the real daemon (the integration tests' ``daemon`` and ``services``, imported, not copied).

The browser is Debian's ``chromium`` (Playwright's own download cannot work here), started with
a fresh profile per test and without the background services that would reach for the
network. Under CI=true a missing ``chromium`` fails the test, as for any binary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from integration.conftest import (
    _no_unreaped_children,
    daemon,
    env,
    mark,
    require_binary,
    services,
)

__all__ = [
    "_no_unreaped_children",
    "browser",
    "daemon",
    "env",
    "mark",
    "require_binary",
    "services",
]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Browser:
    """One Chromium with a fresh profile; every page it opens reports its script errors."""

    context: BrowserContext
    errors: list[str] = field(default_factory=list)

    def open(self, url: str) -> Page:
        page = self.context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.goto(url)
        return page


def launch(playwright: Playwright, profile: Path, executable: str | Path) -> BrowserContext:
    """Chromium (``executable``: the binary, or a script that execs it) with a new profile."""
    context = playwright.chromium.launch_persistent_context(
        profile,
        executable_path=executable,
        args=CHROMIUM_FLAGS,
        headless=True,
        viewport={"width": 1280, "height": 800},
        color_scheme="light",
    )
    context.set_default_timeout(15_000)
    return context


@pytest.fixture
def browser(tmp_path: Path, require_binary: Callable[[str], str]) -> Iterator[Browser]:
    chromium = require_binary("chromium")
    with sync_playwright() as playwright:
        context = launch(playwright, tmp_path / "chromium-profile", chromium)
        seen = Browser(context)
        try:
            yield seen
        finally:
            context.close()
    # An exception in the page's script is a defect whatever the test looked at.
    assert not seen.errors, f"the page's script failed: {seen.errors}"
