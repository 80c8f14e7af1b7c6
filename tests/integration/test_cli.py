"""The command line as a user runs it: ``python -m healthd ...`` subprocesses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import healthd
from healthd.engine.lag import BOUNDS

from .harness import Services, free_port, run_cli


def add(config_dir: Path, env: dict[str, str], *args: str) -> None:
    done = run_cli(["add", "--config-dir", str(config_dir), *args], env)
    assert done.returncode == 0, done.stderr


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_version(env: dict[str, str]) -> None:
    done = run_cli(["--version"], env)
    assert done.returncode == 0
    assert done.stdout.strip() == f"healthd {healthd.__version__}"


def test_validate_good_and_bad_dirs(tmp_path: Path, env: dict[str, str]) -> None:
    good = tmp_path / "good"
    add(good, env, "web", "--type", "http", "--port", "8080")
    done = run_cli(["validate", "--config-dir", str(good)], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: 1 valid workload(s)")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "api.yaml").write_text("workload: api\ntype: http\nport: 99999\n")
    (bad / "db.yaml").write_text("workload: db\ntype: tcp\nretires: 3\nport: 5432\n")
    (bad / "ok.yaml").write_text("workload: ok\ntype: exec\ntarget: 'true'\n")
    done = run_cli(["validate", "--config-dir", str(bad)], env)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"{bad / 'api.yaml'}:3: port: 99999 is outside 1-65535" in lines
    assert any(line.startswith(f"{bad / 'db.yaml'}:3: retires: unknown key") for line in lines)
    assert "2 problem(s); 1 valid workload(s)" in done.stderr


def test_validate_warns_of_dependencies_that_hold_nothing(
    tmp_path: Path, env: dict[str, str]
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    for name, deps in (("api", "[db, cache]"), ("db", "[]"), ("a", "[b]"), ("b", "[a]")):
        text = f"workload: {name}\ntype: exec\ntarget: 'true'\ndepends_on: {deps}\n"
        (config / f"{name}.yaml").write_text(text)
    done = run_cli(["validate", "--config-dir", str(config)], env)
    assert done.returncode == 0, done.stdout + done.stderr  # warnings, not problems
    assert done.stderr.splitlines() == [
        "warning: api: depends_on cache: not configured, so it holds no restart until a "
        "workload of that name exists",
        "warning: a, b: depend on each other in a cycle, so depends_on between them never "
        "holds a restart",
    ]
    assert done.stdout.startswith("ok: 4 valid workload(s)")


def test_add_ls_rm_round_trip(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "config"
    add(config, env, "web", "--type", "http", "--port", "8080", "--host", "127.0.0.1")
    add(config, env, "cache", "--type", "tcp", "--port", "6379", "--auto-restart")
    add(config, env, "job", "--type", "exec", "--target", "true", "--disabled")
    assert files_under(config) == ["cache.yaml", "job.yaml", "web.yaml"]

    table = run_cli(["ls", "--config-dir", str(config)], env)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split()[:2] == ["WORKLOAD", "TYPE"]
    assert [r.split()[0] for r in rows[1:]] == ["cache", "job", "web"]
    assert "GET http://127.0.0.1:8080/healthz" in table.stdout
    assert rows[2].split()[-1] == "disabled"

    listed = run_cli(["ls", "--config-dir", str(config), "--json"], env)
    assert listed.returncode == 0
    by_name = {w["workload"]: w for w in json.loads(listed.stdout)}
    assert by_name["web"]["port"] == 8080
    assert by_name["web"]["target"] == "/healthz"
    assert by_name["cache"]["auto_restart"] is True
    assert by_name["job"]["enabled"] is False

    removed = run_cli(["rm", "--config-dir", str(config), "cache"], env)
    assert removed.returncode == 0
    assert files_under(config) == ["job.yaml", "web.yaml"]
    again = run_cli(["rm", "--config-dir", str(config), "cache"], env)
    assert again.returncode == 1
    assert run_cli(["rm", "--config-dir", str(config), "-f", "cache"], env).returncode == 0


def test_add_with_an_invalid_name_fails_and_writes_nothing(
    tmp_path: Path, env: dict[str, str]
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    done = run_cli(
        ["add", "--config-dir", str(config), "../evil", "--type", "exec", "--target", "true"], env
    )
    assert done.returncode == 2
    assert "invalid workload name" in done.stderr
    assert files_under(tmp_path) == ["config"]


def test_add_tcp_without_port_fails_and_writes_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "config"
    done = run_cli(["add", "--config-dir", str(config), "db", "--type", "tcp"], env)
    assert done.returncode == 1
    assert "port: required for tcp checks" in done.stderr
    assert files_under(tmp_path) == []


def test_status_from_a_statuses_file(tmp_path: Path, env: dict[str, str]) -> None:
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    entries = [
        {
            "workload": "web",
            "healthy": True,
            "last_check": "2026-01-01T00:00:00Z",
            "last_healthy": "2026-01-01T00:00:00Z",
            "consecutive_fails": 0,
            "total_checks": 42,
            "total_fails": 1,
            "restart_count": 2,
            "last_restart": "0001-01-01T00:00:00Z",
        },
        {  # written by the reference: no state, derived from what it recorded
            "workload": "db",
            "healthy": False,
            "last_check": "2026-01-01T00:00:00Z",
            "last_healthy": "0001-01-01T00:00:00Z",
            "consecutive_fails": 5,
            "total_checks": 5,
            "total_fails": 5,
            "restart_count": 0,
            "last_error": "TCP check failed: 10.0.0.5:5432: connection refused",
            "last_restart": "0001-01-01T00:00:00Z",
        },
    ]
    (status_dir / "statuses.json").write_text(json.dumps(entries))
    common = ["--config-dir", str(tmp_path / "none"), "--status-dir", str(status_dir)]

    table = run_cli(["status", *common], env)
    assert table.returncode == 0, table.stderr
    rows = [r.split() for r in table.stdout.splitlines()]
    assert rows[0][:2] == ["WORKLOAD", "STATE"]
    assert [r[:2] for r in rows[1:]] == [["db", "unhealthy"], ["web", "healthy"]]
    assert "connection refused" in table.stdout

    one = run_cli(["status", *common, "web", "--json"], env)
    assert one.returncode == 0, one.stderr
    shown = json.loads(one.stdout)
    assert shown["workload"] == "web"
    assert shown["total_checks"] == 42
    assert shown["restart_count"] == 2
    assert shown["state"] == "healthy"

    unknown = run_cli(["status", *common, "nope"], env)
    assert unknown.returncode == 1
    assert "no status for workload 'nope'" in unknown.stderr
    assert "daemon:" not in table.stdout  # no daemon.json: nothing to say


def test_status_says_how_the_daemon_keeps_up(tmp_path: Path, env: dict[str, str]) -> None:
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    (status_dir / "statuses.json").write_text("[]")
    # 100 checks, cumulative: 50 started within 5 ms of their due time, all within 10 ms
    counts = [0 if b < 0.005 else 50 if b == 0.005 else 100 for b in BOUNDS]
    buckets: list[list[Any]] = [[b, c] for b, c in zip(BOUNDS, counts, strict=True)]
    buckets.append(["+Inf", 100])
    summary = {
        "pid": 4242,
        "updated_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "workloads": 3,
        "checks_total": 100,
        "scheduler": {"behind": True, "lag_seconds_buckets": buckets},
    }
    (status_dir / "daemon.json").write_text(json.dumps(summary))
    common = ["--config-dir", str(tmp_path / "none"), "--status-dir", str(status_dir)]
    shown = run_cli(["status", *common], env)
    assert shown.returncode == 0, shown.stderr
    line = shown.stdout.strip().splitlines()[-1]
    assert line.startswith("daemon: pid 4242, updated ")
    assert "3 workloads, 100 checks" in line
    assert "scheduler BEHIND, checks start late" in line
    assert "p50 5 ms, p99 10 ms" in line

    (status_dir / "daemon.json").write_text("{not json")
    broken = run_cli(["status", *common], env)
    assert broken.returncode == 0, broken.stderr  # the table is still shown
    assert "daemon: daemon.json unreadable (JSONDecodeError" in broken.stdout


def test_status_with_a_corrupt_file_is_a_usage_error(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "statuses.json").write_text("[{")
    done = run_cli(["status", "--config-dir", str(tmp_path), "--status-dir", str(tmp_path)], env)
    assert done.returncode == 2
    assert "not valid JSON" in done.stderr


def test_check_exit_codes(tmp_path: Path, env: dict[str, str], services: Services) -> None:
    config = tmp_path / "config"
    svc = services.start("http")
    add(config, env, "up", "--type", "http", "--port", str(svc.port), "--host", "127.0.0.1")
    add(config, env, "down", "--type", "tcp", "--port", str(free_port()), "--host", "127.0.0.1")

    up = run_cli(["check", "--config-dir", str(config), "up"], env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.startswith("up: healthy")
    assert f"GET http://127.0.0.1:{svc.port}/healthz" in up.stdout

    down = run_cli(["check", "--config-dir", str(config), "down"], env)
    assert down.returncode == 1
    assert "down: unhealthy" in down.stdout
    assert "connection refused" in down.stdout

    missing = run_cli(["check", "--config-dir", str(config), "ghost"], env)
    assert missing.returncode == 2
    assert "no such workload 'ghost'" in missing.stderr

    (config / "broken.yaml").write_text("workload: broken\ntype: http\ntimeout: -1s\n")
    broken = run_cli(["check", "--config-dir", str(config), "broken"], env)
    assert broken.returncode == 2
    assert f"{config / 'broken.yaml'}:3: timeout:" in broken.stderr


def test_check_exec_and_fallback_note(
    tmp_path: Path, env: dict[str, str], services: Services
) -> None:
    config = tmp_path / "config"
    svc = services.start("tcp")
    add(config, env, "job", "--type", "exec", "--target", "echo failing; exit 3")
    add(config, env, "nohost", "--type", "tcp", "--port", str(svc.port))
    job = run_cli(["check", "--config-dir", str(config), "job"], env)
    assert job.returncode == 1
    assert "exit status 3: failing" in job.stdout
    nohost = run_cli(["check", "--config-dir", str(config), "nohost"], env)
    assert nohost.returncode == 0, nohost.stdout + nohost.stderr
    assert "note: address 127.0.0.1 (fallback" in nohost.stderr


def test_config_dir_from_the_environment(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "from-env"
    with_env = {**env, "HEALTHD_CONFIG_DIR": str(config)}
    done = run_cli(["add", "envy", "--type", "exec", "--target", "true"], with_env)
    assert done.returncode == 0, done.stderr
    assert (config / "envy.yaml").is_file()
    listed = run_cli(["ls", "--json"], with_env)
    assert listed.returncode == 0, listed.stderr
    assert [w["workload"] for w in json.loads(listed.stdout)] == ["envy"]
    checked = run_cli(["check", "envy"], with_env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
