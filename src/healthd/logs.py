"""Structured logs: one event per line on stderr, ``key=value`` (logfmt) or JSON.

Loggers are built and passed in, never configured globally, so a test or the demo can have a
logger of its own.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

Logger = FilteringBoundLogger


def make_logger(
    stream: TextIO | None = None, *, fmt: str = "logfmt", level: int = logging.INFO
) -> Logger:
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.processors.LogfmtRenderer(
            key_order=["ts", "level", "event"], drop_missing=True, bool_as_flag=False
        )
    logger: Logger = structlog.wrap_logger(
        structlog.PrintLogger(file=stream or sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            renderer,
        ],
    )
    return logger
