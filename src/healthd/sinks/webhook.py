"""The webhook sink: each event POSTed as JSON to a URL, optionally signed with HMAC-SHA256.

The body is ``event_json(event)`` (with ``"reminder": true`` for a reminder), compact JSON.
Headers: the sink's own ``headers``, ``Content-Type: application/json``, ``User-Agent:
healthd/VERSION``, ``X-Healthd-Event`` (the type), ``X-Healthd-Delivery`` (the event id) and,
with a ``secret_file``, ``X-Healthd-Signature: sha256=HEX``: the HMAC-SHA256 of the exact body
bytes with the file's content (stripped) as the key, as GitHub signs its webhooks.

A 2xx answer is a delivery. Network errors, timeouts, 5xx and 429 are worth a retry; any other
answer (4xx, and 3xx: redirects are not followed, a webhook that moved is a configuration to
fix) is a permanent failure. Only the start of an answer's body is read, for the error message:
a receiver cannot make the daemon hold a large answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import httpx

from healthd import __version__, secret_file
from healthd.config.sinks import SinkSettings, public_url
from healthd.errors import HealthdError
from healthd.logs import Logger
from healthd.model import Event
from healthd.sinks import DeliveryError
from healthd.sinks.http_client import BODY_IN_ERROR, describe, new_client, read_start
from healthd.store.journal import event_json

_SECRET_AT_MOST = 65536


def read_secret(path: Path) -> bytes:
    """The signing key in ``path``: its content without surrounding whitespace (a trailing
    newline is how editors and ``echo`` leave it). The file must be private like the API
    token's (``healthd.secret_file``). Raises DeliveryError when it cannot be used."""
    try:
        secret = secret_file.read(path, "signing key", _SECRET_AT_MOST)
    except OSError as exc:
        raise DeliveryError(f"secret_file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DeliveryError(f"secret_file {path}: {exc}") from None
    if not secret:
        raise DeliveryError(f"secret_file {path} is empty: refusing to sign with an empty key")
    return secret


def check_secret_file(settings: SinkSettings) -> None:
    """At start: a secret file that exists but is not private (or not a file) stops the
    daemon with the fix, as a loose API token file does. A missing or empty one is left to
    the deliveries, which wait for it (an operator may write it after the start)."""
    path = settings.secret_file
    if path is None:
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SecretFileError(
            f"sinks.{settings.name}.secret_file {path}: {exc.strerror or exc}"
        ) from None
    reason = (
        "a symbolic link: name the file itself"
        if stat.S_ISLNK(info.st_mode)
        else secret_file.problem(path, info, "signing key")
    )
    if reason:
        raise SecretFileError(f"sinks.{settings.name}.secret_file {path}: {reason}")


class SecretFileError(HealthdError):
    """A webhook's secret_file that must not be used (loose mode, owner, not a file)."""


def signature(secret: bytes, body: bytes) -> str:
    """The X-Healthd-Signature value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def body_of(event: Event, *, reminder: bool) -> bytes:
    payload = event_json(event)
    if reminder:
        payload["reminder"] = True
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class WebhookSink:
    def __init__(self, settings: SinkSettings, log: Logger) -> None:
        check_secret_file(settings)
        self.settings = settings
        self.log = log.bind(sink=settings.name)
        self._client: httpx.AsyncClient | None = None
        self._secret: bytes | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = new_client(self.settings.timeout)
        return self._client

    def _signing_key(self) -> bytes | None:
        """The secret, read at the first delivery that needs it and kept. A missing or empty
        file is a transient failure: events wait (up to max_age) until it is fixed."""
        path = self.settings.secret_file
        if path is None:
            return None
        if self._secret is None:
            self._secret = read_secret(path)
        return self._secret

    def headers_for(self, event: Event, body: bytes) -> dict[str, str]:
        headers = {"User-Agent": f"healthd/{__version__}", **self.settings.headers}
        headers["Content-Type"] = "application/json"
        headers["X-Healthd-Event"] = event.type.value
        headers["X-Healthd-Delivery"] = str(event.id)
        key = self._signing_key()
        if key is not None:
            headers["X-Healthd-Signature"] = signature(key, body)
        return headers

    async def deliver(self, event: Event, *, reminder: bool) -> None:
        body = body_of(event, reminder=reminder)
        headers = self.headers_for(event, body)
        url = self.settings.url
        try:
            async with self._http().stream("POST", url, content=body, headers=headers) as answer:
                status = answer.status_code
                # Read even a success's (short) body: a connection whose answer was read to
                # its end is kept alive for the next event; one left half-read is closed.
                start = await read_start(answer)
        except httpx.TransportError as exc:  # connect, read, write, timeout, protocol
            raise DeliveryError(f"POST {public_url(url)}: {describe(exc)}") from None
        if 200 <= status < 300:
            return
        text = start.decode("utf-8", "replace").strip()
        where = answer.headers.get("location") if 300 <= status < 400 else None
        message = f"POST {public_url(url)}: HTTP {status} {answer.reason_phrase}".rstrip()
        if where:
            message += f" (redirect to {where} not followed)"
        if text:
            message += f": {text[:BODY_IN_ERROR]}"
        raise DeliveryError(message, permanent=not (status == 429 or status >= 500))

    async def maintain(self) -> None:
        return

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
