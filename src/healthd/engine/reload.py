"""What a reload changes: the new load of the config dir compared with what runs.

All or nothing per workload: a workload whose file does not load now keeps running on the
config it had (``kept``), and the problem is reported; only a file that is gone removes its
workload. A config dir that cannot be listed at all changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from healthd.config.loader import LoadResult
from healthd.config.workload import WorkloadConfig
from healthd.errors import Problem


@dataclass
class ReloadReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # its new file is broken: old config runs
    unchanged: int = 0
    problems: list[Problem] = field(default_factory=list)


def broken_names(loaded: LoadResult) -> set[str]:
    """Workloads whose file did not load (named after the file)."""
    return {Path(p.file).name.rsplit(".", 1)[0] for p in loaded.problems}


def plan_reload(
    current: Mapping[str, WorkloadConfig], loaded: LoadResult, *, dir_unreadable: bool
) -> ReloadReport:
    report = ReloadReport(problems=list(loaded.problems))
    if dir_unreadable:
        report.kept = sorted(current)
        return report
    for name, cfg in loaded.configs.items():
        old = current.get(name)
        if old == cfg:
            report.unchanged += 1
        else:
            (report.added if old is None else report.changed).append(name)
    broken = broken_names(loaded)
    for name in current:
        if name not in loaded.configs:
            (report.kept if name in broken else report.removed).append(name)
    return report
