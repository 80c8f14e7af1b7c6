"""Run a command with a hard deadline, in its own process group, with capped output.

Shared by exec checks, restart commands and the machinectl lookup. The child is started with
``posix_spawn`` (a vfork on Linux: no copy of the daemon's memory, no thread; a child that
must run as another user is forked instead; the spawning is ``spawn.py``'s), leads a new
session so the deadline can kill its whole tree (a grandchild that ignores SIGTERM and holds
stdout open included), and is reaped through a pidfd watched by the event loop, so thousands of
children a second cost no child-watcher threads. Output is read continuously so a chatty child
never blocks on a full pipe, but only the first ``output_cap`` bytes are kept. Given ``stdin``
bytes, the child reads them from a pipe that the loop fills as the child drains it (never
blocking the loop, however large) and then closes; a child that exits without reading it all
is not an error.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from healthd import orphans
from healthd.accounts import Credentials
from healthd.containment import cgroups
from healthd.spawn import kill_group, program_path, reaped, spawn, spawn_as

# After the child exits, how long to wait for its pipe to reach EOF. Well-behaved commands close
# it with their exit; a detached grandchild that keeps it open must not stall us.
EOF_GRACE = 0.2
_READ_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class ProcessOutcome:
    returncode: int | None  # None when it never ran or was killed at the deadline
    output: str  # stdout+stderr, first output_cap bytes, "..." appended when cut
    duration: float
    timed_out: bool = False
    spawn_error: str = ""  # why it could not start at all
    spawn_errno: int = 0  # with spawn_error: ENOENT, EACCES, ENOEXEC, ... or 0 (no errno)

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


class Child:
    """One spawned command, driven by event-loop callbacks; ``done`` gets its outcome once.

    The deadline is the caller's business (``kill``), so a check can report at its own
    deadline; the child still reaps itself and closes its descriptors afterwards.
    """

    __slots__ = (
        "_argv0",
        "_cap",
        "_cgroup",
        "_chunks",
        "_done",
        "_dropped",
        "_eof",
        "_grace",
        "_kept",
        "_kill_leftovers",
        "_loop",
        "_pidfd",
        "_pipe",
        "_returncode",
        "_started",
        "_stdin",
        "_stdin_left",
        "_timed_out",
        "_writing",
        "pid",
    )

    def __init__(
        self,
        argv: Sequence[str],
        done: Callable[[ProcessOutcome], None],
        *,
        output_cap: int = 4096,
        kill_leftovers: bool = True,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """Spawn ``argv`` (with ``stdin`` to read, if given; as ``credentials`` if given:
        only root can); on failure ``done`` is called before this returns. ``argv[0]`` is
        looked up on the PATH of ``env`` (the daemon's own when None)."""
        self._loop = asyncio.get_running_loop()
        self._done: Callable[[ProcessOutcome], None] | None = done
        self._cap = output_cap
        self._kill_leftovers = kill_leftovers
        self._chunks: list[bytes] = []
        self._kept = 0
        self._dropped = 0
        self._eof = False
        self._returncode: int | None = None
        self._timed_out = False
        self._grace: asyncio.TimerHandle | None = None
        self._pipe = -1
        self._pidfd = -1
        self._stdin = -1
        self._stdin_left = memoryview(stdin or b"")
        self._writing = False
        self.pid = 0
        self._cgroup: str | None = None
        self._argv0 = argv[0]
        self._started = time.monotonic()
        path = program_path(argv[0], None if env is None else env.get("PATH", os.defpath))
        if path is None:
            self._spawn_failed(f"{argv[0]}: No such file or directory", errno.ENOENT)
            return
        if kill_leftovers and cgroups.active:
            # A command that must leave nothing behind is born in a cgroup of its own where
            # the host allows it: a setsid() grandchild escapes its process group, not that.
            try:
                self._cgroup = cgroups.take()
            except OSError as exc:
                self._spawn_failed(f"{argv[0]}: cannot create its cgroup: {exc.strerror or exc}")
                return
        try:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:  # out of descriptors: a failed run, not a crash
            self._release_cgroup()
            self._spawn_failed(f"{argv[0]}: cannot create output pipe: {exc.strerror or exc}")
            return
        child_stdin = -1
        if stdin is not None:
            try:
                child_stdin, self._stdin = os.pipe2(os.O_CLOEXEC)
            except OSError as exc:
                os.close(read_end)
                os.close(write_end)
                self._release_cgroup()
                self._spawn_failed(f"{argv[0]}: cannot create input pipe: {exc.strerror or exc}")
                return
            os.set_blocking(self._stdin, False)  # our end only, as for the output pipe
        os.set_blocking(read_end, False)  # our end only: the child's stdout stays blocking
        self._pipe = read_end
        self._loop.add_reader(read_end, self._on_output)
        env = os.environ if env is None else env
        try:
            if self._cgroup is None:
                spawned = _spawn(path, argv, env, write_end, child_stdin, credentials=credentials)
            else:
                spawned = _spawn_in(
                    self._cgroup,
                    path,
                    argv,
                    env,
                    write_end,
                    stdin=child_stdin,
                    credentials=credentials,
                )
            self.pid, self._pidfd = spawned
        except (OSError, ValueError) as exc:
            # ValueError: a NUL byte in an argument or the environment, which exec cannot pass
            self._close_pipe()
            self._close_stdin()
            self._release_cgroup()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            code = exc.errno if isinstance(exc, OSError) else 0
            self._spawn_failed(f"{argv[0]}: {reason}", code or 0)
            return
        self._loop.add_reader(self._pidfd, self._on_exit)
        if self._stdin >= 0:
            self._feed()

    def kill(self) -> None:
        """Deadline: kill the whole group; ``done`` follows with ``timed_out``."""
        if self._returncode is None:
            self._timed_out = True
            if self.pid:
                self._kill_all()

    def detach(self) -> None:
        """The caller no longer wants the outcome (cancelled): kill, reap, report nothing."""
        self._done = None
        if self.pid and self._returncode is None:
            self._kill_all()

    def _kill_all(self) -> None:
        """The whole process group, and the whole cgroup (setsid() descendants too) if any."""
        kill_group(self.pid)
        if self._cgroup is not None:
            cgroups.kill(self._cgroup)

    def _release_cgroup(self) -> None:
        """Kill what is left in the cgroup, if anything, and reuse it once empty."""
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None:
            cgroups.release(cgroup, self._loop)

    # -- loop callbacks -------------------------------------------------------------------

    def _on_output(self) -> None:
        while True:
            try:
                data = os.read(self._pipe, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_pipe()
                self._eof = True
                if self._returncode is not None:
                    self._report()
                return
            room = self._cap - self._kept
            if room > 0:
                self._chunks.append(data[:room])
                self._kept += min(room, len(data))
            self._dropped += max(0, len(data) - max(room, 0))

    def _feed(self) -> None:
        """Write what the pipe takes now; the loop calls again when it has room."""
        while self._stdin_left:
            try:
                written = os.write(self._stdin, self._stdin_left)
            except BlockingIOError:
                if not self._writing:
                    self._loop.add_writer(self._stdin, self._feed)
                    self._writing = True
                return
            except OSError:  # EPIPE: the child is gone or closed its stdin; it had its chance
                break
            self._stdin_left = self._stdin_left[written:]
        self._close_stdin()  # the child sees the end of its input

    def _on_exit(self) -> None:
        # pidfd_open cannot fail for our own unreaped child, short of running out of fds,
        # which spawn reports as a spawn error after the fact (the child is then killed).
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        try:
            _, status = os.waitpid(self.pid, 0)  # it has exited: this does not block
        except ChildProcessError:  # reaped behind our back; the outcome is unknown
            status = -1
        reaped(self.pid)
        self._exited(status)

    def _exited(self, status: int) -> None:
        if status == -1:
            code = -signal.SIGKILL if self._timed_out else 255
        else:
            code = os.waitstatus_to_exitcode(status)
        self._returncode = code
        if (self._kill_leftovers or self._timed_out) and kill_group(self.pid):
            orphans.reap_group(self._loop, self.pid)
        self._release_cgroup()  # the cgroup too: releasing it kills what it still holds
        if self._eof:
            self._report()
        else:
            self._grace = self._loop.call_later(EOF_GRACE, self._report)

    def _report(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self._close_pipe()
        self._close_stdin()  # whatever is left unread, nobody will read now
        done, self._done = self._done, None
        if done is None:
            return
        out = b"".join(self._chunks).decode("utf-8", "replace")
        if self._dropped:
            out += "..."
        code = None if self._timed_out else self._returncode
        done(ProcessOutcome(code, out, time.monotonic() - self._started, self._timed_out))

    def _close_pipe(self) -> None:
        if self._pipe >= 0:
            self._loop.remove_reader(self._pipe)
            os.close(self._pipe)
            self._pipe = -1

    def _close_stdin(self) -> None:
        if self._stdin >= 0:
            if self._writing:
                self._loop.remove_writer(self._stdin)
                self._writing = False
            os.close(self._stdin)
            self._stdin = -1
        self._stdin_left = memoryview(b"")

    def _spawn_failed(self, reason: str, error: int = 0) -> None:
        done, self._done = self._done, None
        if done is not None:
            duration = time.monotonic() - self._started
            done(ProcessOutcome(None, "", duration, spawn_error=reason, spawn_errno=error))


def _spawn(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    output: int,
    stdin: int,
    *,
    credentials: Credentials | None,
) -> tuple[int, int]:
    # In the caller's thread: spawning from a thread pool was measured to gain little
    # throughput, cost more CPU per check, and let a spawn queued at shutdown start a command
    # nobody watches.
    if credentials is None:
        return spawn(path, list(argv), env, output, stdin)
    return spawn_as(path, list(argv), env, output, stdin, creds=credentials)


def _spawn_in(
    cgroup: str,
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    output: int,
    *,
    stdin: int,
    credentials: Credentials | None,
) -> tuple[int, int]:
    """``_spawn`` with the child born in ``cgroup``; ``output`` and ``stdin`` closed always."""
    try:
        cgroups.enter(cgroup)
    except OSError:
        os.close(output)
        if stdin >= 0:
            os.close(stdin)
        raise
    try:
        return _spawn(path, argv, env, output, stdin, credentials=credentials)
    finally:
        cgroups.leave(cgroup)


async def run_process(
    argv: Sequence[str],
    timeout: float,
    *,
    output_cap: int = 4096,
    kill_leftovers: bool = True,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    credentials: Credentials | None = None,
) -> ProcessOutcome:
    """Run ``argv`` (no shell) for at most ``timeout`` seconds, with ``stdin`` as its input
    (None: /dev/null).

    ``kill_leftovers``: after the command exits, kill whatever it left running in its process
    group (right for checks; wrong for restart commands whose job is to start something).
    """
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[ProcessOutcome] = loop.create_future()

    def deliver(outcome: ProcessOutcome) -> None:
        if not finished.done():
            finished.set_result(outcome)

    child = Child(
        argv,
        deliver,
        output_cap=output_cap,
        kill_leftovers=kill_leftovers,
        env=env,
        stdin=stdin,
        credentials=credentials,
    )
    deadline = loop.call_later(timeout, child.kill)
    try:
        return await finished
    except BaseException:
        child.detach()  # cancelled (caller's deadline, daemon stopping): leave nothing behind
        raise
    finally:
        deadline.cancel()
