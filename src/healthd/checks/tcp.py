"""tcp: healthy when a TCP connection to ADDRESS:PORT is accepted.

An IP literal is connected with a bare non-blocking socket watched by the event loop (no
transport or protocol objects: the connection is closed as soon as it is made). A host name
goes through the loop's resolver first, and each address it gives is tried in turn.

With ``send`` and/or ``expect`` the check also talks once connected: that conversation is
``tcp_talk.py``'s. A plain connect check has no conversation and only ever tests one
attribute for it (``_talk is not None``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from _socket import socket as bare_socket  # no Python-level wrapper: made once a check
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from healthd.checks import tcp_talk
from healthd.checks.probe import Probe, connect_error, host_port, numeric_family
from healthd.checks.tcp_talk import Conversation

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig


class TcpProbe(Probe):
    __slots__ = (
        "_family",
        "_resolving",
        "_sock",
        "_sockaddr",
        "_sockaddr_for",
        "_talk",
    )

    def __init__(self, cfg: WorkloadConfig) -> None:
        super().__init__(cfg)
        self._sock: bare_socket | None = None
        self._sockaddr_for: str | None = None
        self._family: socket.AddressFamily | None = None
        self._sockaddr: tuple[str, int] = ("", 0)
        self._resolving: asyncio.Task[None] | None = None
        # send/expect: a conversation after the connect; None keeps the plain check as it was
        self._talk: Conversation | None = None
        if cfg.send or cfg.expect:
            self._talk = Conversation(cfg.send, cfg.expect, self._talked)

    def describe(self) -> str:
        return TcpCheck.describe(self.cfg, self.address)

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sockaddr_for != self.address:  # worked out once per address, not per check
            self._sockaddr_for = self.address
            self._family = numeric_family(self.address)
            self._sockaddr = (self.address, self.cfg.port)
        family = self._family
        if family is None:
            self._resolving = loop.create_task(self._resolve_and_connect(loop))
            return
        error = self._connect(loop, family, self._sockaddr)
        if error:
            self._fail(error)

    def _connect(self, loop: asyncio.AbstractEventLoop, family: int, sockaddr: Any) -> int:
        """Start connecting; 0 when under way (or done), else the errno of an instant failure."""
        try:
            sock = bare_socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:  # out of descriptors or buffers: a failed check, not a crash
            return exc.errno or errno.EIO
        err = sock.connect_ex(sockaddr)
        if err == errno.EINPROGRESS:
            # Asking again costs one syscall and usually settles it (a loopback handshake
            # completes within the first call), sparing the event-loop round trip.
            err = sock.connect_ex(sockaddr)
            if err in (errno.EALREADY, errno.EINPROGRESS):
                self._sock = sock
                loop.add_writer(sock.fileno(), self._on_writable)
                return 0
        if self._talk is not None and err in (0, errno.EISCONN):
            self._sock = sock
            self._talk.begin(sock, loop)
            return 0
        sock.close()
        if err in (0, errno.EISCONN):
            self._finish(True)
            return 0
        return err

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        talk = self._talk
        if talk is not None and not err:
            loop = self._loop
            assert loop is not None  # set by start()
            loop.remove_writer(sock.fileno())
            talk.begin(sock, loop)
            return
        self._release()
        if err:
            self._fail(err)
        else:
            self._finish(True)

    async def _resolve_and_connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            infos = await loop.getaddrinfo(
                self.address, self.cfg.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError) as exc:
            self._resolving = None
            self._finish(False, f"{self._failure_prefix()}{connect_error(exc)}")
            return
        last = errno.ECONNREFUSED
        for family, _, _, _, sockaddr in infos:
            waiter: asyncio.Future[int] = loop.create_future()
            try:
                sock = bare_socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            except OSError as exc:
                last = exc.errno or errno.EIO
                continue
            err = sock.connect_ex(sockaddr)
            self._sock = sock
            if err == errno.EINPROGRESS:
                loop.add_writer(sock.fileno(), _settle, waiter, sock)
                try:
                    err = await waiter  # the deadline cancels this task (_abort)
                except BaseException:
                    self._release()
                    raise
                loop.remove_writer(sock.fileno())
            if err == 0:
                self._resolving = None
                if self._talk is not None:
                    self._talk.begin(sock, loop)
                    return
                self._release()
                self._finish(True)
                return
            self._release()
            last = err
        self._resolving = None
        self._fail(last)

    # -- send / expect (tcp_talk.py) --------------------------------------------------------

    def _talked(self, why: str | None) -> None:
        """The conversation ended: healthy when ``why`` is None."""
        self._release()
        if why is None:
            self._finish(True)
        else:
            self._finish(False, f"{self._failure_prefix()}{why}")

    def _on_deadline(self) -> None:
        talk = self._talk
        if talk is None or not (talk.reading or talk.writing):  # still connecting
            super()._on_deadline()
            return
        what = talk.progress()
        self._abort()
        self._finish(False, f"timed out after {self._timeout_text}: {self.describe()}: {what}")

    # -- common ---------------------------------------------------------------------------

    def _fail(self, err: int) -> None:
        reason = connect_error(OSError(err, os.strerror(err)))
        self._finish(False, f"{self._failure_prefix()}{reason}")

    def _failure_prefix(self) -> str:
        return f"TCP check failed: {host_port(self.address, self.cfg.port)}: "

    def _release(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            loop = self._loop
            if loop is not None:
                loop.remove_writer(sock.fileno())
            if self._talk is not None:
                self._talk.stop()
            sock.close()

    def _abort(self) -> None:
        self._release()
        if self._resolving is not None:
            self._resolving.cancel()
            self._resolving = None


def _settle(waiter: asyncio.Future[int], sock: bare_socket) -> None:
    if not waiter.done():
        waiter.set_result(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))


class TcpCheck:
    name = "tcp"
    needs_address = True

    def fill_defaults(self, cfg: WorkloadConfig) -> WorkloadConfig:
        return cfg

    def validate(self, cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
        if not cfg.port:
            hint = " (target is not used by tcp checks)" if cfg.target else ""
            yield "port", f"required for tcp checks{hint}"
        yield from tcp_talk.validate(cfg)

    @staticmethod
    def describe(cfg: WorkloadConfig, address: str) -> str:
        return f"tcp {host_port(address, cfg.port)}"

    def probe(self, cfg: WorkloadConfig) -> TcpProbe:
        return TcpProbe(cfg)
