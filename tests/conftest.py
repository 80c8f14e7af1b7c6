"""Shared test helpers."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable

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
