"""healthd.config.editor: validated, atomic writes and safe removal of workload files."""

from __future__ import annotations

from pathlib import Path

import pytest

from healthd.config import editor
from healthd.config.loader import load_file
from healthd.config.workload import WorkloadConfig
from healthd.errors import ConfigError, WorkloadNameError


def test_write_renders_reference_key_order_with_http_defaults(tmp_path: Path) -> None:
    path, created = editor.write(tmp_path, WorkloadConfig(workload="web", type="http"))
    assert (path, created) == (tmp_path / "web.yaml", True)
    assert path.read_text() == (
        "workload: web\ntype: http\ntarget: /healthz\nport: 8080\ninterval: 30s\ntimeout: 5s\n"
        "retries: 3\nauto_restart: false\nmax_restarts: 0\nrestart_delay: 10s\nenabled: true\n"
    )
    cfg, problems = load_file(path)
    assert problems == []
    assert cfg == WorkloadConfig(workload="web", type="http", target="/healthz", port=8080)


def test_write_exec_omits_port_and_keeps_durations_in_go_syntax(tmp_path: Path) -> None:
    cfg = WorkloadConfig(
        workload="worker",
        type="exec",
        target="pgrep -f worker",
        interval=90.0,
        timeout=0.25,
        restart_delay=3600.0,
        enabled=False,
    )
    path, _ = editor.write(tmp_path, cfg)
    assert path.read_text() == (
        "workload: worker\ntype: exec\ntarget: pgrep -f worker\ninterval: 1m30s\n"
        "timeout: 250ms\nretries: 3\nauto_restart: false\nmax_restarts: 0\n"
        "restart_delay: 1h0m0s\nenabled: false\n"
    )
    assert load_file(path) == (cfg, [])


def test_write_with_extension_keys_loads_back_equal(tmp_path: Path) -> None:
    cfg = WorkloadConfig(
        workload="db",
        type="tcp",
        port=5432,
        auto_restart=True,
        max_restarts=3,
        host="db.internal",
        restart_command=("systemctl", "restart", "pg@{workload}"),
    )
    path, _ = editor.write(tmp_path, cfg)
    text = path.read_text()
    assert text.endswith(
        "enabled: true\nhost: db.internal\nrestart_command:\n- systemctl\n- restart\n"
        "- pg@{workload}\n"
    )
    assert load_file(path) == (cfg, [])


def test_write_over_an_existing_file_reports_not_created(tmp_path: Path) -> None:
    editor.write(tmp_path, WorkloadConfig(workload="db", type="tcp", port=5432))
    path, created = editor.write(tmp_path, WorkloadConfig(workload="db", type="tcp", port=6432))
    assert created is False
    cfg, _ = load_file(path)
    assert cfg is not None
    assert cfg.port == 6432


def test_write_creates_the_directory_and_leaves_no_temp_files(tmp_path: Path) -> None:
    config_dir = tmp_path / "conf" / "workloads"
    editor.write(config_dir, WorkloadConfig(workload="db", type="tcp", port=5432))
    editor.write(config_dir, WorkloadConfig(workload="db", type="tcp", port=5433))
    assert [p.name for p in config_dir.iterdir()] == ["db.yaml"]


def test_invalid_config_raises_and_writes_nothing(tmp_path: Path) -> None:
    config_dir = tmp_path / "conf"
    with pytest.raises(ConfigError) as info:
        editor.write(config_dir, WorkloadConfig(workload="db", type="tcp"))
    assert [str(p) for p in info.value.problems] == [
        f"{config_dir / 'db.yaml'}:1: port: required for tcp checks"
    ]
    assert str(info.value) == f"{config_dir / 'db.yaml'}:1: port: required for tcp checks"
    assert not config_dir.exists()


def test_invalid_value_does_not_replace_a_good_file(tmp_path: Path) -> None:
    good = WorkloadConfig(workload="db", type="tcp", port=5432)
    path, _ = editor.write(tmp_path, good)
    before = path.read_bytes()
    with pytest.raises(ConfigError):
        editor.write(tmp_path, WorkloadConfig(workload="db", type="tcp", port=70000))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["db.yaml"]


@pytest.mark.parametrize("name", ["../x", "a/b", "", "/etc/passwd", ".hidden", "x y", "a" * 129])
def test_bad_names_are_refused_before_touching_any_path(tmp_path: Path, name: str) -> None:
    config_dir = tmp_path / "conf" / "workloads"
    cfg = WorkloadConfig(workload=name, type="tcp", port=1)
    with pytest.raises(WorkloadNameError) as info:
        editor.write(config_dir, cfg)
    # a long value is quoted cut short, with its length
    shown = repr(name) if len(name) <= 32 else f"'{name[:32]}'... ({len(name)} characters)"
    assert str(info.value) == (
        f"invalid workload name {shown}: use 1-128 characters from A-Z a-z 0-9 _ . @ -, "
        "starting with a letter or digit"
    )
    with pytest.raises(WorkloadNameError):
        editor.remove(config_dir, name)
    with pytest.raises(WorkloadNameError):
        editor.find(config_dir, name)
    assert list(tmp_path.rglob("*")) == []


def test_remove_removes_yaml_and_yml(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text("workload: web\ntype: http\n")
    (tmp_path / "web.yml").write_text("workload: web\ntype: http\n")
    (tmp_path / "db.yaml").write_text("workload: db\ntype: tcp\nport: 1\n")
    assert editor.remove(tmp_path, "web") == [tmp_path / "web.yaml", tmp_path / "web.yml"]
    assert [p.name for p in tmp_path.iterdir()] == ["db.yaml"]


def test_remove_absent_workload_returns_empty(tmp_path: Path) -> None:
    assert editor.remove(tmp_path, "web") == []
    assert editor.remove(tmp_path / "missing-dir", "web") == []


def test_find_loads_by_name_and_reports_missing(tmp_path: Path) -> None:
    editor.write(tmp_path, WorkloadConfig(workload="db", type="tcp", port=5432))
    assert editor.find(tmp_path, "db") == (WorkloadConfig(workload="db", type="tcp", port=5432), [])
    cfg, problems = editor.find(tmp_path, "web")
    assert cfg is None
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'web.yaml'}: no such workload 'web' in {tmp_path}"
    ]


@pytest.mark.parametrize("text", ["\x85", "a\u2028b", "x \u2029"])
def test_an_argument_holding_a_yaml_line_break_character_is_written_so_it_reads_back(
    tmp_path: Path, text: str
) -> None:
    """PyYAML puts a lone NEL in single quotes, where reading folds it into a space: the file
    would have run a different restart command than the one given."""
    cfg = WorkloadConfig(workload="job", type="tcp", port=1, restart_command=("/bin/true", text))
    path, _ = editor.write(tmp_path, cfg)
    loaded, problems = load_file(path)
    assert problems == []
    assert loaded is not None
    assert loaded.restart_command == ("/bin/true", text)
