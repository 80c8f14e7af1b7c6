"""Structured logs: one event per line on stderr, ``key=value`` (logfmt) or JSON.

Loggers are built and passed in, never configured globally, so a test or the demo can have a
logger of its own. A line is ``ts``, ``level`` and ``event`` first, then the fields in the
order given (logfmt), or one JSON object with the same keys.

This used to be structlog. Everything healthd asks of a logger is here in some sixty lines,
and the library's import alone cost 1.5 MB of resident memory, a twentieth of the daemon's
whole footprint at 1,000 workloads (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
Renderer = Callable[[dict[str, Any]], str]


def _timestamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _logfmt_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if not _NEEDS_QUOTES.search(text):
        return text
    # Escaped so that one event is always one line: a value that carries a line break (a
    # pause reason from the API, a check's output) must not start a line of its own.
    return '"' + _ESCAPED.sub(_escape, text) + '"'


# Space, "=", quote, backslash, control characters, and what splitlines() takes for a break
_NEEDS_QUOTES = re.compile(r'[\s="\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_ESCAPED = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_SHORT = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def render_logfmt(line: dict[str, Any]) -> str:
    for key in line:
        if not key or any(c <= " " for c in key):
            raise ValueError(f"invalid log key {key!r}")
    return " ".join(f"{key}={_logfmt_value(value)}" for key, value in line.items())


def render_json(line: dict[str, Any]) -> str:
    return json.dumps(line, default=str, ensure_ascii=False)


class Logger:
    """``log.info("event_name", key=value, ...)``; ``bind`` adds fields to every line."""

    __slots__ = ("_context", "_min_level", "_render", "_stream")

    def __init__(
        self,
        stream: TextIO | None,
        render: Renderer,
        min_level: int,
        context: dict[str, Any] | None = None,
    ) -> None:
        self._stream = stream
        self._render = render
        self._min_level = min_level
        self._context = context or {}

    def bind(self, **fields: Any) -> Logger:
        return Logger(self._stream, self._render, self._min_level, {**self._context, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def _log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if _LEVELS[level] < self._min_level:
            return
        line = {"ts": _timestamp(), "level": level, "event": event, **self._context, **fields}
        stream = self._stream or sys.stderr  # looked up late: tests and daemons swap stderr
        print(self._render(line), file=stream, flush=True)


def make_logger(
    stream: TextIO | None = None, *, fmt: str = "logfmt", level: int = logging.INFO
) -> Logger:
    if fmt not in ("logfmt", "json"):
        raise ValueError(f"unknown log format {fmt!r} (use logfmt or json)")
    return Logger(stream, render_json if fmt == "json" else render_logfmt, level)
