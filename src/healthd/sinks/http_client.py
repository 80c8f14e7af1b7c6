"""What the webhook and Alertmanager sinks share: their HTTP client and how they read and
describe a failed answer."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator
from typing import cast

import httpx

BODY_IN_ERROR = 200  # characters of an error answer's body kept in the error message
READ_AT_MOST = 4096  # bytes of an answer's body read at all


def new_client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        # The dispatcher's deadline bounds the whole attempt; this bounds each phase
        # too, for a deliver() called without one.
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        # A daemon's environment should not decide where its alerts go (proxies,
        # .netrc credentials); the URL and headers in the config do.
        trust_env=False,
        # The system's trust store (where an operator installs an internal CA), not
        # the CA bundle httpx ships.
        verify=ssl.create_default_context(),
        # One delivery at a time per sink: one connection, kept alive between them (an
        # attempt cut by the deadline closes it: httpcore gives it back on cancel).
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


async def read_start(answer: httpx.Response) -> bytes:
    """The first bytes of an answer's body, never all of a large one."""
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(httpx.HTTPError):  # a body cut short still says enough
        # An async generator: closed here, not whenever the collector finds it half-read.
        body = cast(AsyncGenerator[bytes, None], answer.aiter_bytes())
        async with contextlib.aclosing(body) as stream:
            async for chunk in stream:
                chunks.append(chunk)
                size += len(chunk)
                if size >= READ_AT_MOST:
                    break
    return b"".join(chunks)[:READ_AT_MOST]


def describe(exc: httpx.TransportError) -> str:
    kinds: dict[type[httpx.TransportError], str] = {
        httpx.ConnectTimeout: "connect timed out",
        httpx.ReadTimeout: "no answer in time",
        httpx.WriteTimeout: "sending timed out",
        httpx.PoolTimeout: "no free connection in time",
    }
    kind = kinds.get(type(exc))
    text = str(exc)
    if kind:
        return f"{kind}: {text}" if text else kind
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
