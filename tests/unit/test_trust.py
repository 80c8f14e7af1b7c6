"""Strict modes on real files: a root daemon loads commands only from files only root can change.

The files are really given away (chown to nobody, chmod g+w) in a fresh directory; pytest's
directories (under /tmp, root's and sticky) are trusted as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from healthd.config.loader import load_dir, load_file

NOBODY = 65534
RELAX = "or set security.strict_modes: false in the daemon config"
EXEC = "workload: {name}\ntype: exec\ncommand: [id]\n"
HTTP = "workload: {name}\ntype: http\nport: 8080\n"


@pytest.fixture(autouse=True)
def _root() -> None:
    """Strict modes apply to root only, and giving files away needs root: skip locally, fail
    under CI=true (CI runs as root)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("strict modes are tested as root (CI runs as root)")
        pytest.skip("needs root")


def workload(directory: Path, name: str, template: str = EXEC) -> Path:
    directory.mkdir(mode=0o755, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(template.format(name=name))
    path.chmod(0o644)
    return path


def refused(path: Path, reason: str, what: str = "an exec check") -> list[str]:
    return [
        f"{path}: refused: healthd runs as root and will not run {what} from a file that "
        f"others could change: {reason}, {RELAX}"
    ]


def problems(path: Path, *, strict_modes: bool = True) -> list[str]:
    cfg, found = load_file(path, strict_modes=strict_modes)
    assert (cfg is None) == bool(found)
    return [str(p) for p in found]


def test_roots_own_file_in_roots_own_dirs_loads(tmp_path: Path) -> None:
    assert problems(workload(tmp_path / "conf", "web")) == []


def test_a_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = workload(tmp_path / "conf", "web")
    os.chown(path, NOBODY, NOBODY)
    assert problems(path) == refused(
        path, f"file {path} is owned by uid {NOBODY}, not root; fix: chown root {path}"
    )
    assert problems(path, strict_modes=False) == []


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_a_file_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = workload(tmp_path / "conf", "web")
    path.chmod(mode)
    assert problems(path) == refused(
        path,
        f"file {path} is writable by group or others (mode {mode:04o}); fix: chmod go-w {path}",
    )


def test_a_config_dir_writable_by_group_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    path = workload(conf, "web")
    conf.chmod(0o775)
    assert problems(path) == refused(
        path,
        f"directory {conf} is writable by group or others (mode 0775); fix: chmod go-w {conf}",
    )


def test_a_parent_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "etc"
    parent.mkdir()
    path = workload(parent / "conf", "web")
    os.chown(parent, NOBODY, NOBODY)
    assert problems(path) == refused(
        path, f"directory {parent} is owned by uid {NOBODY}, not root; fix: chown root {parent}"
    )


def test_a_sticky_root_dir_above_is_accepted_but_not_a_sticky_dir_of_another_user(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    path = workload(shared / "conf", "web")
    assert problems(path) == []
    os.chown(shared, NOBODY, NOBODY)
    assert problems(path) == refused(
        path, f"directory {shared} is owned by uid {NOBODY}, not root; fix: chown root {shared}"
    )


def test_a_symlink_is_judged_by_its_owner_and_where_it_points(public_dir: Path) -> None:
    elsewhere = public_dir / "elsewhere"
    target = workload(elsewhere, "web")
    conf = public_dir / "conf"
    conf.mkdir()
    link = conf / "web.yaml"
    link.symlink_to(target)
    assert problems(link) == []
    elsewhere.chmod(0o777)
    assert problems(link) == refused(
        link,
        f"directory {elsewhere} is writable by group or others (mode 0777); "
        f"fix: chmod go-w {elsewhere}",
    )
    elsewhere.chmod(0o755)
    os.lchown(link, NOBODY, NOBODY)
    assert problems(link) == refused(
        link, f"symlink {link} is owned by uid {NOBODY}, not root; fix: chown -h root {link}"
    )


def test_a_restart_command_is_refused_too_but_a_plain_check_loads(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    restart = workload(conf, "db", HTTP + "restart_command: [systemctl, restart, db]\n")
    plain = workload(conf, "web", HTTP)
    for path in (restart, plain):
        os.chown(path, NOBODY, NOBODY)
    assert problems(plain) == []
    assert problems(restart) == refused(
        restart,
        f"file {restart} is owned by uid {NOBODY}, not root; fix: chown root {restart}",
        "a restart command",
    )


def test_load_dir_reports_the_refused_and_loads_the_rest(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    bad = workload(conf, "bad")
    workload(conf, "good")
    os.chown(workload(conf, "web", HTTP), NOBODY, NOBODY)
    bad.chmod(0o666)
    result = load_dir(conf)
    assert sorted(result.configs) == ["good", "web"]
    assert [str(p) for p in result.problems] == refused(
        bad, f"file {bad} is writable by group or others (mode 0666); fix: chmod go-w {bad}"
    )
    assert sorted(load_dir(conf, strict_modes=False).configs) == ["bad", "good", "web"]


def test_a_symlinked_config_dir_is_judged_where_it_is_named_too(public_dir: Path) -> None:
    real = public_dir / "srv"
    path = workload(real, "web")
    named = public_dir / "etc"
    named.mkdir()
    (named / "health").symlink_to(real, target_is_directory=True)
    listed = named / "health" / "web.yaml"
    assert problems(listed) == []
    named.chmod(0o777)  # whoever may write here may point "health" anywhere
    assert path.exists()
    assert problems(listed) == refused(
        listed,
        f"directory {named} is writable by group or others (mode 0777); fix: chmod go-w {named}",
    )


def test_a_link_is_followed_only_where_whoever_could_change_it_could_go(tmp_path: Path) -> None:
    """pytest's directory is root's alone (0700): nobody, who owns the link, could not reach
    the file it leads to, so healthd does not read it for them, whatever the file holds."""
    target = workload(tmp_path / "elsewhere", "web", HTTP)
    conf = tmp_path / "conf"
    conf.mkdir()
    link = conf / "web.yaml"
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    top = tmp_path.parents[1]  # /tmp/pytest-of-root, mode 0700
    assert problems(link) == [
        f"{link}: not read: uid {NOBODY} may not search {top}, yet could have led healthd "
        f"there: symlink {link} is theirs"
    ]
    assert problems(link, strict_modes=False) == problems(link)  # not a strict-mode rule
