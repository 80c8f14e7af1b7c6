"""The event loop healthd runs on: uvloop (libuv), for the per-check cost of timers and I/O."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(main)
