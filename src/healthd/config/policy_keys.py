"""The restart-policy keys of a workload file (issue 7): their checks and the rules between
them and the reference's keys. ``workload.py`` lists them in FIELDS; the state machine that
reads them is ``engine/policy.py``.

Kept apart so that ``workload.py`` gains a few lines per key rather than a page of policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import yaml

from healthd import durations
from healthd.errors import WorkloadNameError, quoted

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

ON_EXHAUSTED = ("keep_checking", "stop")
# restart_window keeps the time of each restart it counts, in statuses.json too: bounded.
MAX_WINDOW_RESTARTS = 1000
MAX_FLAP_THRESHOLD = 1000


def _problem(reason: str) -> Exception:
    # FieldProblem lives in workload.py, which imports this module to build FIELDS.
    from healthd.config.workload import FieldProblem  # noqa: PLC0415

    return FieldProblem(reason)


def as_names(node: yaml.Node) -> tuple[str, ...]:
    """``depends_on``: a list of workload names, each once."""
    from healthd.config.workload import check_name  # noqa: PLC0415

    if not isinstance(node, yaml.SequenceNode):
        raise _problem("expected a list of workload names, e.g. [db, cache]")
    names: list[str] = []
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode) or item.tag == "tag:yaml.org,2002:null":
            raise _problem("every entry must be a workload name")
        name = str(item.value)
        try:
            check_name(name)
        except WorkloadNameError as exc:
            raise _problem(str(exc)) from None
        if name in names:
            raise _problem(f"{name} is listed twice")
        names.append(name)
    return tuple(names)


def at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def not_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative (0s: none)"


def flap_threshold(value: int) -> str | None:
    if not 0 <= value <= MAX_FLAP_THRESHOLD:
        return f"must be from 0 (off) to {MAX_FLAP_THRESHOLD}"
    return None


def on_exhausted(value: str) -> str | None:
    if value in ON_EXHAUSTED:
        return None
    return f"must be one of: {', '.join(ON_EXHAUSTED)} (not {quoted(value)})"


def problems(cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
    """(field, reason) for each policy key that contradicts another key of the file."""
    if cfg.depends_on and cfg.workload in cfg.depends_on:
        yield "depends_on", f"{cfg.workload} cannot depend on itself"
    if cfg.restart_window is not None:
        if not cfg.max_restarts:
            yield (
                "restart_window",
                "needs max_restarts: the window counts restarts against it, and 0 is unlimited",
            )
        elif cfg.max_restarts > MAX_WINDOW_RESTARTS:
            yield (
                "restart_window",
                f"max_restarts must be at most {MAX_WINDOW_RESTARTS} with a window "
                "(the time of each restart in it is kept)",
            )
    if cfg.on_exhausted is not None and not cfg.max_restarts:
        yield "on_exhausted", "needs max_restarts: with 0 (unlimited) the budget is never spent"
    for key in ("max_restart_delay", "backoff_reset"):
        if getattr(cfg, key) is not None and cfg.restart_backoff is None:
            yield key, "only with restart_backoff (true, or false to turn it off for now)"
    if cfg.max_restart_delay is not None and cfg.max_restart_delay < cfg.restart_delay:
        shown = durations.format_seconds(cfg.restart_delay)
        yield "max_restart_delay", f"must be at least restart_delay ({shown})"
    if cfg.flap_window is not None and cfg.flap_threshold is None:
        yield "flap_window", "only with flap_threshold (0 to turn detection off for now)"
