"""Secrets: read only from private files, used on the wire, and never written anywhere else.

The real daemon runs with an API token, webhook sinks with a ``secret_file``, an
``Authorization`` header and URLs carrying ``user:password@`` and ``?token=``; deliveries fail
and then succeed; then every output the daemon has (its log, every GET of the API, the status
files, the event journal and the CLI's views of it) is searched for every secret.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from healthd.config.sinks import SinkSettings, redact
from integration.harness import (
    ApiClient,
    DaemonProc,
    connect,
    free_port,
    wait_for,
    write,
    write_token,
)
from integration.test_sinks_webhook import Receiver, receiver

__all__ = ["receiver"]

TOKEN = "TOKEN-9f8e7d6c5b4a"
WRONG_TOKEN = "WRONGTOKEN-1a2b3c4d"
SIGNING_KEY = "SIGNKEY-0a1b2c3d"
BEARER = "HEADERBEARER-77aa88bb"
API_KEY = "APIKEY-55cc66dd"
URL_USER = "urluser42"
URL_PASSWORD = "URLPASS-3e4f5a6b"
URL_TOKEN = "URLQUERY-7c8d9e0f"
DOWN_PASSWORD = "DOWNPASS-1122"
DOWN_TOKEN = "DOWNQUERY-3344"
AM_BEARER = "AMBEARER-5566"
SECRETS = [
    TOKEN,
    WRONG_TOKEN,
    SIGNING_KEY,
    BEARER,
    API_KEY,
    URL_PASSWORD,
    URL_TOKEN,
    DOWN_PASSWORD,
    DOWN_TOKEN,
    AM_BEARER,
]


def private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def dump_db(path: Path) -> str:
    """Every row of the journal (the WAL included), as SQL text."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return "\n".join(db.iterdump())


def cli(daemon: DaemonProc, *args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "healthd", *args],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return f"{run.stdout}\n{run.stderr}"


def every_output(daemon: DaemonProc, api: ApiClient) -> dict[str, str]:
    """Everything the daemon shows or keeps, by where: every GET of the API, the CLI's views,
    then (after a clean stop) its log, the journal's rows and every byte of the status dir."""
    outputs: dict[str, str] = {}
    for path in (
        "/",
        "/healthz",
        "/metrics",
        "/v1/openapi.json",
        "/v1/status",
        "/v1/status/job",
        "/v1/workloads",
        "/v1/workloads/job/history",
        "/v1/events?limit=1000",
        "/v1/sinks",
    ):
        reply = api.call("GET", path)
        assert reply.status == 200, (path, reply.text)
        outputs[f"GET {path}"] = reply.text
    outputs["cli status"] = cli(daemon, "status", "--api", daemon.api_url())
    outputs["cli events"] = cli(daemon, "events", "--status-dir", str(daemon.status_dir))
    outputs["cli events --json"] = cli(
        daemon, "events", "--json", "--status-dir", str(daemon.status_dir)
    )
    assert daemon.terminate() == 0
    outputs["log"] = daemon.log()
    outputs["events.db rows"] = dump_db(daemon.status_dir / "events.db")
    for file in sorted(daemon.status_dir.rglob("*")):
        if file.is_file():  # every byte the daemon left on disk: a WAL, a temporary file too
            outputs[f"file {file.name}"] = file.read_bytes().decode("latin-1")
    return outputs


BASIC = base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode()
# Receivers that echo what they got in their error answers, as some do ("bad token X"):
# healthd logs and keeps the start of an error answer, so it must take its secrets out.
HOOK_ECHO = f"receiver broken: got key {API_KEY} query token={URL_TOKEN} Basic {BASIC}"
BEARER_ECHO = f"receiver broken: got Bearer {BEARER}"


@pytest.fixture
def bearer_receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r.start()
    finally:
        r.stop()


