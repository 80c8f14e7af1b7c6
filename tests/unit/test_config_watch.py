"""healthd.engine.watch: which changes count, what is watched, and the fallbacks, with real
files and watchfiles' real watcher (inotify, or polling when inotify is refused)."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import pytest

from healthd.engine.watch import (
    ConfigWatcher,
    Notify,
    counts,
    nearest_ancestor,
    rust_notify,
    shown,
)
from healthd.logs import make_logger


def test_what_counts_is_what_the_loader_reads_and_kubernetes_data() -> None:
    for name in ("web.yaml", "web.yml", "a.b@c-1.yaml", "..data"):
        assert counts(name), name
    for name in (".web.yaml.123.4.tmp", ".web.yaml", "web.yaml~", "web.yaml.swp", "4913"):
        assert not counts(name), name
    for name in ("..2026_01_01", "..data_tmp", "statuses.json", "web.yaml.bak"):
        assert not counts(name), name


def test_nearest_ancestor_skips_what_does_not_exist(tmp_path: Path) -> None:
    assert nearest_ancestor(str(tmp_path / "a" / "b" / "c")) == str(tmp_path)
    assert nearest_ancestor(str(tmp_path / "a")) == str(tmp_path)
    assert nearest_ancestor("/") == "/"


def test_long_lists_of_names_are_cut_and_counted() -> None:
    names = [f"w{n}.yaml" for n in range(25)]
    assert shown(names[:3]) == "w0.yaml,w1.yaml,w2.yaml"
    assert shown(names).endswith(",w19.yaml,+5 more")


class Calls:
    """on_change: records each call; raises on the first when asked to."""

    def __init__(self, fail_first: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail_first = fail_first

    async def __call__(self, names: list[str]) -> None:
        self.calls.append(names)
        if self.fail_first and len(self.calls) == 1:
            raise RuntimeError("reload bug")


async def until(what: str, probe: object, timeout: float = 10.0) -> None:
    assert callable(probe)
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


def test_changes_are_reported_by_name_and_close_is_prompt(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    stream = io.StringIO()
    calls = Calls(fail_first=True)

    async def main() -> float:
        watcher = ConfigWatcher(config, calls, make_logger(stream), quiet=0.1)
        watcher.arm()
        assert (watcher.mode, watcher.inside) == ("inotify", True)
        # a real directory is watched alone: its parent's reads would all be reported
        assert watcher.watching == [str(config)]
        (config / "a.yaml").write_text("x")  # before start: seen all the same
        watcher.start()
        await until("the first call", lambda: calls.calls)
        (config / ".b.yaml.1.2.tmp").write_text("y")  # a temp file, then its rename
        os.replace(config / ".b.yaml.1.2.tmp", config / "b.yaml")
        (tmp_path / "sibling.yaml").write_text("z")  # beside the dir: does not count
        await until("the second call", lambda: len(calls.calls) >= 2)
        began = time.monotonic()
        await watcher.close()
        return time.monotonic() - began

    took = asyncio.run(main())
    assert calls.calls == [["a.yaml"], ["b.yaml"]]  # the failure did not end the watching
    assert "event=config_watch_reload_failed" in stream.getvalue()
    assert took < 2.0, f"close took {took:.2f}s"


def test_a_config_dir_named_by_a_symlink_has_its_parent_watched_too(tmp_path: Path) -> None:
    """``ln -sfn`` swaps the link in the parent: only a watch there sees it."""
    (tmp_path / "v1").mkdir()
    config = tmp_path / "config"
    config.symlink_to(tmp_path / "v1")

    async def main() -> list[str]:
        watcher = ConfigWatcher(config, Calls(), make_logger(io.StringIO()), quiet=0.1)
        watcher.arm()
        watching = list(watcher.watching)
        await watcher.close()
        return watching

    assert asyncio.run(main()) == [str(config), str(tmp_path)]


def test_inotify_refused_falls_back_to_polling(tmp_path: Path) -> None:
    """What fs.inotify.max_user_instances reached looks like: the watcher cannot be made
    (the real one raises OSError). Polling finds the same change."""
    config = tmp_path / "config"
    config.mkdir()
    stream = io.StringIO()
    calls = Calls()
    asked: list[bool] = []

    def refusing(paths: list[str], polling: bool) -> Notify:
        asked.append(polling)
        if not polling:
            raise OSError(24, "Too many open files (os error 24)")
        return rust_notify(paths, polling)

    async def main() -> None:
        watcher = ConfigWatcher(config, calls, make_logger(stream), quiet=0.1, factory=refusing)
        watcher.arm()
        assert watcher.mode == "polling"
        watcher.start()
        await asyncio.sleep(0.3)
        (config / "a.yaml").write_text("x")
        await until("the polled change", lambda: calls.calls, timeout=15)
        await watcher.close()

    asyncio.run(main())
    assert asked == [False, True]
    assert calls.calls == [["a.yaml"]]
    assert "event=config_watch_polling" in stream.getvalue()


def test_a_missing_config_dir_is_waited_for_from_the_nearest_ancestor(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "volt" / "health"
    calls = Calls()

    async def main() -> None:
        watcher = ConfigWatcher(config, calls, make_logger(io.StringIO()), quiet=0.1)
        watcher.arm()
        assert (watcher.inside, watcher.watching) == (False, [str(tmp_path)])
        watcher.start()
        (tmp_path / "etc").mkdir()  # one level: the dir is still missing, nothing to load
        await until("the watch one level down", lambda: watcher.watching == [str(tmp_path / "etc")])
        assert calls.calls == []
        config.mkdir(parents=True)
        (config / "web.yaml").write_text("x")
        await until("the dir watched", lambda: watcher.inside)
        await until("a call", lambda: calls.calls)
        await watcher.close()

    asyncio.run(main())
    assert calls.calls[0] == [str(config)]


def test_nothing_to_watch_at_all_is_logged_and_retried(tmp_path: Path) -> None:
    stream = io.StringIO()

    def refusing(paths: list[str], polling: bool) -> Notify:
        raise PermissionError(13, "Permission denied")

    watcher = ConfigWatcher(tmp_path, Calls(), make_logger(stream), factory=refusing)
    watcher.arm()
    assert watcher.mode == "failed"
    assert "changes are picked up on SIGHUP or healthd reload only" in stream.getvalue()
    watcher.arm("retry")  # the next attempt fails the same way: not said again
    assert stream.getvalue().count("event=config_watch_failed") == 1
