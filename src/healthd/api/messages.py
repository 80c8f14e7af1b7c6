"""What the API's HTTP server and its handlers exchange: requests, responses, errors, limits."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

# How a peer's uid is known: the Unix socket's SO_PEERCRED, or the kernel's sock_diag answer
# for a loopback TCP client (see peer_uid.py).
UidSource = Literal["SO_PEERCRED", "sock_diag"]


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is asking. ``uid``: the peer's user id, when the kernel says it (``uid_source``).
    Only a Unix-socket uid may stand for a token (auth.py); a TCP one only counts budgets."""

    unix: bool
    host: str = ""
    uid: int | None = None
    uid_source: UidSource | None = None


@dataclass(slots=True)
class Request:
    method: str
    path: str  # percent-decoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    peer: Peer
    local: str  # which listener: "tcp" or "unix"
    http_version: str = "1.1"

    def json(self) -> Any:
        """The body as JSON (None when empty); raises HttpError 400 when it is not JSON."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the request body is not valid JSON: {exc}") from None


@dataclass(slots=True)
class Response:
    """An answer. With a ``stream``, the body is what it yields, sent as it comes (chunked
    on HTTP/1.1) instead of ``body``; see ``Connection._send_stream`` for the rules."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncGenerator[bytes, None] | None = None


def json_response(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    # Compact: json's C encoder is used only without indentation, and /v1/status at 5,000
    # workloads takes ~300 ms to indent on the event loop. `jq` is for people.
    body = json.dumps(data, ensure_ascii=False).encode() + b"\n"
    return Response(status, body, headers=headers or [])


def error_response(
    status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    return json_response(
        status,
        {"error": {"status": status, "reason": phrase(status), "message": message}},
        headers,
    )


class HttpError(Exception):
    """Raised by handlers for an error answer: becomes a JSON error of ``status``."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Limits:
    max_head_bytes: int = 16 * 1024  # request line and headers
    max_body_bytes: int = 64 * 1024
    max_connections: int = 256  # the TCP listener's (see budget.py)
    max_connections_per_address: int = 64
    socket_max_connections: int = 64  # the Unix socket's, of which the last ...
    socket_max_connections_per_uid: int = 16  # ... this many are kept for root
    max_refused: int = 64  # refused ones still being told so; beyond, cut at once
    max_pipelined: int = 16  # requests read ahead of the one being answered
    header_timeout: float = 10.0
    idle_timeout: float = 30.0  # also: a stream's client that takes none of its bytes
    stream_send_buffer: int = 64 * 1024  # a stream socket's SO_SNDBUF (see sendqueue.py)
    stream_write_high_water: int = 16 * 1024  # a stream pauses with this much unsent
    stall_check_interval: float = 1.0  # how often a stream's bytes not taken are looked at
    linger_timeout: float = 2.0  # reading (and dropping) after a last answer; see _finish


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status without a name is still a status
        return ""
