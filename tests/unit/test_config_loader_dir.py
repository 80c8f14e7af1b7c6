"""healthd.config.loader on directories and odd files: nothing hangs or goes unreported."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from healthd.config.loader import MAX_FILE_BYTES, LoadResult, load_dir, load_file
from healthd.config.workload import WorkloadConfig

GOOD_WEB = "workload: web\ntype: http\nport: 8080\n"
GOOD_DB = "workload: db\ntype: tcp\nport: 5432\n"


def test_one_bad_file_does_not_stop_the_good_ones(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(GOOD_WEB)
    (tmp_path / "db.yaml").write_text(GOOD_DB)
    bad = tmp_path / "cache.yaml"
    bad.write_text("workload: cache\ntype: tcp\nport: abc\n")
    result = load_dir(tmp_path)
    assert result.configs == {
        "web": WorkloadConfig(workload="web", type="http", port=8080),
        "db": WorkloadConfig(workload="db", type="tcp", port=5432),
    }
    assert result.files == {"web": tmp_path / "web.yaml", "db": tmp_path / "db.yaml"}
    assert [str(p) for p in result.problems] == [f"{bad}:3: port: expected an integer, got 'abc'"]
    assert result.warnings == []


def test_yaml_wins_over_yml_for_the_same_workload(tmp_path: Path) -> None:
    yml = tmp_path / "web.yml"
    yml.write_text("workload: web\ntype: http\nport: 9999\n")
    yaml_file = tmp_path / "web.yaml"
    yaml_file.write_text(GOOD_WEB)
    result = load_dir(tmp_path)
    assert list(result.configs) == ["web"]
    assert result.configs["web"].port == 8080
    assert result.files["web"] == yaml_file
    assert [str(p) for p in result.problems] == [
        f"{yml}:1: workload: duplicate workload 'web', also defined in {yaml_file}"
    ]


def test_yml_alone_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "db.yml").write_text(GOOD_DB)
    result = load_dir(tmp_path)
    assert result.problems == []
    assert result.files == {"db": tmp_path / "db.yml"}


def test_other_files_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "db.yaml").write_text(GOOD_DB)
    (tmp_path / "README.md").write_text("not a workload\n")
    (tmp_path / "db.yaml.bak").write_text("garbage: [\n")
    (tmp_path / ".web.yaml").write_text("garbage: [\n")  # an editor's swap file, say
    result = load_dir(tmp_path)
    assert list(result.configs) == ["db"]
    assert result.problems == []


def test_empty_directory_loads_nothing(tmp_path: Path) -> None:
    result = load_dir(tmp_path)
    assert (result.configs, result.files, result.problems) == ({}, {}, [])


def test_missing_config_dir_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = load_dir(missing)
    assert result.configs == {}
    assert [str(p) for p in result.problems] == [f"{missing}: config directory does not exist"]


def test_config_dir_that_is_a_file_is_a_problem(tmp_path: Path) -> None:
    not_dir = tmp_path / "conf"
    not_dir.write_text("")
    result = load_dir(not_dir)
    assert result.configs == {}
    assert [str(p) for p in result.problems] == [f"{not_dir}: cannot list: Not a directory"]


def test_fifo_does_not_hang_and_is_reported(tmp_path: Path) -> None:
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    (tmp_path / "db.yaml").write_text(GOOD_DB)
    results: list[LoadResult] = []
    loader = threading.Thread(target=lambda: results.append(load_dir(tmp_path)), daemon=True)
    loader.start()
    loader.join(timeout=10)
    if loader.is_alive():  # blocked in open(): play the writer so the thread can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        loader.join()
        pytest.fail("load_dir blocked opening a FIFO")
    (result,) = results
    assert list(result.configs) == ["db"]
    assert [str(p) for p in result.problems] == [f"{fifo}: not a regular file"]


def test_directory_named_like_a_workload_file_is_reported(tmp_path: Path) -> None:
    sub = tmp_path / "x.yaml"
    sub.mkdir()
    cfg, problems = load_file(sub)
    assert cfg is None
    assert [str(p) for p in problems] == [f"{sub}: not a regular file"]


def test_directory_named_like_a_workload_file_does_not_break_load_dir(tmp_path: Path) -> None:
    sub = tmp_path / "x.yaml"
    sub.mkdir()
    (tmp_path / "db.yaml").write_text(GOOD_DB)
    result = load_dir(tmp_path)
    assert list(result.configs) == ["db"]
    assert [str(p) for p in result.problems] == [f"{sub}: not a regular file"]


def test_non_utf8_bytes_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_bytes(b"workload: web\ntype: \xff\xfehttp\n")
    cfg, problems = load_file(path)
    assert cfg is None
    assert [str(p) for p in problems] == [f"{path}: not UTF-8 text (byte 20)"]


def test_oversized_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_bytes(GOOD_WEB.encode() + b"#" * MAX_FILE_BYTES + b"\n")
    cfg, problems = load_file(path)
    assert cfg is None
    assert [str(p) for p in problems] == [f"{path}: file larger than {MAX_FILE_BYTES} bytes"]


def test_unreadable_path_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "gone.yaml"
    cfg, problems = load_file(path)
    assert cfg is None
    assert [str(p) for p in problems] == [f"{path}: cannot read: No such file or directory"]


def test_broken_symlink_in_dir_is_reported(tmp_path: Path) -> None:
    link = tmp_path / "web.yaml"
    link.symlink_to(tmp_path / "missing-target.yaml")
    result = load_dir(tmp_path)
    assert result.configs == {}
    assert [str(p) for p in result.problems] == [f"{link}: cannot read: No such file or directory"]


def test_file_name_decides_the_expected_workload_for_yml(tmp_path: Path) -> None:
    path = tmp_path / "api.yml"
    path.write_text("workload: web\ntype: http\n")
    cfg, problems = load_file(path)
    assert cfg is None
    assert [str(p) for p in problems] == [
        f"{path}:1: workload: 'web' differs from the file name (expected 'api' in api.yaml)"
    ]
