"""The judged walk on real files and links: what it opens, who it finds could change the way
there, and that a config dir walked once judges each file as its whole path would be."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from healthd import pathwalk
from healthd.pathwalk import ANYONE, Author, WalkRefused

NOBODY = 65534


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the walk is judged as root (CI runs as root)")
        pytest.skip("needs root")


def read(path: Path | str, readers: pathwalk.Authors = frozenset()) -> tuple[bytes, pathwalk.Walk]:
    found = pathwalk.open_file(str(path), readers)
    try:
        return os.pread(found.fd, 100, 0), found
    finally:
        found.close()


def test_relative_links_and_dot_dot_resolve_as_the_kernel_does(public_dir: Path) -> None:
    (public_dir / "a" / "b").mkdir(parents=True)
    (public_dir / "a" / "file").write_text("here")
    (public_dir / "a" / "b" / "up").symlink_to("../file")
    (public_dir / "link-dir").symlink_to("a/b")
    data, found = read(
        public_dir / "link-dir" / ".." / "file"
    )  # .. of a/b is a, as the kernel says
    assert data == b"here"
    kernel = Path(public_dir / "link-dir" / ".." / "file").read_bytes()
    assert (data, found.authors) == (kernel, frozenset())
    data, found = read(public_dir / "a" / "b" / "up")
    assert data == b"here"
    assert found.real_path == f"{public_dir}/a/file"
    assert found.faults == []


def test_every_hop_that_another_user_could_change_is_an_author(public_dir: Path) -> None:
    theirs = public_dir / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    shared = public_dir / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    (public_dir / "target").write_text("x")
    (theirs / "hop").symlink_to(shared / "hop")
    (shared / "hop").symlink_to(public_dir / "target")
    _, found = read(theirs / "hop")
    assert found.authors == {Author("uid", NOBODY), Author("gid", 0)}
    assert found.faults == [
        f"directory {theirs} is owned by uid {NOBODY}, not root; fix: chown root {theirs}",
        f"directory {shared} is writable by group or others (mode 0775); fix: chmod go-w {shared}",
    ]
    shared.chmod(0o1777)  # sticky, and root's: others cannot replace root's link
    _, found = read(shared / "hop")
    assert (found.authors, found.faults) == (frozenset(), [])
    shared.chmod(0o777)
    _, found = read(shared / "hop")
    assert found.authors == {Author("gid", 0), ANYONE}


def test_a_reader_is_refused_where_they_may_not_go_and_told_only_what_they_could_see(
    public_dir: Path,
) -> None:
    private = public_dir / "private"
    private.mkdir(mode=0o700)
    (private / "key").write_text("secret")
    reader = frozenset({Author("uid", NOBODY)})
    for path in (private / "key", private / "missing"):
        with pytest.raises(WalkRefused) as caught:
            read(path, reader)
        assert str(caught.value) == (
            f"uid {NOBODY} may not search {private}, and healthd reads for them"
        )
        assert caught.value.denied
    private.chmod(0o755)
    (private / "key").chmod(0o600)
    with pytest.raises(WalkRefused, match=f"uid {NOBODY} may not read {private}/key"):
        read(private / "key", reader)
    with pytest.raises(WalkRefused, match="No such file or directory"):
        read(private / "missing", reader)
    os.chown(private / "key", NOBODY, NOBODY)  # theirs: they could read it
    assert read(private / "key", reader)[0] == b"secret"


def test_loops_dead_ends_and_things_that_are_not_files(public_dir: Path) -> None:
    (public_dir / "loop").symlink_to("loop")
    (public_dir / "dangling").symlink_to("nowhere")
    (public_dir / "dir").mkdir()
    os.mkfifo(public_dir / "fifo")
    (public_dir / "file").write_text("x")
    cases = {
        "loop": ("Too many levels of symbolic links", False),
        "dangling": ("No such file or directory", False),
        "dir": ("Is a directory", True),
        "fifo": ("not a regular file", True),
        "file/below": ("Not a directory", False),
    }
    for name, (reason, not_regular) in cases.items():
        with pytest.raises(WalkRefused) as caught:
            read(public_dir / name)
        assert (str(caught.value), caught.value.not_regular) == (reason, not_regular), name


def test_a_directory_walked_once_judges_each_entry_as_its_whole_path(public_dir: Path) -> None:
    conf = public_dir / "etc" / "conf"
    conf.mkdir(parents=True)
    (public_dir / "etc").chmod(0o775)
    (conf / "plain.yaml").write_text("plain")
    (conf / "abs.yaml").symlink_to(public_dir / "elsewhere.yaml")
    (public_dir / "elsewhere.yaml").write_text("elsewhere")
    (conf / "rel.yaml").symlink_to("../../elsewhere.yaml")
    (conf / "loop.yaml").symlink_to("loop.yaml")
    directory = pathwalk.Directory(str(conf))
    try:
        for name in ("plain.yaml", "abs.yaml", "rel.yaml", "loop.yaml", "missing.yaml"):
            whole = outcome(lambda name=name: pathwalk.open_file(str(conf / name)))  # type: ignore[misc]
            once = outcome(lambda name=name: directory.open_file(name))  # type: ignore[misc]
            assert once == whole, name
        # the directory's own descriptors survive its entries' walks
        assert outcome(lambda: directory.open_file("plain.yaml"))[1] == f"{conf}/plain.yaml"
    finally:
        directory.close()


def outcome(open_it: Callable[[], pathwalk.Walk]) -> tuple[object, ...]:
    """What a walk gave: the bytes, where, who and which faults; or the refusal."""
    try:
        found = open_it()
    except WalkRefused as exc:
        return (str(exc),)
    try:
        return (os.pread(found.fd, 100, 0), found.real_path, found.authors, found.faults)
    finally:
        found.close()
