"""The real daemon's API against its own OpenAPI document, with schemathesis: every route,
method, parameter, body and answer, and the calls the document does not allow, generated and
checked by its CLI (the pytest plugin's ``from_fixture`` does not work on pytest 9.2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .harness import DaemonProc, Services, free_port, write, write_token

TOKEN = "schema-test-token"
# Enough to reach every route, status and link, small enough for well under a minute.
MAX_EXAMPLES = 30
# Warnings fail the run: without this, a run whose every call was refused (a wrong token, a
# 404 for every workload name) would pass having tested nothing.
CONFIG = "[warnings]\nfail-on = true\n"
STREAM = "/v1/events/stream"


def start(daemon: DaemonProc, services: Services, tmp_path: Path) -> str:
    """The daemon with a token, one workload in each kind of state; returns its URL."""
    token_file = write_token(tmp_path / "token", TOKEN)
    daemon.daemon_config.write_text(f"api:\n  token_file: {token_file}\n")
    web = services.start("http")
    write(daemon, "web", "http", port=web.port, host="127.0.0.1", retries=1)
    write(daemon, "db", "tcp", port=free_port(), host="127.0.0.1", retries=1)
    write(daemon, "off", "tcp", port=free_port(), host="127.0.0.1", enabled=False)
    (daemon.config_dir / "broken.yaml").write_text("workload: broken\ntype: tcp\nport: 0\n")
    daemon.start()
    url = daemon.api_url()
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    daemon.wait_status("db", lambda s: s["state"] == "unhealthy")
    return url


def schemathesis(
    tmp_path: Path, url: str, token: str, *args: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALTHD_", "SCHEMATHESIS_"))}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from schemathesis.cli import schemathesis; schemathesis()",
            "--config-file",
            str(config),
            "run",
            f"{url}/v1/openapi.json",
            "--checks",
            "all",
            "-H",
            f"Authorization: Bearer {token}",
            "--no-color",
            "--report-dir",
            str(tmp_path / "schemathesis-reports"),
            # An event stream never ends, and schemathesis reads an answer whole: it would
            # wait for ever. test_api_events.py reads the stream as a client does.
            "--exclude-path",
            STREAM,
            *args,
        ],
        cwd=tmp_path,  # its cache (.hypothesis) goes here, not into the repo
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_every_route_conforms_to_the_openapi_document(
    daemon: DaemonProc, services: Services, tmp_path: Path
) -> None:
    url = start(daemon, services, tmp_path)
    run = schemathesis(tmp_path, url, TOKEN, "--max-examples", str(MAX_EXAMPLES))
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    # Left out of the run above, but documented all the same.
    status, doc = call(f"{url}/v1/openapi.json")
    assert "text/event-stream" in doc["paths"][STREAM]["get"]["responses"]["200"]["content"]
    assert "No issues found" in run.stdout, run.stdout
    assert "event=api_handler_failed" not in daemon.log()

    # Whatever it paused, checked and reloaded, the daemon is whole and answers as before.
    for name in ("web", "db"):
        status, body = call(f"{url}/v1/workloads/{name}/resume", "POST")
        assert (status, body["paused"]) == (200, False), body
    status, body = call(f"{url}/v1/status")
    assert status == 200
    states = {w["workload"]: w["state"] for w in body["workloads"]}
    assert states == {"web": "healthy", "db": "unhealthy", "off": "disabled"}
    status, report = call(f"{url}/-/reload", "POST")
    assert (status, report["ok"], report["unchanged"]) == (200, False, 3), report
    assert [e["file"].rsplit("/", 1)[-1] for e in report["config_errors"]] == ["broken.yaml"]
    status, health = call(f"{url}/healthz")
    assert (status, health["status"]) == (200, "ok"), health
    assert daemon.terminate() == 0


def test_a_refused_token_fails_the_schemathesis_run(
    daemon: DaemonProc, services: Services, tmp_path: Path
) -> None:
    """The guard on the test above: every POST refused (401) is a failed run, not a pass."""
    url = start(daemon, services, tmp_path)
    run = schemathesis(
        tmp_path, url, "wrong-token", "--max-examples", "2", "--phases", "examples,fuzzing"
    )
    assert run.returncode == 1, f"{run.stdout}\n{run.stderr}"
    assert "Authentication failed" in run.stdout, run.stdout
    assert daemon.terminate() == 0


def test_a_query_limit_is_ascii_digits_or_a_400(
    daemon: DaemonProc, services: Services, tmp_path: Path
) -> None:
    """Found while proving the schema: "²" passed str.isdigit() and made int() raise (500);
    a JSON ``null`` body passed for no body at all."""
    url = start(daemon, services, tmp_path)
    history = f"{url}/v1/workloads/db/history?limit="
    for bad in ("%C2%B2", "%D9%A3", "9" * 5000, "+3", "-1", "0", "31", "", "1.0"):
        status, body = call(history + bad)
        assert (status, body["error"]["status"]) == (400, 400), (bad[:20], body)
    status, body = call(history + "1")
    assert (status, len(body["results"])) == (200, 1), body
    for raw in (b"null", b" ", b"[]", b'"x"'):
        status, body = call(f"{url}/v1/workloads/db/check", "POST", raw)
        assert (status, body["error"]["status"]) == (400, 400), (raw, body)
    status, body = call(f"{url}/v1/workloads/db/check", "POST", b"{}")
    assert (status, body["ok"]) == (200, False), body
    assert "event=api_handler_failed" not in daemon.log()
    assert daemon.terminate() == 0
