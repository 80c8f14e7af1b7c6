"""Shared test helpers."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on uvloop, the loop the daemon runs on."""
    return {"uvloop": uvloop.new_event_loop}


def require_binary(name: str) -> str:
    """Path of a system binary a test needs: skip locally without it, fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that every user may search (0755), as /etc or /home are.
    pytest's own directories are root's alone: no other user could reach a file in them, plant
    a link there, or read what a link leads to."""
    path = Path(tempfile.mkdtemp(prefix="healthd-public-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
