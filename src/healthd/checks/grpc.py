"""grpc: the standard health service, ``grpc.health.v1.Health/Check``; SERVING is healthy.

``service`` is the service asked about ("" or unset: the server as a whole, as the protocol
defines it). ``port`` is required: gRPC has no standard port. ``tls: true`` speaks TLS and
verifies the server's certificate against ``ca_file`` (the system's roots without it) and
the address checked; ``client_cert`` with ``client_key`` present a client certificate.
grpcio has no way to skip verification, so grpc checks do not take ``tls_skip_verify``.

grpcio (about 18 MB resident once a channel is up, and threads of its own) is imported when
the first grpc probe is made, never by a daemon or a command without grpc workloads. It runs on
the daemon's loop (uvloop) through grpc.aio, whose completion queue is polled by a grpc thread
that wakes the loop through a socket; channels are made inside a check, so on the loop that
runs them.

Every check makes a channel of its own (a new HTTP/2 connection, and TLS handshake) and closes
it when the answer is in, as http does: what a check reports is what the next new client gets.
With ``keep_alive: true`` the workload keeps one channel across checks instead: a check
answered by the health service keeps it; any other failure (nothing listening, TLS, the
deadline) closes it, so the next check connects afresh instead of waiting out grpc's reconnect
backoff (up to two minutes) while the server is already back.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from healthd import __version__, pathwalk
from healthd.checks.probe import Probe, host_port
from healthd.errors import quoted
from healthd.pathwalk import Authors

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

SERVING = 1  # grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING
DETAILS_CHARS = 300  # of grpc's own error details, in an error
PEM_MAX_BYTES = 1024 * 1024
_OPTIONS = (
    # the check is about the workload itself: never through http_proxy/grpc_proxy
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", 64 * 1024),  # the answer is a few bytes
    ("grpc.primary_user_agent", f"healthd/{__version__}"),
    # The channel's own connection, made and ended with it: from grpc's process-wide pool a
    # new channel could get the old one's connection back, with its reconnect backoff.
    ("grpc.use_local_subchannel_pool", 1),
)
# The PEM block each file must hold: checked at load, so a wrong file is a config error
_PEM_KINDS = {
    "ca_file": "CERTIFICATE",
    "client_cert": "CERTIFICATE",
    "client_key": "PRIVATE KEY",
}
_closing: set[asyncio.Task[None]] = set()  # channel closes under way: keep them referenced


def _modules() -> tuple[Any, Any, Any]:
    """grpc, health_pb2 and health_pb2_grpc, imported on first use.

    grpc core writes its own log lines to stderr (a failed TLS handshake, for one), which is
    the daemon's log, in a format of its own; what they say is in the check's error already.
    So they are off unless GRPC_VERBOSITY says otherwise. grpc reads it once, at import: it is
    set for the import only, so that restart commands, which get the daemon's environment,
    do not inherit it.
    """
    quiet = "GRPC_VERBOSITY" not in os.environ
    if quiet:
        os.environ["GRPC_VERBOSITY"] = "NONE"
    try:
        import grpc  # noqa: PLC0415  (only with a grpc check: its size and threads)
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415
    finally:
        if quiet:
            del os.environ["GRPC_VERBOSITY"]
    return grpc, health_pb2, health_pb2_grpc


class GrpcProbe(Probe):
    __slots__ = (
        "_channel",
        "_channel_for",
        "_grpc",
        "_method",
        "_options",
        "_pb2",
        "_request",
        "_stub",
        "_task",
    )

    def __init__(self, cfg: WorkloadConfig) -> None:
        super().__init__(cfg)
        grpc, health_pb2, health_pb2_grpc = _modules()
        self._grpc = grpc
        self._pb2 = health_pb2
        self._stub = health_pb2_grpc.HealthStub
        self._request = health_pb2.HealthCheckRequest(service=cfg.service or "")
        self._channel: Any = None  # grpc.aio.Channel
        self._channel_for = ""  # the address it was made for
        self._method: Any = None  # the channel's Health/Check
        self._task: asyncio.Task[None] | None = None
        # How long grpc gives a connection attempt (its "minimum connect timeout", 20 s by
        # default): closing the channel does not end an attempt under way, so a server that
        # accepts and never answers would otherwise hold a socket that long after each check.
        attempt_ms = max(100, round(cfg.timeout * 1000))
        self._options = (*_OPTIONS, ("grpc.min_reconnect_backoff_ms", attempt_ms))

    def describe(self) -> str:
        return GrpcCheck.describe(self.cfg, self.address)

    def close(self) -> None:
        super().close()
        self._drop_channel()

    def _finish(self, ok: bool, error: str = "", note: str = "") -> None:
        super()._finish(ok, error, note)
        if not self.cfg.keep_alive:
            self._drop_channel()

    # -- Probe ----------------------------------------------------------------------------

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._channel is None or self._channel_for != self.address:
            self._drop_channel()
            error = self._open()
            if error:
                self._finish(False, self._failure(error))
                return
        self._task = loop.create_task(self._ask(self._method))

    def _abort(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # cancels the call too
        self._drop_channel()  # whatever held the answer up may hold the next one too

    # -- the call -------------------------------------------------------------------------

    async def _ask(self, method: Any) -> None:
        # No deadline of grpc's own: the probe's covers the connect as well, and its expiry
        # reads like every other kind's timeout.
        try:
            reply = await method(self._request, wait_for_ready=False)
        except self._grpc.aio.AioRpcError as exc:
            if self._task is asyncio.current_task():
                self._task = None
                self._rpc_failed(exc)
            return
        except Exception as exc:  # grpcio's own trouble: a failed check, never a loop error
            if self._task is asyncio.current_task():
                self._task = None
                self._drop_channel()
                self._finish(False, self._failure(f"{type(exc).__name__}: {exc}"))
            return
        if self._task is not asyncio.current_task():
            return  # abandoned meanwhile
        self._task = None
        status = reply.status
        if status == SERVING:
            self._finish(True)
            return
        serving_status = self._pb2.HealthCheckResponse.ServingStatus
        name = serving_status.Name(status) if status in serving_status.values() else status
        self._finish(False, self._failure(f"health status {name}"))

    def _rpc_failed(self, exc: Any) -> None:
        code = exc.code()
        codes = self._grpc.StatusCode
        if code is codes.NOT_FOUND:  # what the health service answers for a service it lacks
            what = f"service {self.cfg.service!r}" if self.cfg.service else "the server"
            reason = f"{what} is unknown to its health service (NOT_FOUND)"
        elif code is codes.UNIMPLEMENTED:
            reason = "the server does not implement grpc.health.v1.Health (UNIMPLEMENTED)"
        elif code is codes.DEADLINE_EXCEEDED:  # the server's own deadline, if it has one
            self._drop_channel()
            self._finish(False, f"timed out after {self._timeout_text}: {self.describe()}")
            return
        else:
            self._drop_channel()  # not an answer: connect afresh next time
            details = " ".join((exc.details() or "").split())
            if len(details) > DETAILS_CHARS:
                details = details[:DETAILS_CHARS] + "..."
            reason = f"{code.name}: {details}" if details else code.name
        self._finish(False, self._failure(reason))

    # -- the channel ----------------------------------------------------------------------

    def _open(self) -> str:
        """Make the channel for ``self.address``; an error text if that cannot be done."""
        grpc = self._grpc
        target = host_port(self.address, self.cfg.port)
        files: dict[str, bytes | None] = {}
        if self.cfg.tls:  # read for each new channel: a renewed certificate is picked up
            for key in _PEM_KINDS:
                path = getattr(self.cfg, key)
                try:
                    files[key] = None if path is None else _read(path, self.cfg.authors)
                except OSError as exc:
                    return f"cannot read {key} {path}: {exc.strerror or exc}"
        try:
            if self.cfg.tls:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=files["ca_file"],
                    private_key=files["client_key"],
                    certificate_chain=files["client_cert"],
                )
                channel = grpc.aio.secure_channel(target, credentials, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(target, options=self._options)
        except Exception as exc:  # grpcio refusing its arguments: a failed check, not a crash
            return f"cannot make a channel: {type(exc).__name__}: {exc}"
        self._channel = channel
        self._channel_for = self.address
        self._method = self._stub(channel).Check
        return ""

    def _drop_channel(self) -> None:
        channel, self._channel, self._method = self._channel, None, None
        if channel is None:
            return
        loop = self._loop
        if loop is not None and loop.is_running():
            # Without a grace period close() never waits: it cancels the calls and frees the
            # connection in the task's first step.
            task = loop.create_task(channel.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        # else: no loop to run close() on; the channel closes itself when collected

    def _failure(self, reason: str) -> str:
        return f"gRPC check failed: {_where(self.cfg, self.address)}: {reason}"


def _read(path: str, authors: Authors) -> bytes:
    """Read as far as ``authors`` could (``pathwalk.py``): root's keys are not lent to a
    workload file another user could change."""
    return pathwalk.read_bytes(path, authors, PEM_MAX_BYTES)[:PEM_MAX_BYTES]


def _where(cfg: WorkloadConfig, address: str) -> str:
    where = host_port(address, cfg.port)
    return f"{where} service {cfg.service!r}" if cfg.service else where


def _pem_problem(key: str, path: str, authors: Authors) -> str | None:
    if not os.path.isabs(path):
        return (
            f"{quoted(path)} must be an absolute path (the daemon's working directory is not yours)"
        )
    try:
        data = _read(path, authors)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    block = _PEM_KINDS[key]
    if b"-----BEGIN " not in data or f"{block}-----".encode() not in data:
        return f"{path} holds no PEM {block.lower()} (-----BEGIN ...{block}-----)"
    return None


class GrpcCheck:
    name = "grpc"
    needs_address = True

    def fill_defaults(self, cfg: WorkloadConfig) -> WorkloadConfig:
        return cfg

    def validate(self, cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
        if not cfg.port:
            yield "port", "required for grpc checks (gRPC has no standard port)"
        if cfg.target:
            yield (
                "target",
                "not used by grpc checks: the service to ask about is service "
                "(unset or '': the whole server)",
            )
        if cfg.service is not None and not cfg.service.isprintable():
            yield "service", "must not contain control characters"
        files = {k: getattr(cfg, k) for k in _PEM_KINDS if getattr(cfg, k) is not None}
        if files and not cfg.tls:
            for key in files:
                yield key, "set tls: true as well: without it the check does not use TLS"
            return
        if (cfg.client_cert is None) != (cfg.client_key is None):
            missing = "client_key" if cfg.client_key is None else "client_cert"
            present = "client_cert" if missing == "client_key" else "client_key"
            yield present, f"set {missing} as well: a client certificate needs both"
        for key, path in files.items():
            if problem := _pem_problem(key, path, cfg.authors):
                yield key, problem

    @staticmethod
    def describe(cfg: WorkloadConfig, address: str) -> str:
        return f"grpc{'+tls' if cfg.tls else ''} {_where(cfg, address)}"

    def probe(self, cfg: WorkloadConfig) -> GrpcProbe:
        return GrpcProbe(cfg)
