"""The command sink: a program run for each event, with the event's JSON on its stdin.

``command`` is an argv (no shell), run in its own process group with the sink's ``timeout`` as
its deadline (the group is killed then) and its output capped, through ``run_process`` like
exec checks and restart commands. The JSON is the webhook's body (``event_json`` with
``"reminder": true`` for a reminder) followed by a newline, so a line-reading script works.

Exit status 0 is a delivery; another status, a signal or the deadline is worth a retry (the
program may depend on something that comes back); a program that cannot be started because it
does not exist or may not be executed is a permanent failure.
"""

from __future__ import annotations

import errno
import json

from healthd.config.sinks import SinkSettings
from healthd.logs import Logger
from healthd.model import Event
from healthd.process import run_process
from healthd.sinks import DeliveryError
from healthd.store.journal import event_json

OUTPUT_CAP = 2048  # bytes of the program's output kept for the error message
DEADLINE_SHARE = 0.95
# A program that is not there or may not run will not start by trying again; other spawn
# errors (out of descriptors or processes) are the daemon's, and pass.
_CANNOT_RUN = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR}
)


def _json_line(event: Event, *, reminder: bool) -> bytes:
    # As the webhook's body (not imported from it: that would load an HTTP client for nothing).
    payload = event_json(event)
    if reminder:
        payload["reminder"] = True
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode() + b"\n"


class CommandSink:
    def __init__(self, settings: SinkSettings, log: Logger) -> None:
        self.settings = settings
        self.log = log.bind(sink=settings.name)

    async def deliver(self, event: Event, *, reminder: bool) -> None:
        stdin = _json_line(event, reminder=reminder)
        argv = self.settings.command
        # Its own deadline a little before the dispatcher's, so that a program that hangs is
        # reported with what it printed, not only as "no answer".
        deadline = self.settings.timeout * DEADLINE_SHARE
        outcome = await run_process(argv, deadline, output_cap=OUTPUT_CAP, stdin=stdin)
        if outcome.ok:
            return
        if outcome.spawn_error:
            raise DeliveryError(
                f"cannot run {argv[0]}: {outcome.spawn_error}",
                permanent=outcome.spawn_errno in _CANNOT_RUN,
            )
        raise DeliveryError(f"{argv[0]}: {outcome.describe()}")

    async def maintain(self) -> None:
        return

    async def close(self) -> None:
        return
