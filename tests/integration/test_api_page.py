"""What the status page is served with and reads, through the real daemon's API: the page and
its files, the several-workloads history, the newest events, the daemon's own summary. The
page itself, in a browser, is tests/e2e/test_status_page.py's."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

from healthd.api import ui
from healthd.model import EventType

from .harness import DaemonProc, Services, connect, wait_for, write

ROOT = Path(__file__).parents[2]


def test_a_browser_gets_the_page_and_a_client_the_index(
    daemon: DaemonProc, services: Services
) -> None:
    daemon.start()
    client = connect(daemon)
    page = client.call("GET", "/", headers={"Accept": "text/html,application/xhtml+xml,*/*"})
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Everything the page loads is its own, and served.
    linked = re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text)
    assert sorted(linked) == ["/ui/app.css", "/ui/app.js", "/ui/icon.svg"]
    types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
    for path in linked:
        got = client.call("GET", path)
        assert got.status == 200, path
        assert got.headers["content-type"].startswith(types[path.rsplit(".", 1)[1]])
        assert got.text == resources.files("healthd.api").joinpath("page", path[4:]).read_text()
        # Nothing is fetched from elsewhere (the SVG namespace is a name, not a fetch).
        text = got.text.replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?://|//[a-z]", text), f"{path} names an outside address"

    # app.js is an ES module: what it imports, and what those import, is served too.
    seen, todo = set(), ["app.js"]
    while todo:
        name = todo.pop()
        seen.add(name)
        module = client.call("GET", f"/ui/{name}")
        assert module.status == 200, name
        todo += [m for m in re.findall(r'from "\./([\w-]+\.js)"', module.text) if m not in seen]
    assert len(seen) > 5
    assert seen == {n for n in ui.ASSETS if n.endswith(".js")}, "a module no page imports"

    for accept in (None, "*/*", "application/json"):
        index = client.call("GET", "/", headers={"Accept": accept} if accept else {})
        assert index.status == 200
        assert index.body["service"] == "healthd", accept
        assert "/v1/history" in index.body["endpoints"]


def test_only_the_page_s_own_files_are_served(daemon: DaemonProc) -> None:
    daemon.start()
    client = connect(daemon)
    for path in ("/ui/", "/ui/nope.js", "/ui/index.html.bak", "/ui/..%2F..%2Fapi%2Fui.py"):
        reply = client.call("GET", path)
        assert reply.status == 404, path
        assert reply.body["error"]["status"] == 404, path
    assert client.call("POST", "/ui/app.js").status == 405


def test_every_page_file_is_packaged() -> None:
    """``pip install .`` (not editable) ships only what package-data names: a file of the
    page left out would be a 500 on a real install and nowhere in the tests."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["healthd.api"]
    shipped = sorted(
        p.name
        for p in (ROOT / "src/healthd/api/page").iterdir()
        if any(fnmatch(f"page/{p.name}", g) for g in globs)
    )
    assert shipped == sorted([ui.PAGE, *ui.ASSETS])


def test_the_feed_knows_every_event_type() -> None:
    """The feed asks for "every type but check_fail" by name: a type the daemon gained and
    the page did not would never be shown while check failures are hidden."""
    feed = (ROOT / "src/healthd/api/page/feed.js").read_text()
    listed = re.search(r"const EVENT_TYPES = \[(.*?)\];", feed, re.S)
    assert listed, "feed.js lists EVENT_TYPES"
    assert re.findall(r'"([a-z_]+)"', listed.group(1)) == [t.value for t in EventType]


def test_several_histories_at_once(daemon: DaemonProc, services: Services) -> None:
    web = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=web.port)
    write(daemon, "db", "tcp", host="127.0.0.1", port=web.port)
    daemon.start()
    client = connect(daemon)
    for name in ("web", "db"):
        client.wait_status(name, lambda s: s["total_checks"] >= 3)

    got = client.get("/v1/history?workload=web&workload=gone&workload=db&workload=web&limit=2")
    assert [h["workload"] for h in got["histories"]] == ["web", "db"]  # asked order, once each
    assert got["unknown"] == ["gone"]
    for h in got["histories"]:
        assert len(h["results"]) == 2
        assert all(r["ok"] for r in h["results"])
        assert h["results"][0]["time"] >= h["results"][1]["time"]  # newest first
        one = client.get(f"/v1/workloads/{h['workload']}/history?limit=5")["results"]
        assert h["results"][0]["time"] in [r["time"] for r in one]

    for query, why in [
        ("", "name from 1 to 200"),
        ("?limit=2", "name from 1 to 200"),
        ("?" + "&".join(f"workload=w{i}" for i in range(201)), "name from 1 to 200"),
        ("?workload=web&limit=0", "limit must be"),
    ]:
        reply = client.call("GET", f"/v1/history{query}")
        assert reply.status == 400, query
        assert why in reply.body["error"]["message"], query


def test_newest_events_and_where_the_stream_goes_on(daemon: DaemonProc, services: Services) -> None:
    daemon.start()
    client = connect(daemon)
    for n in range(5):  # picked up by the config dir's watcher
        write(daemon, f"w{n}", "exec", target="false", auto_restart=False)
    wait_for(
        "five unhealthy events",
        lambda: len(client.get("/v1/events?type=unhealthy")["events"]) >= 5 or None,
        timeout=30,
    )
    everything = client.get("/v1/events?limit=1000")["events"]
    newest = client.get("/v1/events?order=newest&limit=3")
    assert [e["id"] for e in newest["events"]] == [e["id"] for e in everything[-3:]]
    assert newest["last_id"] >= everything[-1]["id"]
    oldest = client.get("/v1/events?order=oldest&limit=3")
    assert [e["id"] for e in oldest["events"]] == [e["id"] for e in everything[:3]]
    one = client.get("/v1/events?order=newest&limit=1&type=unhealthy&workload=w0")["events"]
    assert [(e["type"], e["workload"]) for e in one] == [("unhealthy", "w0")]
    for wrong in ("latest", ""):  # an empty order= is not the default: the enum has no ""
        reply = client.call("GET", f"/v1/events?order={wrong}")
        assert reply.status == 400
        assert "order must be oldest or newest" in reply.body["error"]["message"]
