"""What a workload's policy is told to do: the restart-policy settings, built from its config
by ``workloads.py``'s ``policy_settings`` and read by ``policy.py`` and the parts it hands work
to (``restarts.py``, ``flapping.py``). A value the file does not set is the default here, which
is the reference's behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

# on_exhausted
KEEP_CHECKING = "keep_checking"
STOP = "stop"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    retries: int = 3
    auto_restart: bool = False
    max_restarts: int = 0
    restart_delay: float = 10.0
    success_threshold: int = 1
    start_period: float = 0.0
    restart_backoff: bool = False
    max_restart_delay: float = 300.0
    backoff_reset: float = 600.0
    restart_window: float = 0.0  # 0: max_restarts counts since the last reset (the reference)
    on_exhausted: str = KEEP_CHECKING
    flap_threshold: int = 0  # 0: no flap detection
    flap_window: float = 600.0
    depends_on: tuple[str, ...] = ()
