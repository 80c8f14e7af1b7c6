"""The API's routes: which handler answers which method and path, and the errors in between.

Every answer is JSON (but /metrics), every error a JSON ``{"error": {...}}`` with the status
that says what went wrong; nothing a client sends can raise into the daemon.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from healthd.api import views
from healthd.api.auth import Authorizer
from healthd.api.messages import HttpError, Request, Response, json_response
from healthd.api.openapi import document as openapi_document
from healthd.engine.daemon import Daemon
from healthd.engine.history import HISTORY_SIZE
from healthd.engine.runner import WorkloadRunner
from healthd.errors import NotMonitored, UnknownWorkload

Route = Callable[[Request, str], Awaitable[Response]]
MAX_REASON = 500  # characters of a pause reason
# A "check now" waits at most this long beyond the workload's own timeout (an exec check may
# first wait for a slot when the host is overloaded).
CHECK_GRACE = 30.0
_DIGITS = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class _Path:
    pattern: re.Pattern[str]
    methods: dict[str, Route]


class Api:
    """The request handler given to ``HttpServer``."""

    def __init__(self, daemon: Daemon, authorizer: Authorizer) -> None:
        self.daemon = daemon
        self.authorizer = authorizer
        name = r"(?P<w>[^/]+)"
        self.paths = [
            _Path(re.compile(r"/"), {"GET": self.index}),
            _Path(re.compile(r"/healthz"), {"GET": self.healthz}),
            _Path(re.compile(r"/metrics"), {"GET": self.metrics}),
            _Path(re.compile(r"/v1/openapi\.json"), {"GET": self.openapi}),
            _Path(re.compile(r"/v1/status"), {"GET": self.status_all}),
            _Path(re.compile(rf"/v1/status/{name}"), {"GET": self.status_one}),
            _Path(re.compile(r"/v1/workloads"), {"GET": self.workloads}),
            _Path(re.compile(rf"/v1/workloads/{name}/history"), {"GET": self.history}),
            _Path(re.compile(rf"/v1/workloads/{name}/check"), {"POST": self.check}),
            _Path(re.compile(rf"/v1/workloads/{name}/pause"), {"POST": self.pause}),
            _Path(re.compile(rf"/v1/workloads/{name}/resume"), {"POST": self.resume}),
            _Path(re.compile(r"/-/reload"), {"POST": self.reload}),
        ]

    async def __call__(self, request: Request) -> Response:
        for path in self.paths:
            match = path.pattern.fullmatch(request.path)
            if match is None:
                continue
            method = "GET" if request.method == "HEAD" else request.method
            route = path.methods.get(method)
            if route is None:
                allowed = sorted({*path.methods, *(["HEAD"] if "GET" in path.methods else [])})
                raise HttpError(
                    405,
                    f"{request.method} is not allowed here; use {' or '.join(allowed)}",
                    [("Allow", ", ".join(allowed))],
                )
            self.authorizer.check(request)
            if not self.daemon.started.is_set() and request.path != "/healthz":
                raise HttpError(503, "healthd is starting; try again in a moment")
            return await route(request, match.groupdict().get("w") or "")
        raise HttpError(404, f"no such endpoint {request.path!r}; see GET /v1/openapi.json")

    # -- reading --------------------------------------------------------------------------

    async def index(self, request: Request, _: str) -> Response:
        return json_response(
            200,
            {
                "service": "healthd",
                "endpoints": ["/v1/status", "/v1/workloads", "/metrics", "/healthz"],
                "openapi": "/v1/openapi.json",
            },
        )

    async def healthz(self, request: Request, _: str) -> Response:
        ok, details = views.daemon_health(self.daemon, asyncio.get_running_loop().time())
        return json_response(200 if ok else 503, details)

    async def metrics(self, request: Request, _: str) -> Response:
        from healthd.api import metrics  # noqa: PLC0415  (loaded at the first scrape only)

        snap = metrics.snapshot(self.daemon)
        body, content_type = await metrics.render(snap, request.headers.get("accept", ""))
        return Response(200, body, content_type)

    async def openapi(self, request: Request, _: str) -> Response:
        return json_response(200, openapi_document())

    async def status_all(self, request: Request, _: str) -> Response:
        return json_response(200, views.all_statuses(self.daemon))

    async def status_one(self, request: Request, name: str) -> Response:
        status = self.daemon.statuses.get(name)
        if status is None:
            raise _unknown(name)
        return json_response(200, views.status_entry(self.daemon, status))

    async def workloads(self, request: Request, _: str) -> Response:
        return json_response(200, views.workloads(self.daemon))

    async def history(self, request: Request, name: str) -> Response:
        if name not in self.daemon.statuses:
            raise _unknown(name)
        limit = _int_param(request, "limit", HISTORY_SIZE, 1, HISTORY_SIZE)
        return json_response(200, views.history(self.daemon, name, limit))

    # -- acting ---------------------------------------------------------------------------

    async def check(self, request: Request, name: str) -> Response:
        _object_body(request, set())
        runner = self._runner(name)
        deadline = runner.cfg.timeout + CHECK_GRACE
        try:
            async with asyncio.timeout(deadline):
                result = await runner.check_now()
        except TimeoutError:
            raise HttpError(504, f"no result within {deadline:.0f} s") from None
        except RuntimeError as exc:  # stopping or reloaded meanwhile
            raise HttpError(503, str(exc)) from None
        return json_response(200, views.check_result(self.daemon, name, result))

    async def pause(self, request: Request, name: str) -> Response:
        body = _object_body(request, {"reason"})
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise HttpError(400, f"reason must be a string of at most {MAX_REASON} characters")
        self._runner(name)
        status = self.daemon.pause(name, reason)
        return json_response(200, views.status_entry(self.daemon, status))

    async def resume(self, request: Request, name: str) -> Response:
        _object_body(request, set())
        self._runner(name)
        status = self.daemon.resume(name)
        return json_response(200, views.status_entry(self.daemon, status))

    async def reload(self, request: Request, _: str) -> Response:
        _object_body(request, set())
        if self.daemon.stopping:
            raise HttpError(503, "healthd is stopping")
        report = await self.daemon.reload()
        return json_response(200, views.reload_report(report))

    def _runner(self, name: str) -> WorkloadRunner:
        if self.daemon.stopping:
            raise HttpError(503, "healthd is stopping")
        try:
            return self.daemon.runner(name)
        except UnknownWorkload:
            raise _unknown(name) from None
        except NotMonitored as exc:
            raise HttpError(409, str(exc)) from None


def _unknown(name: str) -> HttpError:
    return HttpError(404, f"no workload named {name!r}")


def _int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    values = request.query.get(key)
    if not values:
        return default
    text = values[-1]
    # ASCII digits only, and few of them: str.isdigit() also takes "²" (int() refuses it) and
    # int() refuses more than 4300 digits; either would be a 500 instead of a 400.
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise HttpError(400, f"{key} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


def _object_body(request: Request, allowed: set[str]) -> dict[str, Any]:
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
