"""Settings of the daemon itself (not of any workload), with their defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from healthd.actions import DEFAULT_UNIT_TEMPLATE

DEFAULT_CONFIG_DIR = Path("/etc/volt/health")
DEFAULT_STATUS_DIR = Path("/var/lib/volt/health")


def default_config_dir() -> Path:
    return Path(os.environ.get("HEALTHD_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


def default_status_dir() -> Path:
    return Path(os.environ.get("HEALTHD_STATUS_DIR") or DEFAULT_STATUS_DIR)


@dataclass(frozen=True)
class DaemonSettings:
    config_dir: Path = DEFAULT_CONFIG_DIR
    status_dir: Path = DEFAULT_STATUS_DIR
    unit_template: str = DEFAULT_UNIT_TEMPLATE  # systemd unit restarted without restart_command
    restart_timeout: float = 60.0  # deadline of one restart command
    resolve_timeout: float = 2.0  # deadline of one machinectl lookup
    address_ttl: float = 60.0  # re-resolve at least this often (and after failures, restarts)
    first_check_within: float = 1.0  # first checks are spread over this window after start
    status_flush_interval: float = 5.0  # statuses.json rewritten this often while checks run
    stop_grace: float = 10.0  # in-flight checks and restarts may finish within this at stop
    exec_in_flight: int = 64  # exec checks running at once; more wait their turn (lag)
    lag_warning: float = 1.0  # warn when the p99 of how late checks start exceeds this
    strict_modes: bool = True  # as root, refuse commands from files others could change
    watch_config: bool = True  # reload by itself when the config dir changes
    watch_quiet: float = 0.25  # a burst of changes ends after this long without one
    # statuses.json, daemon.json, events.db: as readable as the API (store/state_files.py)
    state_file_mode: int = 0o644
