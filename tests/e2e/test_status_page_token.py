"""The status page on a listener that is not loopback, where even reading needs the token.

The daemon and the browser both run in a network namespace that has only its own loopback
device, with 10.88.0.1 added to it: an address healthd does not take for loopback, so it
wants the token for every call but /healthz and the page's own files, and nothing can leave
the machine. Playwright drives Chromium through a pipe, so it reaches it in the namespace.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from faults.targets import netns, script
from integration.harness import DaemonProc, with_token, write

from .conftest import launch

ADDRESS = "10.88.0.1"


def test_the_page_asks_for_the_token_once_and_then_reads_and_acts(
    tmp_path: Path, env: dict[str, str], require_binary: Callable[[str], str]
) -> None:
    ip, chromium = require_binary("ip"), require_binary("chromium")
    with netns(ip, "page") as ns:
        inside = [ip, "netns", "exec", ns]
        subprocess.run([ip, "-n", ns, "addr", "add", f"{ADDRESS}/32", "dev", "lo"], check=True)
        in_ns = script(tmp_path / "chromium-in-ns", f'exec {" ".join(inside)} {chromium} "$@"\n')
        daemon = DaemonProc(tmp_path / "config", tmp_path / "status", env, tmp_path / "d.log")
        daemon.wrap = lambda argv: [*inside, *argv]
        daemon.config_dir.mkdir()
        token = with_token(daemon)
        write(daemon, "job", "exec", target="true")
        errors: list[str] = []
        try:
            daemon.start("--listen", f"{ADDRESS}:9780")
            url = daemon.api_url()
            with sync_playwright() as playwright:
                context = launch(playwright, tmp_path / "profile", in_ns)
                page = context.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url + "/")  # the page itself needs no token

                ask = page.locator("#token-dialog")
                expect(ask).to_be_visible()
                expect(ask.locator("#token-why")).to_contain_text("Authorization: Bearer")
                ask.locator("#token-input").fill("not-the-token")
                ask.locator("#token-input").press("Enter")
                # asked again, with the reason: a wrong token reads nothing
                expect(ask.locator("#token-why")).to_contain_text("wrong API token")
                expect(ask).to_be_visible()
                ask.locator("#token-input").fill(token)
                ask.locator("#token-input").press("Enter")

                badge = page.locator('#rows tr[data-workload="job"] .badge')
                expect(badge).to_have_attribute("data-state", "healthy")
                expect(page.locator("#live")).to_have_attribute("data-status", "live")
                page.locator('#rows tr[data-workload="job"] .open').click()
                page.locator("#act-pause").click()
                expect(page.locator("#detail-badge")).to_have_attribute("data-state", "paused")
                expect(ask).to_be_hidden()
                expect(page.locator('#feed li[data-type="paused"]')).to_have_count(1)
                context.close()
        finally:
            daemon.kill()
    assert not errors, f"the page's script failed: {errors}"
