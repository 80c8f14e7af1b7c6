"""The API's routes: which handler answers which method and path, and the errors in between.

Every answer is JSON (but /metrics and the event stream), every error a JSON
``{"error": {...}}`` with the status that says what went wrong; nothing a client sends can
raise into the daemon.

Monitoring comes first: every request lets the loop run once before it is answered (so that a
connection with many pipelined requests cannot hold the loop from the checks for all of them);
the reads whose cost grows with the number of workloads (``EXPENSIVE``) spend their client's
budget (``read_budget.py``), and the biggest are kept and served again (``answers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from healthd.api import params, ui, views
from healthd.api.answers import CachedAnswer
from healthd.api.auth import OPEN_PATHS, Authorizer
from healthd.api.messages import HttpError, Request, Response, json_response
from healthd.api.openapi import document as openapi_document
from healthd.api.read_budget import ReadBudget, peer_key
from healthd.api.stream import KEEPALIVE, EventStream
from healthd.engine.daemon import Daemon
from healthd.engine.history import HISTORY_SIZE
from healthd.engine.runner import WorkloadRunner
from healthd.errors import NotMonitored, UnknownWorkload
from healthd.model import Event
from healthd.store.journal import JournalError, event_json

if TYPE_CHECKING:
    from healthd.sinks.notifier import Notifier

Route = Callable[[Request, str], Awaitable[Response]]
MAX_REASON = 500  # characters of a pause reason
# A "check now" waits at most this long beyond the workload's own timeout (an exec check may
# first wait for a slot when the host is overloaded).
CHECK_GRACE = 30.0
EVENTS_LIMIT, EVENTS_MAX = 100, 1000
HISTORIES_MAX = 200  # workloads in one GET /v1/history: a page's visible rows, and then some
T = TypeVar("T")
# The reads whose cost grows with the workloads or the journal: each spends the client's
# budget of expensive reads. (One workload's status or history costs what a /healthz does.)
EXPENSIVE = frozenset(
    {"/v1/status", "/v1/workloads", "/metrics", "/v1/history", "/v1/events", "/v1/sinks"}
)


@dataclass(frozen=True)
class _Path:
    pattern: re.Pattern[str]
    methods: dict[str, Route]


class Api:
    """The request handler given to ``HttpServer``."""

    def __init__(
        self, daemon: Daemon, authorizer: Authorizer, budget: ReadBudget | None = None
    ) -> None:
        self.daemon = daemon
        self.authorizer = authorizer
        self.budget = budget or ReadBudget()
        self.stream_keepalive = KEEPALIVE
        # Changes made through the API that show in kept answers at once (a check run now
        # changes counters but no state, so the daemon's generation does not move for it).
        self.changes_made = 0
        self.status_answer = CachedAnswer(lambda: views.encode_all_statuses(daemon), self._version)
        self.workloads_answer = CachedAnswer(lambda: views.encode_workloads(daemon), self._version)
        self.metrics_answers = {
            openmetrics: CachedAnswer(
                functools.partial(self._render_metrics, openmetrics), self._version
            )
            for openmetrics in (False, True)
        }
        self.openapi_body = b""  # encoded at the first request
        # Events committed since the start, by type, for healthd_events_total.
        self.committed_types: Counter[str] = Counter()
        if daemon.notifier is not None:
            daemon.notifier.journal.on_commit(self._count_committed)
        name = r"(?P<w>[^/]+)"
        self.paths = [
            _Path(re.compile(r"/"), {"GET": self.index}),
            _Path(re.compile(r"/ui/[^/]+"), {"GET": self.ui_asset}),
            _Path(re.compile(r"/healthz"), {"GET": self.healthz}),
            _Path(re.compile(r"/metrics"), {"GET": self.metrics}),
            _Path(re.compile(r"/v1/openapi\.json"), {"GET": self.openapi}),
            _Path(re.compile(r"/v1/status"), {"GET": self.status_all}),
            _Path(re.compile(rf"/v1/status/{name}"), {"GET": self.status_one}),
            _Path(re.compile(r"/v1/workloads"), {"GET": self.workloads}),
            _Path(re.compile(r"/v1/history"), {"GET": self.histories}),
            _Path(re.compile(rf"/v1/workloads/{name}/history"), {"GET": self.history}),
            _Path(re.compile(rf"/v1/workloads/{name}/check"), {"POST": self.check}),
            _Path(re.compile(rf"/v1/workloads/{name}/pause"), {"POST": self.pause}),
            _Path(re.compile(rf"/v1/workloads/{name}/resume"), {"POST": self.resume}),
            _Path(re.compile(rf"/v1/workloads/{name}/reset"), {"POST": self.reset}),
            _Path(re.compile(r"/v1/events"), {"GET": self.events}),
            _Path(re.compile(r"/v1/events/stream"), {"GET": self.events_stream}),
            _Path(re.compile(r"/v1/sinks"), {"GET": self.sinks}),
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
            if not self.daemon.started.is_set() and request.path not in OPEN_PATHS:
                raise HttpError(503, "healthd is starting; try again in a moment")
            # The checks due meanwhile first: a connection's pipelined requests are answered
            # one loop iteration apart, not all in one go.
            await asyncio.sleep(0)
            if request.path in EXPENSIVE:
                await self._wait_turn(request)
            try:
                return await route(request, match.groupdict().get("w") or "")
            finally:
                if request.method == "POST":  # what it changed shows in the next answers
                    self.changes_made += 1
        raise HttpError(404, f"no such endpoint {request.path!r}; see GET /v1/openapi.json")

    async def _wait_turn(self, request: Request) -> None:
        turn = self.budget.turn(peer_key(request.peer))
        if turn.wait > 0:
            await asyncio.sleep(turn.wait)
        if turn.refused:
            raise HttpError(
                429,
                "too many expensive reads (whole status, configs, metrics, history, events, "
                f"sinks) from this client; try again in {turn.retry_after} s",
                [("Retry-After", str(turn.retry_after))],
            )

    def _version(self) -> int:
        """What kept answers depend on besides time (see answers.py): both counts only grow."""
        return self.daemon.generation + self.changes_made

    # -- reading --------------------------------------------------------------------------

    async def index(self, request: Request, _: str) -> Response:
        if ui.wants_page(request.headers.get("accept", "")):
            return ui.page()
        return json_response(
            200,
            {
                "service": "healthd",
                "endpoints": [
                    "/v1/status",
                    "/v1/workloads",
                    "/v1/history",
                    "/v1/events",
                    "/v1/events/stream",
                    "/v1/sinks",
                    "/metrics",
                    "/healthz",
                ],
                "openapi": "/v1/openapi.json",
            },
        )

    async def ui_asset(self, request: Request, _: str) -> Response:
        return ui.asset(request.path)

    async def healthz(self, request: Request, _: str) -> Response:
        ok, details = views.daemon_health(self.daemon, asyncio.get_running_loop().time())
        return json_response(200 if ok else 503, details)

    async def metrics(self, request: Request, _: str) -> Response:
        from healthd.api import metrics  # noqa: PLC0415  (loaded at the first scrape only)

        openmetrics = metrics.wants_openmetrics(request.headers.get("accept", ""))
        body = await self.metrics_answers[openmetrics].get()
        return Response(200, body, metrics.content_type(openmetrics))

    async def _render_metrics(self, openmetrics: bool) -> bytes:
        from healthd.api import metrics  # noqa: PLC0415  (loaded at the first scrape only)

        pending = None
        notifier = self.daemon.notifier
        if notifier is not None:
            # No journal to read now: the gauge is left out, not zeroed.
            with contextlib.suppress(HttpError):
                pending = await self._read(notifier, notifier.journal.pending_counts)
        snap = metrics.snapshot(self.daemon, pending, self.committed_types)
        return await metrics.render(snap, openmetrics)

    async def openapi(self, request: Request, _: str) -> Response:
        if not self.openapi_body:  # the same document for the daemon's life
            self.openapi_body = json_response(200, openapi_document()).body
        return Response(200, self.openapi_body)

    async def status_all(self, request: Request, _: str) -> Response:
        return Response(200, await self.status_answer.get())

    async def status_one(self, request: Request, name: str) -> Response:
        status = self.daemon.statuses.get(name)
        if status is None:
            raise _unknown(name)
        return json_response(200, views.status_entry(self.daemon, status))

    async def workloads(self, request: Request, _: str) -> Response:
        return Response(200, await self.workloads_answer.get())

    async def history(self, request: Request, name: str) -> Response:
        if name not in self.daemon.statuses:
            raise _unknown(name)
        limit = params.int_param(request, "limit", HISTORY_SIZE, 1, HISTORY_SIZE)
        return json_response(200, views.history(self.daemon, name, limit))

    async def histories(self, request: Request, _: str) -> Response:
        names = list(dict.fromkeys(request.query.get("workload", [])))
        if not names or len(names) > HISTORIES_MAX:
            raise HttpError(
                400, f"name from 1 to {HISTORIES_MAX} workloads, each as ?workload=NAME"
            )
        limit = params.int_param(request, "limit", HISTORY_SIZE, 1, HISTORY_SIZE)
        return json_response(200, views.histories(self.daemon, names, limit))

    # -- events ---------------------------------------------------------------------------

    async def events(self, request: Request, _: str) -> Response:
        notifier = self._notifier()
        after = params.id_param(request, "after_id")
        limit = params.int_param(request, "limit", EVENTS_LIMIT, 1, EVENTS_MAX)
        workload = params.last(request, "workload")
        types = params.types_param(request)
        since = params.since_param(request)
        newest = params.order_param(request) == "newest"
        journal = notifier.journal
        scanned_to = journal.committed_id  # the query below reads at least this far
        found = await self._read(
            notifier,
            functools.partial(
                journal.events,
                after_id=after,
                workload=workload,
                types=types,
                since=since,
                limit=limit,
                newest=newest,
            ),
        )
        last = found[-1].id if found else after
        if len(found) < limit or newest:
            # Nothing more matched up to ``scanned_to``: the next page starts after it.
            last = max(last, scanned_to)
        return json_response(200, {"events": [event_json(e) for e in found], "last_id": last})

    async def events_stream(self, request: Request, _: str) -> Response:
        notifier = self._notifier()
        after: int | None = None
        header = request.headers.get("last-event-id", "").strip()
        if header:
            after = params.id_value("Last-Event-ID", header)
        elif request.query.get("after_id"):
            after = params.id_param(request, "after_id")
        stream = EventStream(
            notifier.journal,
            after,
            workload=params.last(request, "workload"),
            types=params.types_param(request),
            keepalive=self.stream_keepalive,
        )
        return Response(
            200,
            content_type="text/event-stream; charset=utf-8",
            headers=[("X-Accel-Buffering", "no")],  # a proxy in front must not hold events back
            stream=stream.chunks(),
        )

    async def sinks(self, request: Request, _: str) -> Response:
        notifier = self._notifier()
        counts = await self._read(notifier, notifier.journal.counts)
        return json_response(200, views.sinks(notifier, counts))

    def _notifier(self) -> Notifier:
        notifier = self.daemon.notifier
        if notifier is None:
            raise HttpError(503, "this daemon keeps no event journal (it runs without a notifier)")
        return notifier

    async def _read(self, notifier: Notifier, fn: Callable[[], T]) -> T:
        """A blocking journal query, in a thread; a journal that cannot answer is a 503."""
        try:
            return await notifier.journal.call(fn)
        except (JournalError, sqlite3.Error) as exc:
            raise HttpError(503, f"the event journal cannot be read now: {exc}") from None

    def _count_committed(self, batch: list[Event]) -> None:
        self.committed_types.update(e.type.value for e in batch)

    # -- acting ---------------------------------------------------------------------------

    async def check(self, request: Request, name: str) -> Response:
        params.object_body(request, set())
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
        body = params.object_body(request, {"reason"})
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise HttpError(400, f"reason must be a string of at most {MAX_REASON} characters")
        self._runner(name)
        status = self.daemon.pause(name, reason)
        return json_response(200, views.status_entry(self.daemon, status))

    async def resume(self, request: Request, name: str) -> Response:
        params.object_body(request, set())
        self._runner(name)
        status = self.daemon.resume(name)
        return json_response(200, views.status_entry(self.daemon, status))

    async def reset(self, request: Request, name: str) -> Response:
        params.object_body(request, set())
        self._runner(name)
        status = self.daemon.operations.reset(name)
        return json_response(200, views.status_entry(self.daemon, status))

    async def reload(self, request: Request, _: str) -> Response:
        params.object_body(request, set())
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
