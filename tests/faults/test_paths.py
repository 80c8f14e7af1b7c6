"""No workload name, CLI argument, API call or config file makes healthd read or write outside
its directories.

Where names become paths (audited): only ``config/editor.py`` joins a workload name into a path
(``<config dir>/<name>.yaml``, for ``healthd add``, ``rm``, ``check`` without a daemon), after
``check_name``: 1-128 of ``A-Z a-z 0-9 _ . @ -``, starting with a letter or digit, so never
``/``, ``..``, NUL or a lookalike. The loader takes file names from the directory listing and
requires ``workload:`` to equal the file's name. The API looks names up in memory, the event
journal takes them as SQL parameters, and the status files are keyed by them: none is a path.

Symlinks in the config dir are followed when read (an operator may keep the real files
elsewhere), but the name rules hold for the link's own name, and healthd never writes through
one: ``add`` replaces the link with a file, ``rm`` removes the link, not its target.

Each test plants a sentinel outside the dirs it gives healthd and checks, after, that it is
untouched and that nothing else appeared or changed there.
"""

from __future__ import annotations

import http.client
import os
import socket
import urllib.parse
from pathlib import Path

import pytest

from healthd.cli import main
from integration.harness import DaemonProc, connect, run_cli, wait_for, write, write_token

RULE = "use 1-128 characters from A-Z a-z 0-9 _ . @ -, starting with a letter or digit"
HOSTILE_NAMES = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "..",
    ".",
    ".hidden",
    "-rf",
    "a" * 129,
    "ｊob",  # FULLWIDTH LATIN SMALL LETTER J
    "job\u200b",  # a zero-width space after a valid name
    "јob",  # CYRILLIC SMALL LETTER JE
    "a\\b",
    " job",
    "job\n",
    "~root",
    "$(touch x)",
]


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every entry under ``root``: (mode, size, content or link target), by relative path."""
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            if path.is_symlink():
                content: bytes | str = os.readlink(path)
            elif path.is_file():
                content = path.read_bytes()
            else:
                content = b""
            out[str(path.relative_to(root))] = (info.st_mode, info.st_size, content)
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory healthd is never given, with a sentinel file and a workload-like file."""
    where = tmp_path / "outside"
    where.mkdir()
    (where / "sentinel").write_text("untouched\n")
    (where / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (where / "elsewhere.yaml").write_text("workload: linked\ntype: exec\ntarget: 'true'\n")
    return where


def test_cli_refuses_hostile_workload_names(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every name through the CLI's own ``main`` (argv parsing, exit code, message); ``--``
    so that "-rf" is a name, not an option."""
    conf = tmp_path / "etc" / "conf"
    conf.mkdir(parents=True)
    before = snapshot(tmp_path)
    for name in HOSTILE_NAMES:
        for args in (["add", "--type", "exec", "--target", "true"], ["rm"], ["rm", "--force"]):
            code = main([*args, "--config-dir", str(conf), "--", name])
            out, err = capsys.readouterr()
            assert (code, out) == (2, ""), (args, name, out, err)
            # a long name is quoted cut short, with its length
            shown = repr(name) if len(name) <= 32 else f"{name[:32]!r}... ({len(name)} characters)"
            assert err == f"healthd: invalid workload name {shown}: {RULE}\n"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "a/b", "ｊob"])
def test_cli_process_refuses_a_path_as_a_name(
    tmp_path: Path, outside: Path, env: dict[str, str], name: str
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    before = snapshot(tmp_path)
    for args in (["add", "--type", "exec", "--target", "true"], ["rm"]):
        run = run_cli([*args, "--config-dir", str(conf), name], env)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert run.stderr == f"healthd: invalid workload name {name!r}: {RULE}\n"
    assert snapshot(tmp_path) == before


def test_cli_check_without_a_daemon_refuses_a_hostile_name(
    tmp_path: Path, outside: Path, env: dict[str, str]
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "passwd.yaml").symlink_to(outside / "passwd")
    before = snapshot(tmp_path)
    run = run_cli(["check", "../outside/passwd", "--config-dir", str(conf)], env)
    assert run.returncode == 2, run
    assert f"invalid workload name '../outside/passwd': {RULE}" in run.stderr
    assert "root:x:0:0" not in run.stdout + run.stderr
    assert snapshot(tmp_path) == before


def test_add_and_rm_never_write_through_a_symlink(
    tmp_path: Path, outside: Path, env: dict[str, str]
) -> None:
    """A workload file that is a symlink to a file elsewhere: ``add`` replaces the link with a
    file of its own (the target keeps its content), ``rm`` removes the link only."""
    conf = tmp_path / "conf"
    conf.mkdir()
    link = conf / "linked.yaml"
    link.symlink_to(outside / "elsewhere.yaml")
    before = snapshot(outside)

    listed = run_cli(["ls", "--json", "--config-dir", str(conf)], env)
    assert listed.returncode == 0, listed
    assert '"workload": "linked"' in listed.stdout  # read through the link: followed

    added = run_cli(
        ["add", "linked", "--type", "tcp", "--port", "6379", "--config-dir", str(conf)], env
    )
    assert added.returncode == 0, added
    assert not link.is_symlink()
    assert "type: tcp" in link.read_text()
    assert snapshot(outside) == before

    link.unlink()
    link.symlink_to(outside / "elsewhere.yaml")
    removed = run_cli(["rm", "linked", "--config-dir", str(conf)], env)
    assert removed.returncode == 0, removed
    assert not link.is_symlink()
    assert snapshot(outside) == before


def test_config_dir_names_hold_for_files_and_links(
    daemon: DaemonProc, outside: Path, tmp_path: Path
) -> None:
    """What a hostile config dir gets: a file whose ``workload:`` differs from its name, a
    name that would be a path, links in and out, a link to a directory, to itself, to nothing.
    Only valid, matching names load; each other file is named with its reason."""
    conf = daemon.config_dir
    write(daemon, "good", "exec", target="true")
    (conf / "mismatch.yaml").write_text("workload: good\ntype: exec\ntarget: 'true'\n")
    (conf / "escape.yaml").write_text("workload: ../../outside/sentinel\ntype: tcp\nport: 1\n")
    (conf / "linked.yaml").symlink_to(outside / "elsewhere.yaml")  # workload: linked
    (conf / "renamed.yaml").symlink_to(outside / "elsewhere.yaml")  # says linked, named renamed
    (conf / "dir.yaml").symlink_to(outside)
    (conf / "loop.yaml").symlink_to(conf / "loop.yaml")
    (conf / "dangling.yaml").symlink_to(outside / "missing.yaml")
    (conf / "passwd.yaml").symlink_to(outside / "passwd")
    before = snapshot(outside)
    token = write_token(tmp_path / "api.token", "path-test-token")
    daemon.daemon_config.write_text(f"api:\n  token_file: {token}\n")
    daemon.start()
    api = connect(daemon, "path-test-token")

    names = sorted(w["workload"] for w in api.get("/v1/status")["workloads"])
    assert names == ["good", "linked"]
    report = api.post("/-/reload")
    errors = {Path(e["file"]).name: e["message"] for e in report["config_errors"]}
    assert set(errors) == {
        "mismatch.yaml",
        "escape.yaml",
        "renamed.yaml",
        "dir.yaml",
        "loop.yaml",
        "dangling.yaml",
        "passwd.yaml",
    }, errors
    assert "'good' differs from the file name (expected 'mismatch'" in errors["mismatch.yaml"]
    assert f"invalid workload name '../../outside/sentinel': {RULE}" in errors["escape.yaml"]
    assert "'linked' differs from the file name (expected 'renamed'" in errors["renamed.yaml"]
    assert errors["dir.yaml"].endswith("not a regular file")
    assert "Too many levels of symbolic links" in errors["loop.yaml"]
    assert "No such file or directory" in errors["dangling.yaml"]
    assert "expected a mapping" in errors["passwd.yaml"]
    assert "root:x:0:0" not in str(report) + daemon.log()  # its content is never echoed
    assert daemon.terminate() == 0
    assert snapshot(outside) == before
    written = {p.name for p in daemon.status_dir.iterdir()}
    assert written <= {
        "statuses.json",
        "daemon.json",
        "events.db",
        "events.db-wal",
        "events.db-shm",
    }
    assert {p.name for p in tmp_path.iterdir()} == {
        "config",
        "status",
        "outside",
        "daemon.log",
        "healthd.yaml",
        "api.token",
    }


def raw_request(address: tuple[str, int], request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as bytes (no client quoting it); the status and body answered."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


ENCODED = [
    ("GET", "/v1/status/%2e%2e%2f%2e%2e%2foutside%2fsentinel"),
    ("GET", "/v1/status/..%2F..%2Foutside%2Fsentinel"),
    ("GET", "/v1/status/../../outside/sentinel"),
    ("GET", "/v1/status/%2E%2E"),
    ("GET", "/v1/status/job%00"),
    ("GET", "/v1/status/job%2500"),
    ("GET", "/v1/status/%EF%BD%8Aob"),  # fullwidth j
    ("GET", "/v1/workloads/..%2Fjob/history"),
    ("GET", "/v1/workloads/job%2Fhistory"),
    ("POST", "/v1/workloads/..%2f..%2foutside/check"),
    ("POST", "/v1/workloads%2Fjob%2Fpause"),  # an encoded slash is not a separator
    ("POST", "/v1/workloads/job%2F..%2Fjob/pause"),
    ("POST", "/-%2Freload"),
    ("POST", "/v1/workloads/" + "a" * 5000 + "/pause"),
]


def test_api_paths_with_encoded_traversal_reach_nothing(
    daemon: DaemonProc, outside: Path, tmp_path: Path
) -> None:
    token = "path-test-token"
    daemon.daemon_config.write_text(
        f"api:\n  token_file: {write_token(tmp_path / 'api.token', token)}\n"
    )
    write(daemon, "job", "exec", target="true")
    daemon.start()
    api = connect(daemon, token)
    api.wait_status("job", lambda s: s["state"] == "healthy")
    before = snapshot(outside)
    url = urllib.parse.urlsplit(str(api.where))
    address = (url.hostname or "", url.port or 0)
    auth = f"Authorization: Bearer {token}\r\n".encode()
    for method, path in ENCODED:
        request = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n".encode()
        status, body = raw_request(address, request + auth + b"Connection: close\r\n\r\n")
        assert status == 404, (method, path, status, body[:300])
        assert b'"status":404' in body.replace(b" ", b""), body[:300]
    # bytes no client would send: a NUL and a space-less mess in the request line
    for line in (b"GET /v1/status/job\x00 HTTP/1.1", b"GET /v1/status/\xff\xfe HTTP/1.1"):
        status, body = raw_request(
            address, line + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        assert status in (400, 404), (line, status, body[:300])

    status_of_job = api.get("/v1/status/job")
    assert status_of_job["paused"] is False  # the encoded-slash pause reached nothing
    assert api.call("GET", "/healthz").status == 200
    assert "api_handler_failed" not in daemon.log()
    assert daemon.terminate() == 0
    assert snapshot(outside) == before
    sentinel = outside / "sentinel"
    assert sentinel.read_text() == "untouched\n"
    wait_for("nothing left listening", lambda: not _listening(address))


def _listening(address: tuple[str, int]) -> bool:
    try:
        conn = http.client.HTTPConnection(*address, timeout=1)
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        conn.close()
    except OSError:
        return False
    return True
