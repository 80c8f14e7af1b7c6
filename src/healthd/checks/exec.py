"""exec: a command on the host; exit status 0 is healthy.

``command`` is an argv list, executed as it is; ``target`` (the reference's key) is a command
line run with ``sh -c``. ``user`` and ``group`` run it as that account (root only can). Its
environment is ``PATH`` (``DEFAULT_PATH`` unless ``env`` sets it), the names the daemon was
told to pass through from its own (``security.pass_environment``) and ``env``: nothing else of
the daemon's, so a check does the same from ``healthd check`` as in the daemon, and a check run
as another user learns nothing of root's environment.

The command runs in its own process group; at the deadline (or when it exits) the whole group
is killed, so a check leaves nothing running. Output is kept up to 4 KiB for the error text.

``expect_output`` (a substring) or ``expect_output_regex`` (an RE2 pattern, searched in linear
time: ``patterns.py``) must also be found in that output, stdout and stderr together as
captured, for a healthy verdict: some programs exit 0 whatever they were told (``redis-cli
ping`` printing ``NOAUTH Authentication required.``, for one).

A ``target`` that is nothing but plain words (no quotes, expansions, globs, redirections,
operators or comments), whose first word is a program on PATH and not something the shell
treats itself, means the same to ``sh -c`` as to a direct exec of its words: it is run
directly, sparing a shell on every check (measured with ``true``: 0.19 ms less CPU per check,
about 15%, most of a spawn's cost being the kernel's). The verdict is the same either way;
only a command killed by a signal reads "killed by SIGTERM" rather than the shell's
"exit status 143".
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from healthd import accounts
from healthd.checks.probe import Probe
from healthd.process import Child, ProcessOutcome
from healthd.spawn import program_path

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

OUTPUT_CAP = 4096
SHOWN_CHARS = 200  # of the output, in the error of a check whose output did not match
# systemd's default PATH for services: the system's programs, nothing writable by users
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_passed: dict[str, str] = {}
_STOP_SIGNALS = frozenset(-s for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
_STOP_SIGNAL_GRACE = 0.25  # a loop busy with thousands of checks sees signals late

_PLAIN_WORDS = re.compile(r"[A-Za-z0-9_@%+=:,./-]+(?:[ \t]+[A-Za-z0-9_@%+=:,./-]+)*")
# Words sh treats itself when they come first (POSIX special and regular built-ins, dash's
# others, reserved words): some exist as programs too, but not always with the same meaning
# (echo -e, for one), and some only make sense inside the shell (cd, exit). true and false
# are not here: the programs and the built-ins agree.
_SHELL_WORDS = frozenset(
    [
        "alias",
        "bg",
        "break",
        "cd",
        "command",
        "continue",
        "echo",
        "eval",
        "exec",
        "exit",
        "export",
        "fc",
        "fg",
        "getopts",
        "hash",
        "jobs",
        "kill",
        "local",
        "printf",
        "pwd",
        "read",
        "readonly",
        "return",
        "set",
        "shift",
        "test",
        "times",
        "trap",
        "type",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "wait",
        "if",
        "then",
        "else",
        "elif",
        "fi",
        "case",
        "esac",
        "for",
        "while",
        "until",
        "do",
        "done",
        "in",
        "function",
        "select",
        "time",
    ]
)


def pass_environment(names: Iterable[str], environ: Mapping[str, str] = os.environ) -> None:
    """Give every exec check these variables of ``environ`` (those set), from now on."""
    _passed.clear()
    _passed.update((name, environ[name]) for name in names if name in environ)


def environment(cfg: WorkloadConfig) -> dict[str, str]:
    """The whole environment of ``cfg``'s command."""
    env = {"PATH": DEFAULT_PATH, **_passed}
    env.update(cfg.env or ())
    return env


def direct_argv(command: str, search_path: str | None = None) -> list[str] | None:
    """The words to exec when ``sh -c command`` would only run them as they are, else None.
    Programs are looked up on ``search_path`` (None: the daemon's PATH)."""
    text = command.strip()
    if not _PLAIN_WORDS.fullmatch(text):
        return None
    words = text.split()
    first = words[0]
    if first in _SHELL_WORDS or "=" in first:  # FOO=1 cmd is an assignment for sh
        return None
    if program_path(first, search_path) is None:  # let sh say "not found" as people know
        return None
    return words


