"""The status page in a real browser, against the real daemon watching real services.

Each test opens ``/`` once and never reloads it: what it sees change, it sees through the
event stream and the page's own reading of the API. ``window.healthdLoaded`` is set once at
the start and checked at the end, since a reload would clear it.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from integration.harness import (
    DaemonProc,
    Services,
    connect,
    free_port,
    wait_for,
    with_token,
    write,
)

from .conftest import Browser

SOON = 10_000  # ms: "within a few seconds", with room for a busy CI host


def mark_loaded(page: Page) -> None:
    page.evaluate("window.healthdLoaded = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.healthdLoaded === true"), "the page was reloaded"


def row(page: Page, name: str) -> Locator:
    return page.locator(f'#rows tr[data-workload="{name}"]')


def test_a_break_shows_live_and_pause_needs_the_token(
    tmp_path: Path, browser: Browser, daemon: DaemonProc, services: Services
) -> None:
    """The issue's story: healthy workloads; one is killed for real and its badge turns
    unhealthy with the event in the feed, without a reload; pause asks for the token once,
    and the state shows paused; a screenshot is kept."""
    token = with_token(daemon)
    web = services.start("http")
    cache = services.start("tcp")
    write(daemon, "web", "http", host="127.0.0.1", port=web.port, retries=2, auto_restart=False)
    write(daemon, "cache", "tcp", host="127.0.0.1", port=cache.port, auto_restart=False)
    daemon.start()
    page = browser.open(daemon.api_url() + "/")
    mark_loaded(page)

    expect(page.locator("#host")).not_to_have_text("…")
    for name in ("web", "cache"):
        expect(row(page, name).locator(".badge")).to_have_attribute("data-state", "healthy")
    expect(page.locator("#live")).to_have_attribute("data-status", "live")
    expect(row(page, "web").locator("td.col-check")).to_contain_text(f"127.0.0.1:{web.port}")

    web.kill()
    expect(row(page, "web").locator(".badge")).to_have_attribute(
        "data-state", "unhealthy", timeout=SOON
    )
    unhealthy = page.locator('#feed li[data-type="unhealthy"][data-workload="web"]')
    expect(unhealthy).to_have_count(1, timeout=SOON)
    expect(row(page, "web").locator("td.col-error")).not_to_be_empty()
    # unhealthy first by default
    expect(page.locator("#rows tr[data-workload]").first).to_have_attribute("data-workload", "web")
    expect(page.locator('#counts .badge[data-state="unhealthy"]')).to_have_text("1 unhealthy")

    row(page, "web").locator(".open").click()
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#detail-title")).to_have_text("web")
    expect(dialog.locator("#detail-config")).to_contain_text(str(web.port))
    expect(dialog.locator("#detail-results tr").first).to_be_visible()
    expect(dialog.locator('#detail-events li[data-type="unhealthy"]')).to_have_count(1)

    dialog.locator("#pause-reason").fill("disk swap, back at 3")
    dialog.locator("#act-pause").click()
    ask = page.locator("#token-dialog")
    expect(ask).to_be_visible()
    ask.locator("#token-input").fill(token)
    ask.locator("#token-input").press("Enter")  # as a person would: Enter uses the token
    expect(dialog.locator("#detail-badge")).to_have_attribute("data-state", "paused")
    expect(row(page, "web").locator(".badge")).to_have_attribute("data-state", "paused")
    expect(page.locator('#feed li[data-type="paused"][data-workload="web"]')).to_have_count(1)
    daemon.wait_status("web", lambda s: s.get("paused_reason") == "disk swap, back at 3")
    expect(dialog.locator("#detail-status")).to_contain_text("disk swap, back at 3")
    # The token is kept for this tab: resume does not ask again.
    dialog.locator("#act-resume").click()
    expect(dialog.locator("#detail-badge")).to_have_attribute("data-state", "unhealthy")
    expect(ask).to_be_hidden()
    daemon.wait_status("web", lambda s: not s.get("paused"))

    dialog.locator("#act-check").click()
    expect(dialog.locator("#detail-msg")).to_contain_text("check failed", timeout=SOON)

    shot = tmp_path / "status-page.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_not_reloaded(page)


def test_a_restarted_workload_comes_back_healthy_on_the_page(
    browser: Browser, daemon: DaemonProc, services: Services
) -> None:
    api = services.new("http")
    command = api.start_argv()
    write(
        daemon,
        "api",
        "http",
        host="127.0.0.1",
        port=api.port,
        retries=2,
        auto_restart=True,
        restart_command=command,
        restart_delay=1.0,
    )
    subprocess.run(command, env=services.env, check=True, timeout=30)
    daemon.start()
    page = browser.open(daemon.api_url() + "/")
    mark_loaded(page)
    badge = row(page, "api").locator(".badge")
    expect(badge).to_have_attribute("data-state", "healthy")

    api.kill()
    for kind in ("unhealthy", "restart", "healthy"):
        expect(page.locator(f'#feed li[data-type="{kind}"][data-workload="api"]')).to_have_count(
            1, timeout=SOON
        )
    expect(badge).to_have_attribute("data-state", "healthy", timeout=SOON)
    expect(row(page, "api").locator("td.col-restarts")).to_have_text(re.compile(r"^1 / "))
    # the sparkline marks the failed checks
    expect(row(page, "api").locator("svg.spark circle").first).to_be_attached(timeout=SOON)
    assert_not_reloaded(page)


def test_the_feed_can_hide_check_failures(browser: Browser, daemon: DaemonProc) -> None:
    """A workload failing 50 checks a second: its check failures neither push its unhealthy
    event out of the feed nor, once hidden, bury it; a page opened later remembers the choice
    and still shows the event, though a hundred newer check failures came after it."""
    write(daemon, "noisy", "tcp", host="127.0.0.1", port=free_port(), retries=1, interval=0.02,
          auto_restart=False)  # fmt: skip
    daemon.start()
    page = browser.open(daemon.api_url() + "/")
    mark_loaded(page)
    feed = page.locator("#feed")
    checks = feed.locator('li[data-type="check_fail"]')
    unhealthy = feed.locator('li[data-type="unhealthy"][data-workload="noisy"]')
    expect(unhealthy).to_be_visible(timeout=SOON)
    expect(checks.first).to_be_visible()

    page.locator("#feed-checks").uncheck()
    expect(feed.locator('li[data-type="check_fail"]:visible')).to_have_count(0)
    expect(unhealthy).to_be_visible()

    client = connect(daemon)
    wait_for(
        "350 check failures",
        lambda: len(client.get("/v1/events?type=check_fail&limit=1000")["events"]) > 350,
        timeout=30,
    )
    expect(checks).to_have_count(300, timeout=SOON)  # the feed keeps the latest 300 of them
    expect(unhealthy).to_have_count(1)  # and the state changes apart
    expect(feed.locator('li[data-type="daemon_started"]')).to_have_count(1)

    later = browser.open(daemon.api_url() + "/")
    expect(later.locator("#feed-checks")).not_to_be_checked()
    again = later.locator('#feed li[data-type="unhealthy"][data-workload="noisy"]')
    expect(again).to_be_visible(timeout=SOON)
    expect(later.locator('#feed li[data-type="check_fail"]').first).to_be_attached()
    expect(later.locator('#feed li[data-type="check_fail"]:visible')).to_have_count(0)
    later.locator("#feed-checks").check()
    expect(later.locator('#feed li[data-type="check_fail"]').first).to_be_visible()
    assert_not_reloaded(page)


def test_the_feed_resumes_after_the_connection_drops(
    browser: Browser, daemon: DaemonProc, services: Services
) -> None:
    """The daemon is killed under the page and started again on the same port: the stream
    reconnects by itself, from the last event it saw, and shows each event once."""
    port = free_port()
    web = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=web.port)
    daemon.start("--listen", f"127.0.0.1:{port}")
    streams: list[dict[str, str]] = []
    page = browser.context.new_page()
    page.on("pageerror", lambda exc: browser.errors.append(str(exc)))
    page.on(
        "request", lambda r: streams.append(r.headers) if "/v1/events/stream" in r.url else None
    )
    url = daemon.api_url()
    assert url == f"http://127.0.0.1:{port}"
    page.goto(url + "/")
    mark_loaded(page)
    expect(page.locator("#live")).to_have_attribute("data-status", "live")
    started = page.locator('#feed li[data-type="daemon_started"]')
    expect(started).to_have_count(1)
    first_id = int(started.first.get_attribute("data-event-id") or 0)

    daemon.kill()
    expect(page.locator("#live")).to_have_attribute("data-status", "down", timeout=SOON)
    expect(page.locator("#notice")).to_contain_text("cannot reach healthd", timeout=SOON)

    daemon.start("--listen", f"127.0.0.1:{port}")
    assert daemon.api_url() == url
    expect(page.locator("#live")).to_have_attribute("data-status", "live", timeout=20_000)
    expect(started).to_have_count(2, timeout=SOON)
    expect(page.locator("#notice")).to_be_hidden(timeout=SOON)
    ids = [
        int(i) for i in page.locator("#feed li").evaluate_all("l => l.map(e => e.dataset.eventId)")
    ]
    assert len(ids) == len(set(ids)), f"an event is shown twice: {ids}"
    assert max(ids) > first_id
    resumed = [h for h in streams if "last-event-id" in h]
    assert resumed, f"no reconnection sent Last-Event-ID: {streams}"
    assert int(resumed[-1]["last-event-id"]) >= first_id
    assert_not_reloaded(page)


@contextlib.contextmanager
def accepting() -> Iterator[int]:
    """A TCP port that accepts and closes every connection, with a backlog for 5,000 first
    checks within the daemon's first second (the demo service's 100 overflows)."""
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                conn.close()

    server.settimeout(0.2)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_five_thousand_workloads_render_only_what_is_in_view(
    browser: Browser, daemon: DaemonProc
) -> None:
    with accepting() as port:
        five_thousand(browser, daemon, port)


def five_thousand(browser: Browser, daemon: DaemonProc, live_port: int) -> None:
    dead = free_port()
    names = [f"w-{i:04d}" for i in range(5000)]
    for name in names:
        broken = name == "w-2345"
        port = dead if broken else live_port
        retries = 1 if broken else 3  # unhealthy at its first check
        write(
            daemon,
            name,
            "tcp",
            host="127.0.0.1",
            port=port,
            interval=30.0,
            timeout=2.0,
            retries=retries,
        )
    daemon.start()
    url = daemon.api_url(timeout=60) + "/"
    began = time.monotonic()
    page = browser.open(url)
    expect(page.locator("#shown-count")).to_have_text("(5000)", timeout=30_000)
    print(f"5,000 workloads: table shown {time.monotonic() - began:.2f} s after opening the page")
    mark_loaded(page)
    rendered = page.locator("#rows tr[data-workload]")
    assert 0 < rendered.count() < 100, f"{rendered.count()} rows in the DOM"
    # the broken one is first (unhealthy before healthy), once it is judged
    expect(rendered.first).to_have_attribute("data-workload", "w-2345", timeout=SOON)
    healthy = page.locator('#counts .badge[data-state="healthy"]')
    expect(healthy).to_have_text("4999 healthy", timeout=SOON)

    page.locator("#table-wrap").evaluate("w => { w.scrollTop = w.scrollHeight }")
    expect(row(page, "w-4999")).to_be_visible()
    assert rendered.count() < 100
    assert int(page.locator("#workloads").get_attribute("aria-rowcount") or 0) == 5001

    page.locator("#filter").fill("w-0042")
    expect(page.locator("#shown-count")).to_have_text("(1 of 5000)")
    expect(rendered).to_have_count(1)
    page.locator("#filter").fill("")
    page.locator('th[data-key="name"] button').click()
    expect(rendered.first).to_have_attribute("data-workload", "w-0000")
    page.locator('th[data-key="name"] button').click()
    expect(rendered.first).to_have_attribute("data-workload", "w-4999")
    expect(page.locator('th[data-key="name"]')).to_have_attribute("aria-sort", "descending")
    assert_not_reloaded(page)


def test_keyboard_phone_and_colour_schemes(
    browser: Browser, daemon: DaemonProc, services: Services
) -> None:
    web = services.start("http")
    for name in ("alpha", "bravo", "charlie"):
        write(daemon, name, "http", host="127.0.0.1", port=web.port)
    daemon.start()
    page = browser.open(daemon.api_url() + "/")
    expect(page.locator("#rows tr[data-workload]")).to_have_count(3)

    # keyboard: "/" to the filter, Tab into the table, arrows between rows, Enter, Escape
    page.keyboard.press("/")
    expect(page.locator("#filter")).to_be_focused()
    # then the state filter, the eight sort buttons, and the first row
    for _ in range(10):
        page.keyboard.press("Tab")
    first = page.locator("#rows tr[data-workload] .open").first
    expect(first).to_be_focused()
    first_name = first.text_content()
    page.keyboard.press("ArrowDown")
    second = page.locator("#rows tr[data-workload] .open").nth(1)
    expect(second).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text(second.text_content() or "")
    assert second.text_content() != first_name
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(second).to_be_focused()

    def background() -> tuple[int, ...]:
        colour = page.evaluate("getComputedStyle(document.body).backgroundColor")
        return tuple(int(x) for x in re.findall(r"\d+", colour)[:3])

    assert sum(background()) > 600, background()  # light
    page.emulate_media(color_scheme="dark")
    assert sum(background()) < 150, background()  # dark
    badge = page.locator("#rows .badge").first
    text_colour = badge.evaluate("b => getComputedStyle(b).color")
    assert text_colour != "rgb(29, 122, 58)", "the badge kept its light-scheme colour"

    # a phone: no sideways scrolling of the page, the columns that matter most
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the phone"
    expect(page.locator("th.col-error")).to_be_hidden()
    expect(page.locator("#rows tr[data-workload] .badge").first).to_be_visible()
    expect(page.locator("#feed-section")).to_be_visible()


def test_empty_and_error_states_are_messages_not_blank(
    browser: Browser, daemon: DaemonProc
) -> None:
    daemon.start()
    page = browser.open(daemon.api_url() + "/")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#empty")).to_contain_text("No workloads are configured")

    # A workload appears by itself once the daemon reloads its config dir.
    write(daemon, "late", "exec", target="false", auto_restart=False)
    expect(row(page, "late").locator(".badge")).to_have_attribute(
        "data-state", "unhealthy", timeout=20_000
    )
    expect(page.locator("#empty")).to_be_hidden()

    # No token is configured: pause cannot work, and says why.
    row(page, "late").locator(".open").click()
    page.locator("#act-pause").click()
    expect(page.locator("#detail-msg")).to_contain_text("none is configured")
    expect(page.locator("#token-dialog")).to_be_hidden()
    page.keyboard.press("Escape")

    # A new file that does not load: a workload in the config error state, and where.
    (daemon.config_dir / "bad.yaml").write_text("workload: bad\ntype: exec\ninterval: soon\n")
    expect(row(page, "bad").locator(".badge")).to_have_attribute(
        "data-state", "config_error", timeout=20_000
    )
    expect(row(page, "bad").locator(".badge")).to_have_text("config error")
    row(page, "bad").locator(".open").click()
    expect(page.locator("#detail-config")).to_contain_text("bad.yaml:3", timeout=SOON)
    expect(page.locator("#act-pause")).to_be_disabled()  # not monitored: nothing to pause
    page.keyboard.press("Escape")
    # A loaded file broken on disk: it runs on, and its detail says what is wrong.
    (daemon.config_dir / "late.yaml").write_text("workload: late\ntype: exec\nretries: many\n")
    expect(page.locator('#feed li[data-type="config_error"]')).not_to_have_count(0, timeout=SOON)
    row(page, "late").locator(".open").click()
    expect(page.locator("#detail-config")).to_contain_text("late.yaml:3", timeout=SOON)
    expect(page.locator("#detail-config")).to_contain_text("running on the last good config")
    page.keyboard.press("Escape")

    status = json.loads((daemon.status_dir / "statuses.json").read_text())
    assert [s["workload"] for s in status] == ["late"]  # "bad" never loaded: the page's own row
    daemon.kill()
    expect(page.locator("#notice")).to_contain_text("cannot reach healthd", timeout=SOON)
    expect(page.locator("#live")).to_have_attribute("data-status", "down")
