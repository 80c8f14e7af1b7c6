"""Reading what a client sent: query parameters and JSON bodies, each checked to the letter of
the OpenAPI document, so that a bad value is a 400 that says what is wanted, never a 500."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

from healthd import durations
from healthd.api.messages import HttpError, Request
from healthd.api.openapi import SINCE_DURATION
from healthd.errors import DurationError
from healthd.model import EventType

MAX_ID = 2**63 - 1  # SQLite's largest integer
_DIGITS = re.compile(r"[0-9]{1,9}")
_ID_DIGITS = re.compile(r"[0-9]{1,19}")
_TYPES = frozenset(t.value for t in EventType)
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-][0-9]{2}:[0-9]{2}))"
)


def int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    values = request.query.get(key)
    if not values:
        return default
    text = values[-1]
    # ASCII digits only, and few of them: str.isdigit() also takes "²" (int() refuses it) and
    # int() refuses more than 4300 digits; either would be a 500 instead of a 400.
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise HttpError(400, f"{key} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


def last(request: Request, key: str) -> str | None:
    values = request.query.get(key)
    return values[-1] if values else None


def id_value(key: str, text: str) -> int:
    if not _ID_DIGITS.fullmatch(text) or int(text) > MAX_ID:
        raise HttpError(400, f"{key} must be an event id, a whole number from 0, not {text!r}")
    return int(text)


def id_param(request: Request, key: str) -> int:
    text = last(request, key)
    return 0 if text is None else id_value(key, text)


def types_param(request: Request) -> tuple[str, ...]:
    """``type`` given again and again, or comma-separated, or both."""
    names = [n for value in request.query.get("type", []) for n in value.split(",")]
    unknown = sorted({n for n in names if n not in _TYPES})
    if unknown:
        raise HttpError(
            400,
            f"unknown event type(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(_TYPES))})",
        )
    return tuple(dict.fromkeys(names))


def order_param(request: Request) -> str:
    order = last(request, "order")
    if order is None:
        return "oldest"
    if order not in ("oldest", "newest"):  # an empty order= too: the document's enum has no ""
        raise HttpError(400, f"order must be oldest or newest, not {order!r}")
    return order


def since_param(request: Request) -> float | None:
    """Unix time from ``since``: a Go duration back from now (1h, 30m, 1h30m) or an RFC 3339
    time; exactly the syntax the OpenAPI document gives, so that what it allows is accepted."""
    text = last(request, "since")
    if text is None:
        return None
    try:
        if re.fullmatch(SINCE_DURATION, text):
            return time.time() - durations.parse_seconds(text)
        stamp = _RFC3339.fullmatch(text)
        if stamp is not None:
            day, clock, fraction, _z, offset = stamp.groups()
            micros = f".{fraction[:6]}" if fraction else ""
            return datetime.fromisoformat(f"{day}T{clock}{micros}{offset or '+00:00'}").timestamp()
    except (DurationError, ValueError, OverflowError):
        pass
    raise HttpError(
        400,
        f"since must be a duration back from now (like 1h or 30m) or an RFC 3339 time "
        f"(like 2024-05-01T12:00:00Z), not {text!r}",
    )


def object_body(request: Request, allowed: set[str]) -> dict[str, Any]:
    """The JSON body: none at all, or an object with only ``allowed`` keys. ``null`` or bare
    whitespace is a body, and not an object."""
    if not request.body:
        return {}
    body = request.json()
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise HttpError(400, f"unknown field(s) {', '.join(unknown)} (known: {known})")
    return body