class ExecProbe(Probe):
    __slots__ = (
        "_argv",
        "_child",
        "_credentials",
        "_env",
        "_refused",
        "_runs",
    )

    def __init__(self, cfg: WorkloadConfig) -> None:
        super().__init__(cfg)
        self._env = environment(cfg)
        if cfg.command:
            self._argv = cfg.command
        else:
            direct = direct_argv(cfg.target, self._env["PATH"])
            self._argv = tuple(direct) if direct else ("sh", "-c", cfg.target)
        self._child: Child | None = None
        self._runs = 0
        self._credentials: accounts.Credentials | None = None
        self._refused = ""  # why the check cannot run as its user (the accounts changed)
        if cfg.user is not None:
            try:
                creds = accounts.resolve(cfg.user, cfg.group)
            except accounts.AccountError as exc:
                self._refused = f"cannot run as user {cfg.user!r}: {exc}"
            else:
                self._refused = accounts.unusable(creds) or ""
                self._credentials = accounts.for_child(creds)

    def describe(self) -> str:
        return ExecCheck.describe(self.cfg, self.address)

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        self._runs += 1
        if self._refused:
            self._finish(False, f"exec check failed: {self._refused}")
            return
        self._child = Child(
            self._argv,
            self._exited,
            output_cap=OUTPUT_CAP,
            env=self._env,
            credentials=self._credentials,
        )

    def _exited(self, outcome: ProcessOutcome) -> None:
        self._child = None
        if outcome.ok:
            if self.cfg.expect_output is None and self.cfg.expect_output_regex is None:
                self._finish(True)
            else:
                self._finish(*self._judge_output(outcome.output))
        elif outcome.returncode in _STOP_SIGNALS and self._loop is not None:
            # Stopping the service signals its whole cgroup or process group, and a command
            # caught that way may be reaped before the daemon itself sees the signal: hold the
            # verdict a moment, so a daemon that is stopping can tell (and drop it).
            self._loop.call_later(_STOP_SIGNAL_GRACE, self._report_failure, outcome, self._runs)
        else:
            self._report_failure(outcome, self._runs)

    def _judge_output(self, output: str) -> tuple[bool, str]:
        """(healthy, error) of a command that exited 0, by expect_output(_regex)."""
        expected = self.cfg.expect_output
        if expected is not None:
            if expected in output:
                return True, ""
            must = f"contain {expected!r}"
        else:
            regex = self.cfg.expect_output_regex
            assert regex is not None
            if regex.search(output):
                return True, ""
            must = f"match {regex.pattern!r}"
        if not output:
            return False, f"exec check failed: exit status 0, but no output (it must {must})"
        text = output[:SHOWN_CHARS]
        shown = repr(text) + ("..." if len(text) < len(output) else "")
        return False, f"exec check failed: exit status 0, but the output does not {must}: {shown}"

    def _report_failure(self, outcome: ProcessOutcome, run: int) -> None:
        if run == self._runs:  # not a later check's: this one may have timed out meanwhile
            self._finish(False, f"exec check failed: {outcome.describe()}")

    def _abort(self) -> None:
        # Reported as a timeout by the probe; the child kills its group and reaps itself.
        child, self._child = self._child, None
        if child is not None:
            child.detach()


class ExecCheck:
    name = "exec"
    needs_address = False

    def fill_defaults(self, cfg: WorkloadConfig) -> WorkloadConfig:
        return cfg

    def validate(self, cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
        if cfg.target and cfg.command:
            yield "command", "set either command (an argv list) or target (sh -c), not both"
        elif not cfg.target and not cfg.command:
            yield (
                "target",
                "required for exec checks: the command to run with sh -c "
                "(or command: an argv list, run without a shell)",
            )
        if cfg.group is not None and cfg.user is None:
            yield "group", "set user as well: group only says which group the user runs with"
        if cfg.expect_output is not None and cfg.expect_output_regex is not None:
            yield (
                "expect_output_regex",
                "set expect_output (a substring) or expect_output_regex, not both",
            )
        if cfg.user is not None:
            try:
                creds = accounts.resolve(cfg.user, cfg.group)
            except accounts.AccountError as exc:
                yield exc.field, str(exc)
            else:
                if reason := accounts.unusable(creds):
                    yield "user", reason

    @staticmethod
    def describe(cfg: WorkloadConfig, address: str) -> str:
        what = shlex.join(cfg.command) if cfg.command else f"sh -c {cfg.target!r}"
        if cfg.user is not None:
            what += f" (as {cfg.user}{':' + cfg.group if cfg.group is not None else ''})"
        return what

    def probe(self, cfg: WorkloadConfig) -> ExecProbe:
        return ExecProbe(cfg)
