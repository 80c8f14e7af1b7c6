"""Why a restart that is due must wait: while the workload is flapping, or while a workload it
depends on (``depends_on``) is not healthy (unhealthy, restarting, gave_up, starting or
paused). A dependency that is not monitored holds nothing.

``restarts.py`` asks at every failing check that would restart, so restarts resume by
themselves when the hold ends; it records the reason in ``restart_held`` and announces each
new one with a ``restart_held`` event. Which dependencies close a cycle, and so are not looked
up, is worked out by ``dependencies.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from healthd.model import State, WorkloadStatus

# The status of a workload this one depends on, or None when it is not monitored (not
# configured, disabled, its file broken, or closing a dependency cycle): that holds nothing.
DependencyLookup = Callable[[str], WorkloadStatus | None]


def held_reason(
    status: WorkloadStatus, depends_on: Sequence[str], dependency: DependencyLookup | None
) -> str:
    """Why ``status``'s due restart must wait, or "" when nothing holds it."""
    if status.flapping:
        return "flapping"
    if dependency is None:
        return ""
    for name in depends_on:
        dep = dependency(name)
        if dep is None:
            continue
        if dep.paused:
            return f"dependency {name} paused"
        if dep.state is not State.HEALTHY:
            return f"dependency {name} {dep.state.value}"
    return ""
