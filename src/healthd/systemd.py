"""systemd's notify protocol (``Type=notify``), spoken without a library.

The protocol is one datagram per message to the Unix socket named by ``$NOTIFY_SOCKET`` (a path,
or an abstract name written with a leading ``@``), holding newline-separated ``KEY=VALUE``
assignments: ``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=...``, ``WATCHDOG=1``.
When ``$NOTIFY_SOCKET`` is not set (not started by systemd, or not ``Type=notify``) nothing at
all is done: ``from_environment`` returns None and the daemon sends nothing.

The watchdog (``WatchdogSec=`` gives ``$WATCHDOG_USEC``) is petted at half its interval by the
scheduler (``Scheduler.start_watchdog``), from the same timer wheel that starts the checks, not
from a thread: a blocked event loop, or a wheel that no longer fires, stops the pets, and
systemd restarts the daemon. ``$WATCHDOG_PID`` naming another process means the watchdog is
not ours.

The three variables are removed from the environment once read, as ``sd_notify`` does with
``unset_environment``: restart commands inherit the daemon's environment, and a service they
start must not take healthd's socket for its own.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import MutableMapping

from healthd.logs import Logger

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(text: str) -> str | None:
    """The address to send to: a path as it is, ``@name`` as the abstract ``\\0name``; None
    for what this does not speak (``vsock:``, a relative path)."""
    if text.startswith("/"):
        return text
    if text.startswith("@") and len(text) > 1:
        return "\0" + text[1:]
    return None


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between two pets (half of ``$WATCHDOG_USEC``), or None when there is no
    watchdog for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isascii() or not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isascii() or not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1e6 / 2


class SystemdNotifier:
    """Sends notifications to the service manager; never raises (a manager that went away must
    not stop monitoring): a failure is logged once per kind of error."""

    def __init__(self, address: str, log: Logger, *, watchdog: float | None = None) -> None:
        self.address = address
        self.log = log
        self.watchdog = watchdog  # seconds between pets; None: no watchdog
        self._sock: socket.socket | None = None
        self._failed: set[int] = set()

    @classmethod
    def from_environment(
        cls, log: Logger, environ: MutableMapping[str, str] | None = None
    ) -> SystemdNotifier | None:
        """The notifier ``$NOTIFY_SOCKET`` asks for, or None (then nothing is ever sent)."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        if not raw:
            return None
        watchdog = watchdog_interval(env, os.getpid())
        for name in _VARIABLES:
            env.pop(name, None)
        address = socket_address(raw)
        if address is None:
            log.warning(
                "systemd_notify_unsupported",
                notify_socket=raw,
                consequence="no READY=1 or watchdog pets are sent",
            )
            return None
        return cls(address, log, watchdog=watchdog)

    def send(self, *assignments: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; True when the manager's socket took it."""
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)  # never wait on the manager from the event loop
                self._sock = sock
            self._sock.sendto(message, self.address)
        except OSError as exc:
            code = exc.errno or 0
            if code not in self._failed:  # once per kind: the watchdog would repeat it forever
                self._failed.add(code)
                self.log.warning(
                    "systemd_notify_failed",
                    message=assignments[0] if assignments else "",
                    error=exc.strerror or str(exc),
                    hint="is NOTIFY_SOCKET still the manager's socket?"
                    if code in (errno.ENOENT, errno.ECONNREFUSED)
                    else "",
                )
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        """Before a reload; ``ready`` ends it. MONOTONIC_USEC lets systemd 253+ tell this
        reload from an earlier one (``Type=notify-reload``)."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: checks in flight may finish")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def pet(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
