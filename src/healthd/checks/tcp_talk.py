"""tcp's ``send`` and ``expect``: the conversation a tcp check holds once connected.

With ``send`` and/or ``expect`` the check also talks: once connected it writes ``send`` (if
set), then reads until ``expect`` appears in what the peer sent (healthy), or the peer closes,
or ``READ_CAP`` bytes came without it, or the deadline passes (unhealthy, with what came). A
server whose kernel still completes handshakes from the listen backlog while the process is
wedged passes a plain connect; it fails this. Text is sent and matched as UTF-8.

``tcp.py``'s probe connects and owns the socket. A probe that talks makes one
``Conversation`` for its life and hands it each connected socket (``begin``); the
conversation reports the end through ``ended`` and is told by ``stop`` when the probe lets the
socket go (the end, the deadline, a cancel). A plain connect check has none.
"""

from __future__ import annotations

import asyncio
import re
import socket
from _socket import socket as bare_socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from healthd.checks.probe import connect_error

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

READ_CAP = 4096  # bytes read looking for ``expect``: a banner or a reply line, not a stream
SHOWN_CHARS = 100  # of what the peer sent, in an error
# What a YAML plain or single-quoted value keeps as two characters, where a double-quoted one
# would have made a control character: almost certainly meant as the latter.
_LITERAL_ESCAPE = re.compile(r"\\[rnt0]")

# How a conversation ended: None when the answer matched, else why not (the probe puts
# "TCP check failed: HOST:PORT: " before it). The socket is still open when it is called.
Ended = Callable[[str | None], None]


class Conversation:
    __slots__ = (
        "_ended",
        "_expect",
        "_expect_text",
        "_loop",
        "_received",
        "_send",
        "_sock",
        "_unsent",
        "reading",
        "writing",
    )

    def __init__(self, send: str | None, expect: str | None, ended: Ended) -> None:
        self._send = send.encode() if send else b""
        self._expect = expect.encode() if expect else b""
        self._expect_text = expect
        self._ended = ended
        self._sock: bare_socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._received = bytearray()
        self._unsent = memoryview(b"")
        self.writing = False  # watching for room to send
        self.reading = False  # watching for the answer

    def begin(self, sock: bare_socket, loop: asyncio.AbstractEventLoop) -> None:
        """``sock`` is connected: send, then read until ``expect``."""
        self._sock = sock
        self._loop = loop
        self._received.clear()
        if self._send:
            self._unsent = memoryview(self._send)
            self._write()
        else:
            self._await_answer()

    def stop(self) -> None:
        """The probe is about to close the socket (its writer is already removed)."""
        sock, self._sock = self._sock, None
        if sock is not None and self.reading and self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        self.reading = self.writing = False

    def progress(self) -> str:
        """How far it got, for the error of a deadline that interrupts it."""
        if self.writing:
            return f"sending: {len(self._unsent)} of {len(self._send)} bytes not taken by the peer"
        return self._expected_got()

    def _write(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._unsent, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._ended(f"sending failed: {connect_error(exc)}")
            return
        self._unsent = self._unsent[sent:]
        loop = self._loop
        assert loop is not None
        if self._unsent:  # the peer is not reading (or a big send): wait for room
            if not self.writing:
                self.writing = True
                loop.add_writer(sock.fileno(), self._write)
            return
        if self.writing:
            self.writing = False
            loop.remove_writer(sock.fileno())
        if self._expect:
            self._await_answer()
        else:  # refused by validation; written so that it could not hang either way
            self._ended(None)

    def _await_answer(self) -> None:
        sock = self._sock
        assert sock is not None
        assert self._loop is not None
        self.reading = True
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
            self._ended(None)
        elif len(received) >= READ_CAP:
            self._mismatch(f"no match in the first {READ_CAP} bytes")

    def _mismatch(self, why: str) -> None:
        self._ended(f"{self._expected_got()} ({why})")

    def _expected_got(self) -> str:
        got = shown(bytes(self._received)) if self._received else "nothing"
        return f"expected {self._expect_text!r}, got {got}"


def shown(data: bytes) -> str:
    """What a peer sent, for an error: quoted, control characters escaped, cut short."""
    text = data.decode("utf-8", "replace")
    if len(text) > SHOWN_CHARS:
        return f"{text[:SHOWN_CHARS]!r}..."
    return repr(text)


def validate(cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
    """``TcpCheck.validate``'s part: (field, reason) for each problem with send and expect."""
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
