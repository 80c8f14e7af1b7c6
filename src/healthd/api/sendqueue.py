"""What a client of a streamed answer has not taken yet, and what to do when it takes nothing.

A streamed answer (Server-Sent Events) is endless, so a client that stops reading must be
noticed by the bytes it leaves behind, not by the end of the answer. Left alone, the kernel
grows a TCP socket's send buffer to fit (autotuning: ~2.7 MB each on loopback), the event loop
sees the socket as writable all the while, and such a client was only dropped once that buffer
and the transport's were full, then ``idle_timeout`` later: ~75 s and 2.7 MB of kernel memory
per client. And a plain close then left that memory queued behind a FIN, the kernel still
trying to deliver it to a client that does not read.

So, for the length of a stream:

- ``bound_buffers``: a fixed send buffer (the kernel doubles what is asked, for its own
  bookkeeping) ends the autotuning; the transport pauses the stream above a lower mark than
  its default 64 KiB; and ``TCP_USER_TIMEOUT`` lets the kernel itself give up on a peer that
  acknowledges nothing, a little after the stall deadline, should the event loop be too busy
  to;
- ``StallWatch``: once a second, the bytes not taken (the transport's buffer, and the socket's
  send queue: sent but not acknowledged on TCP, not yet read by the peer on a Unix socket); a
  client that has taken none of them for ``timeout`` is dropped;
- ``drop``: closing with ``SO_LINGER`` 0 resets the connection, which frees its queue at once
  and tells the client, instead of queueing a FIN behind bytes it will never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

_INT = struct.Struct("i")
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
# The kernel gives up on unacknowledged bytes this much after the stall deadline: the watch
# drops the client first (with a reset the client sees); this is the backstop.
_KERNEL_GRACE = 5.0


def _socket(transport: asyncio.BaseTransport) -> Any:
    """The transport's socket (asyncio's TransportSocket or uvloop's PseudoSocket), or None."""
    return transport.get_extra_info("socket")


def bound_buffers(
    transport: asyncio.Transport, send_buffer: int, high_water: int, stall_timeout: float
) -> None:
    """A fixed kernel send buffer, a lower mark for the transport's own buffer (what a client
    that stops reading leaves in the daemon's memory: the stream is paused above it) and the
    kernel's backstop deadline."""
    transport.set_write_buffer_limits(high=high_water)
    sock = _socket(transport)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            milliseconds = int((stall_timeout + _KERNEL_GRACE) * 1000)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)


def queued_in_kernel(transport: asyncio.BaseTransport) -> int:
    """The socket's send queue (SIOCOUTQ): on TCP the bytes sent and not yet acknowledged; on
    a Unix socket the memory of what the peer has not read yet (a little more than the bytes).
    0 when it cannot be read (the socket is closed)."""
    sock = _socket(transport)
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(_INT.size))
    except (OSError, AttributeError, ValueError):
        return 0
    queued: int = _INT.unpack(raw)[0]
    return queued


def drop(transport: asyncio.Transport) -> None:
    """Close now, discarding whatever the client has not taken (a reset, which it sees)."""
    sock = _socket(transport)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abort()


class StallWatch:
    """Calls ``on_stall`` once the client of ``transport`` has taken none of the bytes owed
    to it for ``timeout`` seconds (checked every ``interval``). ``wrote`` counts each write.

    A client is taking bytes when, since the last check, what it is owed went down, or what it
    has taken in all (written minus owed) reached a new high; one that is owed nothing is
    never stalled, however quiet the stream. Both signs, because on a Unix socket the kernel
    counts memory rather than bytes: "taken" alone could miss a slow reader there, while a
    queue that only grows is a client that reads nothing on either kind of socket."""

    def __init__(
        self,
        transport: asyncio.Transport,
        timeout: float,
        interval: float,
        on_stall: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.interval = interval
        self.on_stall = on_stall
        self.written = 0
        self._loop = asyncio.get_running_loop()
        self._most_taken = 0
        self._owed = 0
        self._progress_at = self._loop.time()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(interval, self._check)

    def wrote(self, n: int) -> None:
        self.written += n

    def owed(self) -> int:
        return self.transport.get_write_buffer_size() + queued_in_kernel(self.transport)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = self._loop.time()
        owed = self.owed()
        taken = self.written - owed
        if owed == 0 or owed < self._owed or taken > self._most_taken:
            self._progress_at = now
        self._owed = owed
        self._most_taken = max(self._most_taken, taken)
        if now - self._progress_at >= self.timeout:
            self.on_stall()
            return
        self._timer = self._loop.call_later(self.interval, self._check)
