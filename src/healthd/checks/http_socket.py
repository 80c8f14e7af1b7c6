"""SocketConnection: a plain HTTP connection on a bare non-blocking socket, watched by the loop.

Every check opens a connection, so opening one is most of what a check costs. The loop's
``create_connection`` makes a task, a coroutine, a transport and a protocol object for each,
about half of a check's time in the daemon. An IP address needs none of them: a socket, a
connect (which a loopback or LAN handshake usually completes within the call, as in
``tcp.py``), one send of the request and reads as they come, with the socket's readiness
watched by the loop. Host names (resolved by the loop) and TLS keep the loop's transports
(``http_probe.HttpConnection``); both kinds of connection offer the probe the same three
things: ``closed``, ``write`` and ``close``, and report to it through ``_on_data`` and
``_on_lost``.

The socket is made with SO_LINGER 0, as every connection of a check is: closing it resets the
connection, so neither end keeps it in TIME-WAIT.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from _socket import socket as bare_socket  # no Python-level wrapper: one is made per check
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from healthd.checks.http_probe import HttpProbe

RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s
READ_SIZE = 64 * 1024
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EALREADY})


class SocketConnection:
    __slots__ = ("_fd", "_loop", "_unsent", "closed", "probe", "sock")

    def __init__(self, probe: HttpProbe, loop: asyncio.AbstractEventLoop, sock: bare_socket):
        self.probe = probe
        self.sock = sock
        self.closed = False
        self._loop = loop
        self._fd = sock.fileno()
        self._unsent = b""

    @classmethod
    def open(
        cls, probe: HttpProbe, loop: asyncio.AbstractEventLoop, family: int, sockaddr: Any
    ) -> SocketConnection | int:
        """Start connecting to ``sockaddr``: the connection, handed to the probe's
        ``_connected`` once connected (at once when the handshake completes within the call),
        or the errno of a connect that failed at once."""
        try:
            sock = bare_socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:  # out of descriptors or buffers: a failed check, not a crash
            return exc.errno or errno.EIO
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        err = sock.connect_ex(sockaddr)
        if err == errno.EINPROGRESS:
            err = sock.connect_ex(sockaddr)  # usually settled by now, sparing a loop round trip
        if err not in (0, errno.EISCONN) and err not in _IN_PROGRESS:
            sock.close()
            return err
        conn = cls(probe, loop, sock)
        if err in _IN_PROGRESS:
            loop.add_writer(conn._fd, conn._on_connect)
        else:
            conn._start_reading()
            probe._connected(conn)
        return conn

    def _on_connect(self) -> None:
        self._loop.remove_writer(self._fd)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._release()
            self.probe._connect_failed(err)
            return
        self._start_reading()
        self.probe._connected(self)

    def _start_reading(self) -> None:
        self._loop.add_reader(self._fd, self._on_readable)

    # -- what the probe uses --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._unsent:  # still sending the last: queue behind it (a redirect cannot, but)
            self._unsent += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):  # a request of a few hundred bytes is sent whole, nearly always
            self._unsent = data[sent:]
            self._loop.add_writer(self._fd, self._on_writable)

    def close(self) -> None:
        if not self.closed:
            self._release()

    cancel = close  # while connecting, the probe holds it as what is "opening"

    # -- the loop's callbacks -------------------------------------------------------------

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        self._unsent = self._unsent[sent:]
        if not self._unsent:
            self._loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if data:
            self.probe._on_data(self, data)
        else:  # the server closed its end: close ours too, as a transport would
            self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self._release()
        self.probe._on_lost(self, exc)

    def _release(self) -> None:
        self.closed = True
        self._unsent = b""
        # both, whatever is registered (the writer while connecting or sending): before the
        # close, as the descriptor's number is another socket's once closed
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self.sock.close()
