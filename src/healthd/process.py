"""Run a command with a hard deadline, in its own process group, with capped output.

Shared by exec checks, restart commands and the machinectl lookup. The child leads a new
process group so the deadline can kill its whole tree (a grandchild that ignores SIGTERM and
holds stdout open included); output is read continuously so a chatty child never blocks on a
full pipe, but only the first ``output_cap`` bytes are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

# After the child exits, how long to wait for its pipe to reach EOF. Well-behaved commands close
# it with their exit; a detached grandchild that keeps it open must not stall us.
_EOF_GRACE = 0.2


@dataclass(frozen=True, slots=True)
class ProcessOutcome:
    returncode: int | None  # None when it never ran or was killed at the deadline
    output: str  # stdout+stderr, first output_cap bytes, "..." appended when cut
    duration: float
    timed_out: bool = False
    spawn_error: str = ""  # why it could not start at all

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """What happened, for an error message; empty when the command succeeded."""
        if self.spawn_error:
            return self.spawn_error
        if self.timed_out:
            why = "timed out, process group killed"
        elif self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            why = f"killed by {name}"
        elif self.returncode:
            why = f"exit status {self.returncode}"
        else:
            return ""
        out = self.output.strip()
        return f"{why}: {out}" if out else why


class _Collector(asyncio.SubprocessProtocol):
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.kept = 0
        self.dropped = 0
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        room = self.cap - self.kept
        if room > 0:
            self.chunks.append(data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def text(self) -> str:
        out = b"".join(self.chunks).decode("utf-8", "replace")
        return out + "..." if self.dropped else out


def _kill_group(pid: int) -> None:
    # already gone, or (PermissionError) a reused pgid that is no longer ours
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    timeout: float,
    *,
    output_cap: int = 4096,
    kill_leftovers: bool = True,
    env: dict[str, str] | None = None,
) -> ProcessOutcome:
    """Run ``argv`` (no shell) for at most ``timeout`` seconds.

    ``kill_leftovers``: after the command exits, kill whatever it left running in its process
    group (right for checks; wrong for restart commands whose job is to start something).
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        transport, proto = await loop.subprocess_exec(
            lambda: _Collector(output_cap),
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return ProcessOutcome(
            None, "", time.monotonic() - started, spawn_error=f"{argv[0]}: {reason}"
        )
    pid = transport.get_pid()
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout):
                # shield: the timeout cancels this wait, never the future the watcher completes
                await asyncio.shield(proto.exited)
        except TimeoutError:
            timed_out = True
            _kill_group(pid)
            await proto.exited  # SIGKILL cannot be ignored: this is immediate
        if kill_leftovers and not timed_out:
            _kill_group(pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_EOF_GRACE):
                await asyncio.shield(proto.eof)
    except BaseException:
        # Cancelled (deadline of the caller, daemon stopping): leave nothing behind, and see
        # the child reaped before the transport closes so the child watcher is not raced.
        _kill_group(pid)
        with contextlib.suppress(BaseException):
            async with asyncio.timeout(1):
                await asyncio.shield(proto.exited)
        raise
    finally:
        transport.close()
    code = None if timed_out else transport.get_returncode()
    return ProcessOutcome(code, proto.text(), time.monotonic() - started, timed_out=timed_out)
