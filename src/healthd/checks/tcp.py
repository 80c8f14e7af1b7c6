"""tcp: healthy when a TCP connection to ADDRESS:PORT is accepted.

An IP literal is connected with a bare non-blocking socket watched by the event loop (no
transport or protocol objects: the connection is closed as soon as it is made). A host name
goes through the loop's resolver first, and each address it gives is tried in turn.

With ``send`` and/or ``expect`` the check also talks: once connected it writes ``send`` (if
set), then reads until ``expect`` appears in what the peer sent (healthy), or the peer closes,
or ``READ_CAP`` bytes came without it, or the deadline passes (unhealthy, with what came). A
server whose kernel still completes handshakes from the listen backlog while the process is
wedged passes a plain connect; it fails this. Text is sent and matched as UTF-8. A plain
connect check only ever tests one attribute more than before (``_talk``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
from _socket import socket as bare_socket  # no Python-level wrapper: made once a check
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from healthd.checks.probe import Probe, connect_error, host_port, numeric_family

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

READ_CAP = 4096  # bytes read looking for ``expect``: a banner or a reply line, not a stream
SHOWN_CHARS = 100  # of what the peer sent, in an error
# What a YAML plain or single-quoted value keeps as two characters, where a double-quoted one
# would have made a control character: almost certainly meant as the latter.
_LITERAL_ESCAPE = re.compile(r"\\[rnt0]")


class TcpProbe(Probe):
    __slots__ = (
        "_expect",
        "_family",
        "_reading",
        "_received",
        "_resolving",
        "_send",
        "_sock",
        "_sockaddr",
        "_sockaddr_for",
        "_talk",
        "_unsent",
        "_writing",
    )

    def __init__(self, cfg: WorkloadConfig) -> None:
        super().__init__(cfg)
        self._sock: bare_socket | None = None
        self._sockaddr_for: str | None = None
        self._family: socket.AddressFamily | None = None
        self._sockaddr: tuple[str, int] = ("", 0)
        self._resolving: asyncio.Task[None] | None = None
        # send/expect: a conversation after the connect; False keeps the plain check as it was
        self._send = cfg.send.encode() if cfg.send else b""
        self._expect = cfg.expect.encode() if cfg.expect else b""
        self._talk = bool(self._send or self._expect)
        self._received = bytearray()
        self._unsent = memoryview(b"")
        self._writing = False  # watching for room to send
        self._reading = False  # watching for the answer

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
        if self._talk and err in (0, errno.EISCONN):
            self._sock = sock
            self._converse()
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
        if self._talk and not err:
            if self._loop is not None:
                self._loop.remove_writer(sock.fileno())
            self._converse()
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
                if self._talk:
                    self._converse()
                    return
                self._release()
                self._finish(True)
                return
            self._release()
            last = err
        self._resolving = None
        self._fail(last)

    # -- send / expect ----------------------------------------------------------------------

    def _converse(self) -> None:
        """Connected (``self._sock``): send, then read until ``expect``."""
        self._received.clear()
        if self._send:
            self._unsent = memoryview(self._send)
            self._write()
        else:
            self._await_answer()

    def _write(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._unsent, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._release()
            self._finish(False, f"{self._failure_prefix()}sending failed: {connect_error(exc)}")
            return
        self._unsent = self._unsent[sent:]
        loop = self._loop
        assert loop is not None
        if self._unsent:  # the peer is not reading (or a big send): wait for room
            if not self._writing:
                self._writing = True
                loop.add_writer(sock.fileno(), self._write)
            return
        if self._writing:
            self._writing = False
            loop.remove_writer(sock.fileno())
        if self._expect:
            self._await_answer()
        else:  # refused by validation; written so that it could not hang either way
            self._release()
            self._finish(True)

    def _await_answer(self) -> None:
        sock = self._sock
        assert sock is not None
        assert self._loop is not None
        self._reading = True
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        received = self._received
        try:
            data = sock.recv(READ_CAP - len(received))
        except BlockingIOError:
            return
        except OSError as exc:
            self._mismatch(connect_error(exc))
            return
        if not data:
            self._mismatch("connection closed")
            return
        # look only where the new bytes can complete a match
        start = max(0, len(received) - len(self._expect) + 1)
        received += data
        if received.find(self._expect, start) >= 0:
            self._release()
            self._finish(True)
        elif len(received) >= READ_CAP:
            self._mismatch(f"no match in the first {READ_CAP} bytes")

    def _mismatch(self, why: str) -> None:
        self._release()
        self._finish(False, f"{self._failure_prefix()}{self._expected_got()} ({why})")

    def _expected_got(self) -> str:
        got = shown(bytes(self._received)) if self._received else "nothing"
        return f"expected {self.cfg.expect!r}, got {got}"

    def _on_deadline(self) -> None:
        if not (self._reading or self._writing):  # still connecting
            super()._on_deadline()
            return
        if self._writing:
            what = f"sending: {len(self._unsent)} of {len(self._send)} bytes not taken by the peer"
        else:
            what = self._expected_got()
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
                if self._reading:
                    loop.remove_reader(sock.fileno())
            self._reading = self._writing = False
            sock.close()

    def _abort(self) -> None:
        self._release()
        if self._resolving is not None:
            self._resolving.cancel()
            self._resolving = None


def _settle(waiter: asyncio.Future[int], sock: bare_socket) -> None:
    if not waiter.done():
        waiter.set_result(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))


def shown(data: bytes) -> str:
    """What a peer sent, for an error: quoted, control characters escaped, cut short."""
    text = data.decode("utf-8", "replace")
    if len(text) > SHOWN_CHARS:
        return f"{text[:SHOWN_CHARS]!r}..."
    return repr(text)


class TcpCheck:
    name = "tcp"
    needs_address = True

    def fill_defaults(self, cfg: WorkloadConfig) -> WorkloadConfig:
        return cfg

    def validate(self, cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
        if not cfg.port:
            hint = " (target is not used by tcp checks)" if cfg.target else ""
            yield "port", f"required for tcp checks{hint}"
        if cfg.send is not None and cfg.expect is None:
            yield (
                "send",
                "set expect as well: what the answer must contain (sending alone proves "
                "no more than the connect)",
            )
        for key, value in (("send", cfg.send), ("expect", cfg.expect)):
            if value and (found := _LITERAL_ESCAPE.search(value)):
                escape = found.group()
                yield (
                    key,
                    f"{escape} is two characters here, a backslash and {escape[1]!r} (YAML "
                    "keeps backslashes in plain and single-quoted values): write the value "
                    f'in double quotes for the control character, e.g. {key}: "PING\\r\\n"',
                )
        if cfg.expect and len(cfg.expect.encode()) > READ_CAP:
            yield "expect", f"longer than the {READ_CAP} bytes read for it: it could never match"

    @staticmethod
    def describe(cfg: WorkloadConfig, address: str) -> str:
        return f"tcp {host_port(address, cfg.port)}"

    def probe(self, cfg: WorkloadConfig) -> TcpProbe:
        return TcpProbe(cfg)
