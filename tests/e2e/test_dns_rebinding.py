"""DNS rebinding in a real Chromium: a name the attacker controls resolves to 127.0.0.1
(``--host-resolver-rules``, what a rebinding DNS server does once the page has loaded), and
the page reads the API from its own origin. healthd answers 421 to that name, so the page gets
no data; the status page still works under the names the listener has.

The attack is driven as a top-level navigation to the rebound address, then a same-origin
fetch from that document: Chromium's private-network protections do not stand in the way of
either (the document itself was loaded from loopback), so what stops the read is healthd's
answer, which the test checks is healthd's (its Server header and JSON error, and its log).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect, sync_playwright

from integration.harness import DaemonProc, Services, connect, write

from .conftest import CHROMIUM_FLAGS

EVIL = "evil.example"
SECRET = "rebind-secret-value"


@pytest.fixture
def rebound_browser(
    tmp_path: Path, require_binary: Callable[[str], str]
) -> Iterator[BrowserContext]:
    chromium = require_binary("chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=chromium,
            args=[*CHROMIUM_FLAGS, f"--host-resolver-rules=MAP {EVIL} 127.0.0.1"],
            headless=True,
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


def started(daemon: DaemonProc, services: Services) -> int:
    web = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=web.port)
    write(daemon, "job", "exec", command=("echo", f"--password={SECRET}"))
    daemon.start()
    client = connect(daemon)
    client.wait_status("web", lambda s: s["healthy"])
    return int(str(client.where).rsplit(":", 1)[1])


# Read what a rebinding page would, from its own origin; returns [[status, body], ...].
READ_ALL = """async () => {
    const out = [];
    for (const path of ["/v1/status", "/v1/workloads", "/v1/events", "/v1/sinks"]) {
        try {
            const answer = await fetch(path, {cache: "no-store"});
            out.push([answer.status, await answer.text()]);
        } catch (error) {
            out.push([0, String(error)]);
        }
    }
    return out;
}"""


def test_a_rebound_name_gets_healthds_421_and_no_data(
    rebound_browser: BrowserContext, daemon: DaemonProc, services: Services
) -> None:
    port = started(daemon, services)
    page = rebound_browser.new_page()
    answer = page.goto(f"http://{EVIL}:{port}/v1/status")
    assert answer is not None
    assert answer.status == 421
    assert answer.headers["server"].startswith("healthd/")  # healthd's answer, not Chromium's
    assert answer.json()["error"]["status"] == 421
    assert "web" not in answer.text()
    reads = page.evaluate(READ_ALL)
    assert [status for status, _ in reads] == [421] * 4, reads
    assert all(SECRET not in body and '"workload"' not in body for _, body in reads)
    (line,) = daemon.events("api_host_refused")  # the daemon saw them
    assert f"host={EVIL}" in line


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_status_page_and_its_feed_work_under_the_listeners_names(
    rebound_browser: BrowserContext, daemon: DaemonProc, services: Services, host: str
) -> None:
    port = started(daemon, services)
    page = rebound_browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://{host}:{port}/")
    expect(page.locator('#rows tr[data-workload="web"]')).to_be_visible()
    expect(page.locator("#live")).to_have_attribute("data-status", "live")  # the SSE stream
    expect(page.locator('#feed li[data-type="daemon_started"]')).to_have_count(1)
    assert errors == []
    assert daemon.events("api_host_refused") == []
