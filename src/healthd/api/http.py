"""A small HTTP/1.1 server for the API, on asyncio protocols and httptools' request parser.

Why not a framework: aiohttp's server alone adds ~17 MB of resident memory to a daemon that
needs ~30 MB for 1,000 workloads, and the API is a dozen JSON routes. httptools (llhttp, the
parser of Node.js, already used by the HTTP check) does the protocol parsing; this module adds
what a daemon facing untrusted clients needs around it, so that no client can disturb
monitoring:

- limits on the request line and headers, the body, connections (per listener and per
  peer: see ``budget.py``) and pipelined requests,
  each answered with its own status code and a JSON error, never an exception (after the
  answers to the requests read before, and with a lingering close, so that the client gets
  it even while it is still sending);
- deadlines: headers must arrive within ``header_timeout`` of a request's first byte (a slow
  client cannot hold a connection), idle keep-alive connections close after ``idle_timeout``;
- one handler call at a time per connection, in request order; a handler that raises is a
  500 for that request only; a client that does not read its answers is not read from
  either, so that answers cannot pile up in memory;
- streamed answers (Server-Sent Events) are chunked, wait for a slow client instead of
  buffering for it (in a bounded socket buffer), are exempt from the idle timeout while they
  run but not from taking what is sent (``sendqueue.py``), and end when the client goes away
  or the server closes;
- with a ``HostRule``, a request on the TCP listener that names another server in its
  ``Host`` is 421 before any handler sees it (see ``hosts.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

from healthd.api.budget import ConnectionBudget
from healthd.api.connection import Connection
from healthd.api.hosts import HostRule, IpAddress
from healthd.api.messages import Handler, Limits, Peer
from healthd.logs import Logger

# A refused Host is logged at most this often (with how many since): any local user can
# send them, and must not be able to fill the log.
MISDIRECTED_LOG_INTERVAL = 60.0


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        *,
        log: Logger,
        limits: Limits | None = None,
        hosts: HostRule | None = None,
    ) -> None:
        self.handler = handler
        self.log = log
        self.limits = limits or Limits()
        self.hosts = hosts  # None: any Host is answered
        self._misdirected = 0  # refused since the last log line
        self._misdirected_logged_at: float | None = None
        self.connections: set[Connection] = set()
        # root's and the daemon's own connections on the socket have places kept for them
        self.budget = ConnectionBudget(self.limits, trusted_uids={0, os.geteuid()})
        self.refusing = 0  # refused connections not closed yet
        self._servers: list[asyncio.Server] = []
        self._socket_paths: list[Path] = []

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port``; returns the address bound (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(self, "tcp"), host, port, reuse_address=True
        )
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def listen_unix(self, path: Path, mode: int = 0o660) -> None:
        """Listen on a Unix socket at ``path`` (a stale socket file there is replaced)."""
        _clear_socket_path(path)
        loop = asyncio.get_running_loop()
        # bind() creates the file with this mode, never wider for a moment. No chmod of the
        # path after it: whoever can write in the directory could have swapped a symlink in
        # by then, and the chmod would give the mode to the file it points to.
        old_umask = os.umask(0o777 & ~mode)
        try:
            server = await loop.create_unix_server(lambda: Connection(self, "unix"), str(path))
        finally:
            os.umask(old_umask)
        self._servers.append(server)
        self._socket_paths.append(path)

    def misdirected(self, host: str | IpAddress, peer: Peer) -> None:
        """Note a request refused for its Host; logged at most once a minute."""
        self._misdirected += 1
        now = asyncio.get_running_loop().time()
        last = self._misdirected_logged_at
        if last is not None and now - last < MISDIRECTED_LOG_INTERVAL:
            return
        self.log.warning(
            "api_host_refused",
            host=str(host),  # a parsed name or address: no other characters get here
            peer=peer.host,
            refused=self._misdirected,
            hint="a page may be trying DNS rebinding; or add the name to api.allowed_hosts",
        )
        self._misdirected = 0
        self._misdirected_logged_at = now

    async def close(self) -> None:
        """Stop listening and close every connection (handlers in flight are cancelled)."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for path in self._socket_paths:
            with contextlib.suppress(OSError):
                path.unlink()
        self._servers.clear()
        self._socket_paths.clear()


def _clear_socket_path(path: Path) -> None:
    """Make room for a new socket: remove a stale one; never remove anything else, nor a
    socket another process still listens on (say, a second healthd started by mistake)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        if _listened_on(path):
            raise FileExistsError(f"{path} is in use: another process listens on it")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)


def _listened_on(path: Path) -> bool:
    """Whether a process accepts connections on the socket at ``path``: a stale one refuses."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a listener with a full backlog says EAGAIN, not wait
        return probe.connect_ex(str(path)) not in (errno.ECONNREFUSED, errno.ENOENT)
