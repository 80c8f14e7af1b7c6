"""The bench's own exceptions."""

from __future__ import annotations


class BenchError(Exception):
    """The run cannot go on (a target or the daemon failed); the message says why."""


class Interrupted(BaseException):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) asked the bench to stop: clean up and exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
