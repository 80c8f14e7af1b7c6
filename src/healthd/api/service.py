"""The API as the daemon runs it: checks its settings, binds its listeners, closes them.

Everything that can be wrong with the API's settings is found before the daemon starts
monitoring, with an error that names the setting and the fix: a port in use, a token file
with loose permissions, a non-loopback listener without a token.
"""

from __future__ import annotations

import os
from pathlib import Path

from healthd.api.app import Api
from healthd.api.auth import Authorizer, read_token
from healthd.api.hosts import HostRule
from healthd.api.http import HttpServer
from healthd.api.messages import Limits
from healthd.config.daemon_file import ApiSettings, ListenAddress
from healthd.engine.daemon import Daemon
from healthd.errors import HealthdError
from healthd.logs import Logger


class ApiStartError(HealthdError):
    """The API cannot start with these settings."""


class ApiService:
    def __init__(self, daemon: Daemon, settings: ApiSettings, log: Logger) -> None:
        self.daemon = daemon
        self.settings = settings
        self.log = log
        self.server: HttpServer | None = None
        self.endpoints: dict[str, str] = {}

    async def start(self) -> None:
        listen, socket_path = self.settings.listen, self.settings.socket
        token = read_token(self.settings.token_file) if self.settings.token_file else None
        if listen is not None and not listen.is_loopback and token is None:
            raise ApiStartError(
                f"refusing to serve the API on {listen}, which is not a loopback address, "
                "without a token: set api.token_file (or listen on 127.0.0.1)"
            )
        authorizer = Authorizer(
            token, loopback=listen is None or listen.is_loopback, own_uid=os.geteuid()
        )
        allowed = self.settings.allowed_hosts
        hosts = HostRule.for_listener(listen.host, allowed) if listen is not None else None
        self.server = HttpServer(
            Api(self.daemon, authorizer), log=self.log, limits=self._limits(), hosts=hosts
        )
        try:
            if listen is not None:
                host, port = await self._listen(listen)
                self.endpoints["listen"] = str(ListenAddress(host, port))
                # the address a name in api.listen was bound to answers too
                self.server.hosts = HostRule.for_listener(listen.host, (host, *allowed))
            if socket_path is not None:
                await self._listen_unix(socket_path)
                self.endpoints["socket"] = str(socket_path)
        except ApiStartError:
            await self.close()
            raise
        self.daemon.api_endpoints = dict(self.endpoints)
        self.log.info("api_listening", token=token is not None, **self.endpoints)

    def _limits(self) -> Limits:
        settings = self.settings
        if settings.socket_max_connections_per_uid >= settings.socket_max_connections:
            raise ApiStartError(
                "api.socket_max_connections_per_uid must be below api.socket_max_connections: "
                "that many places are kept for root, and other users need some too"
            )
        return Limits(
            max_connections=settings.max_connections,
            max_connections_per_address=settings.max_connections_per_address,
            socket_max_connections=settings.socket_max_connections,
            socket_max_connections_per_uid=settings.socket_max_connections_per_uid,
        )

    async def _listen(self, listen: ListenAddress) -> tuple[str, int]:
        assert self.server is not None
        try:
            return await self.server.listen_tcp(listen.host, listen.port)
        except OSError as exc:
            raise ApiStartError(
                f"cannot listen on {listen}: {exc.strerror or exc}; "
                "choose another address with --listen or api.listen"
            ) from None

    async def _listen_unix(self, path: Path) -> None:
        assert self.server is not None
        try:
            await self.server.listen_unix(path)
        except OSError as exc:
            raise ApiStartError(f"cannot listen on the socket {path}: {exc}") from None

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None