def test_no_secret_appears_in_any_output(
    daemon: DaemonProc, receiver: Receiver, bearer_receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    receiver.answer((500, HOOK_ECHO), (500, HOOK_ECHO))  # then 200s
    bearer_receiver.answer((500, BEARER_ECHO))
    token_file = write_token(tmp_path / "api.token", TOKEN)
    key_file = private(tmp_path / "hook.key", SIGNING_KEY + "\n")
    host = receiver.url.removeprefix("http://")
    closed = free_port()
    config = {
        "api": {"token_file": str(token_file)},
        "sinks": [
            {
                "name": "hook",
                "type": "webhook",
                "url": f"http://{URL_USER}:{URL_PASSWORD}@{host}/hook?token={URL_TOKEN}",
                "headers": {"X-Api-Key": API_KEY},
                "secret_file": str(key_file),
                "events": ["unhealthy", "healthy", "paused", "resumed"],
                "timeout": "2s",
            },
            {
                "name": "bearer",
                "type": "webhook",
                "url": f"{bearer_receiver.url}/bearer",
                "headers": {"Authorization": f"Bearer {BEARER}"},
                "events": ["unhealthy", "healthy"],
            },
            {
                "name": "down",
                "type": "webhook",
                "url": f"http://u:{DOWN_PASSWORD}@127.0.0.1:{closed}/x?token={DOWN_TOKEN}",
                "events": ["unhealthy", "healthy"],
                "timeout": "1s",
            },
            {
                "name": "am",
                "type": "alertmanager",
                "url": f"http://127.0.0.1:{closed}",
                "headers": {"Authorization": f"Bearer {AM_BEARER}"},
                "timeout": "1s",
            },
        ],
    }
    private(daemon.daemon_config, yaml.safe_dump(config))
    flag = tmp_path / "job.broken"
    write(daemon, "job", "exec", target=f"test ! -e {flag}", retries=1)
    daemon.start()
    api = connect(daemon, TOKEN)

    flag.touch()
    api.wait_status("job", lambda s: s["state"] == "unhealthy")
    flag.unlink()
    api.wait_status("job", lambda s: s["state"] == "healthy")
    assert api.call("POST", "/v1/workloads/job/pause", headers={}).status == 200
    assert api.call("POST", "/v1/workloads/job/resume").status == 200
    refused = api.call("POST", "/-/reload", headers={"Authorization": f"Bearer {WRONG_TOKEN}"})
    assert refused.status == 401

    def settled() -> list[dict[str, object]] | None:
        sinks = {s["name"]: s for s in api.get("/v1/sinks")["sinks"]}
        hook, down, am = sinks["hook"], sinks["down"], sinks["am"]
        ready = hook["delivered"] >= 4 and hook["retries"] >= 1 and sinks["bearer"]["delivered"]
        return list(sinks.values()) if ready and down["last_error"] and am["last_error"] else None

    wait_for(
        "deliveries that failed, then succeeded",
        settled,
        30,
        lambda: f"{api.get('/v1/sinks')}\n{daemon.log()}",
    )

    # The secrets were used: on the wire, where they belong.
    hooked = [r for r in receiver.got() if r.path.startswith("/hook")]
    assert hooked
    assert all(r.headers["x-api-key"] == API_KEY for r in hooked)
    assert all(r.headers["x-healthd-signature"].startswith("sha256=") for r in hooked)
    assert {r.path for r in hooked} == {f"/hook?token={URL_TOKEN}"}
    assert {r.headers["authorization"] for r in hooked} == {f"Basic {BASIC}"}
    assert bearer_receiver.got("/bearer")[0].headers["authorization"] == f"Bearer {BEARER}"

    outputs = every_output(daemon, api)
    assert {"file statuses.json", "file daemon.json", "file events.db"} <= set(outputs)
    # The failures were said (without secrets): a 500 of the receiver, a refused connection.
    assert "HTTP 500 Internal Server Error: receiver broken: got key *** query" in outputs["log"]
    assert "receiver broken: got ***" in outputs["log"]  # the whole header value
    assert "ConnectError" in outputs["GET /v1/sinks"]

    assert "job" in outputs["cli status"]
    assert "unhealthy" in outputs["cli events"]
    assert "unhealthy" in outputs["events.db rows"]
    leaks = [(s, where) for s in [*SECRETS, BASIC] for where, text in outputs.items() if s in text]
    assert leaks == [], leaks
    # What was said instead: the URL without its credentials and query.
    assert f"http://{host}/hook" in outputs["GET /v1/sinks"]


@pytest.mark.parametrize("problem", ["mode 0644", "mode 0640", "symlink", "directory", "owner"])
def test_a_loose_secret_file_stops_the_start_with_the_fix(
    daemon: DaemonProc, tmp_path: Path, problem: str
) -> None:
    key = tmp_path / "hook.key"
    private(key, SIGNING_KEY)
    expected = {
        "mode 0644": f"mode 0644 lets group or others read or write it; run: chmod 600 {key}",
        "mode 0640": f"mode 0640 lets group or others read or write it; run: chmod 600 {key}",
        "symlink": "a symbolic link: name the file itself",
        "directory": "not a regular file",
        "owner": f"it belongs to uid 65534, who could change the signing key; "
        f"run: chown {os.geteuid()} {key}",
    }[problem]
    if problem.startswith("mode"):
        key.chmod(int(problem.split()[1], 8))
    elif problem == "symlink":
        real = private(tmp_path / "real.key", SIGNING_KEY)
        key.unlink()
        key.symlink_to(real)
    elif problem == "directory":
        key.unlink()
        key.mkdir(mode=0o700)
    else:
        if os.geteuid() != 0:
            pytest.skip("only root can give a file away")  # the suite runs as root in CI
        os.chown(key, 65534, 65534)
    sink = {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:1/h"}
    daemon.daemon_config.write_text(yaml.safe_dump({"sinks": [sink | {"secret_file": str(key)}]}))
    write(daemon, "job", "exec", target="true")
    daemon.start()
    assert daemon.proc is not None
    code = daemon.proc.wait(timeout=20)
    assert code == 2, daemon.log()
    assert f"healthd: sinks.hook.secret_file {key}: {expected}\n" in daemon.log()
    assert SIGNING_KEY not in daemon.log()
    assert not (daemon.status_dir / "statuses.json").exists()  # stopped before any check


def test_a_secret_file_made_loose_while_running_holds_deliveries_back(
    daemon: DaemonProc, receiver: Receiver, tmp_path: Path
) -> None:
    """Never an unsigned delivery: while the key file is loose, events wait (and say why);
    once it is private again they go, signed. The key is read at the first delivery."""
    receiver.start()
    key = private(tmp_path / "hook.key", SIGNING_KEY)
    sink: dict[str, Any] = {"name": "hook", "type": "webhook", "url": f"{receiver.url}/hook"}
    sink |= {"timeout": "1s", "secret_file": str(key), "events": ["unhealthy"]}
    daemon.daemon_config.write_text(yaml.safe_dump({"sinks": [sink]}))
    flag = tmp_path / "job.broken"
    write(daemon, "job", "exec", target=f"test ! -e {flag}", retries=1)
    daemon.start()
    api = connect(daemon)
    key.chmod(0o644)
    flag.touch()
    api.wait_status("job", lambda s: s["state"] == "unhealthy")

    def refused() -> dict[str, object] | None:
        (hook,) = api.get("/v1/sinks")["sinks"]
        return hook if hook["last_error"] and hook["pending"] == 1 else None

    hook = refused()
    hook = hook or wait_for("the loose key to hold the delivery", refused, 15, daemon.log)
    assert hook["last_error"] == (
        f"secret_file {key}: mode 0644 lets group or others read or write it; run: chmod 600 {key}"
    )
    assert receiver.all_requests() == []
    key.chmod(0o600)
    wait_for("the signed delivery", lambda: receiver.got("/hook"), 30, daemon.log)
    (got,) = receiver.got("/hook")
    assert got.headers["x-healthd-signature"].startswith("sha256=")
    assert json.loads(got.body)["type"] == "unhealthy"
    assert daemon.terminate() == 0


def test_credentials_in_a_daemon_config_others_can_read_are_warned_at_start(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    sink = {
        "name": "hook",
        "type": "webhook",
        "url": f"http://u:{URL_PASSWORD}@127.0.0.1:1/h?token={URL_TOKEN}",
        "headers": {"Authorization": f"Bearer {BEARER}", "X-Team": "ops"},
    }
    daemon.daemon_config.write_text(yaml.safe_dump({"sinks": [sink]}))
    daemon.daemon_config.chmod(0o644)
    write(daemon, "job", "exec", target="true")
    daemon.start()
    (line,) = daemon.wait_event("credentials_readable")
    assert f"file={daemon.daemon_config}" in line
    assert 'keys="sinks.hook.url, sinks.hook.headers.Authorization"' in line
    assert f"run: chmod 600 {daemon.daemon_config}" in line
    daemon.wait_event("daemon_started")  # a warning, not a refusal: it monitors
    assert daemon.terminate() == 0
    for secret in (URL_PASSWORD, URL_TOKEN, BEARER):
        assert secret not in daemon.log()

    # The same file made private: started without the warning.
    daemon.daemon_config.chmod(0o600)
    since = len(daemon.log())
    daemon.start()
    daemon.wait_event("daemon_started", since)
    assert daemon.events("credentials_readable", since) == []
    assert daemon.terminate() == 0


def test_redact_takes_out_every_form_a_sink_secret_can_be_echoed_in() -> None:
    settings = SinkSettings(
        name="s",
        type="webhook",
        url="https://bob:p%40ss-word@hooks.example/h?sig=QUERY-SECRET",
        headers={"Authorization": "Bearer HDR-SECRET", "X-Team": "ops"},
    )
    basic = base64.b64encode(b"bob:p@ss-word").decode()
    text = (
        f"POST {settings.url}: HTTP 401: bad password p@ss-word (p%40ss-word), "
        f"Basic {basic}, sig=QUERY-SECRET, Bearer HDR-SECRET, team ops"
    )
    assert redact(text, settings) == (
        "POST https://hooks.example/h: HTTP 401: bad password *** (***), "
        "Basic ***, sig=***, ***, team ops"
    )
    # The bare values, as a receiver may echo them: the query's, the credential after a scheme.
    assert redact("got QUERY-SECRET and HDR-SECRET", settings) == "got *** and ***"


def test_redact_takes_out_every_query_value_named_and_long_ones_bare() -> None:
    """Every value of the query is taken out where it is named (``v=1``); as bare text, a long
    one (8 characters), or one whose name says credential from 4: a ``1`` or ``json`` alone
    is left, or every 1 in an error would be ***."""
    settings = SinkSettings(
        name="s",
        type="webhook",
        url="http://h.example/h?v=1&format=json&access_token=abcd&tenant=longvalue1&x=a%2Bb+c",
    )
    text = (
        "HTTP 500: v=1 format=json access_token=abcd tenant=longvalue1 x=a+b c; "
        'bare: 1 json abcd longvalue1 a+b c; in JSON {"application/json": 1}'
    )
    assert redact(text, settings) == (
        "HTTP 500: v=*** format=*** access_token=*** tenant=*** x=***; "
        'bare: 1 json *** *** a+b c; in JSON {"application/json": 1}'
    )


def test_redact_takes_out_the_credential_after_any_auth_scheme() -> None:
    basic = base64.b64encode(b"hdruser:HDRPASSWORD").decode()
    settings = SinkSettings(
        name="s",
        type="webhook",
        url="http://h.example/h",
        headers={
            "Authorization": "Bearer BEARER-1",
            "Proxy-Authorization": f"Basic {basic}",
            "X-Custom": "Token TOKEN-2",  # a known scheme, whatever the header's name
            "X-Api-Key": "Key KEY3",  # a header whose name says credential, any scheme
            "X-Team": "ops team",  # neither: only the whole value is taken out
        },
    )
    text = f"got BEARER-1, {basic}, hdruser:HDRPASSWORD, HDRPASSWORD, TOKEN-2, KEY3, ops, team"
    assert redact(text, settings) == "got ***, ***, ***, ***, ***, ***, ops, team"
    assert redact("ops team", settings) == "***"


BARE_QUERY = "BAREQUERY-8a7b6c"
BARE_BEARER = "BAREBEARER-5d4e3f"
BARE_AM = "BAREAM-2a3b4c"


def test_a_receiver_echoing_just_the_bare_secret_value_leaks_it_nowhere(
    daemon: DaemonProc, receiver: Receiver, bearer_receiver: Receiver, tmp_path: Path
) -> None:
    """Receivers that answer 500 with nothing but the value of ``?token=`` or the token of
    ``Authorization: Bearer``: that value alone is a secret too, wherever it shows up. The
    Alertmanager's re-posts (logged by the sink itself) are covered as well."""
    receiver.start()
    receiver.answer((500, BARE_QUERY), (500, BARE_QUERY))  # then 200s
    bearer_receiver.answer((500, BARE_BEARER), (500, BARE_BEARER))
    am = Receiver().start()
    am.answer(200)  # the alert posted, then every re-post refused
    am.default = (500, BARE_AM)
    try:
        config = {
            "sinks": [
                {
                    "name": "query",
                    "type": "webhook",
                    "url": f"{receiver.url}/q?token={BARE_QUERY}",
                    "events": ["unhealthy", "healthy"],
                },
                {
                    "name": "bearer",
                    "type": "webhook",
                    "url": f"{bearer_receiver.url}/b",
                    "headers": {"Authorization": f"Bearer {BARE_BEARER}"},
                    "events": ["unhealthy", "healthy"],
                },
                {
                    "name": "am",
                    "type": "alertmanager",
                    "url": am.url,
                    "headers": {"Authorization": f"Bearer {BARE_AM}"},
                    "events": ["unhealthy"],
                    "resend_interval": "200ms",
                    "timeout": "2s",
                },
            ]
        }
        private(daemon.daemon_config, yaml.safe_dump(config))
        flag = tmp_path / "job.broken"
        write(daemon, "job", "exec", target=f"test ! -e {flag}", retries=1)
        daemon.start()
        api = connect(daemon)
        flag.touch()
        api.wait_status("job", lambda s: s["state"] == "unhealthy")
        daemon.wait_event("alertmanager_resend_failed")
        flag.unlink()
        api.wait_status("job", lambda s: s["state"] == "healthy")

        def delivered() -> bool:
            sinks = {s["name"]: s for s in api.get("/v1/sinks")["sinks"]}
            hooks = (sinks["query"], sinks["bearer"])
            return all(s["delivered"] == 2 and s["retries"] and not s["pending"] for s in hooks)

        wait_for("deliveries refused, then made", delivered, 30, daemon.log)
        assert receiver.got()[0].path == f"/q?token={BARE_QUERY}"  # used where it belongs
        assert bearer_receiver.got()[0].headers["authorization"] == f"Bearer {BARE_BEARER}"
        outputs = every_output(daemon, api)
    finally:
        am.stop()
    # What was said instead (a delivery made at last keeps no error in the journal).
    refused = [line for line in outputs["log"].splitlines() if "HTTP 500" in line]
    assert {"sink=query", "sink=bearer", "sink=am"} <= {w for x in refused for w in x.split()}
    assert all('HTTP 500 Internal Server Error: ***"' in line for line in refused)
    assert "event=alertmanager_resend_failed" in outputs["log"]
    leaks = [
        (secret, where)
        for secret in (BARE_QUERY, BARE_BEARER, BARE_AM)
        for where, text in outputs.items()
        if secret in text
    ]
    assert leaks == [], leaks
