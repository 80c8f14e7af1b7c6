"""The expiry of the certificates https checks meet: remembered for the metric
(``healthd_tls_cert_expiry_seconds``), and announced once by a ``cert_expiring`` event when
less than ``cert_expiry_warn`` is left.

Once per certificate: a check that sees the same certificate again says nothing more. A
different certificate (renewed, but still too close to its end) is announced again, and so is
the same one after its time left went back above the threshold (``cert_expiry_warn`` was
lowered, or the clock was wrong). The state lives in the workload's status, which survives a
reload, in memory only (``model.WorkloadStatus``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from healthd import durations
from healthd.config.workload import WorkloadConfig
from healthd.events import EventBus
from healthd.model import Clock, Event, EventType, WorkloadStatus


def observe(
    cfg: WorkloadConfig, status: WorkloadStatus, not_after: float, bus: EventBus, clock: Clock
) -> None:
    """A check saw a server certificate valid until ``not_after`` (Unix seconds)."""
    status.cert_not_after = not_after
    warn = cfg.cert_expiry_warn
    if warn is None:
        return
    now = clock.now()
    left = not_after - now.timestamp()
    if left >= warn:
        status.cert_warned = None
        return
    if status.cert_warned == not_after:
        return
    status.cert_warned = not_after
    expires = datetime.fromtimestamp(not_after, UTC)
    when = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    threshold = durations.format_seconds(warn)
    whole = int(abs(left))
    if left > 0:
        message = f"TLS certificate of {status.address} expires in {_span(whole)} ({when})"
    else:
        message = f"TLS certificate of {status.address} expired {_span(whole)} ago ({when})"
    bus.publish(
        Event(
            EventType.CERT_EXPIRING,
            cfg.workload,
            now,
            f"{message}, within cert_expiry_warn {threshold}",
            details={
                "not_after": when,
                "seconds_left": int(left),
                "cert_expiry_warn": threshold,
                "address": status.address,
                "port": cfg.port,
            },
        )
    )


def _span(seconds: int) -> str:
    """``13d4h`` / ``5h12m`` / ``42s``: the time left, for people (Go durations stop at h)."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
