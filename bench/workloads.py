"""The workload files the bench gives healthd: N measured workloads plus the sentinels.

One YAML file per workload, named after it (``wl00000.yaml``, ...). Every value is written
explicitly so the run does not depend on defaults; ``target`` is always a double-quoted string
(JSON's quoting is valid YAML), which keeps a shell command or a port number a string. The one
exception is ``keep_alive``, written only when asked for (``--keep-alive``): a healthd from
before that key would refuse every file that has it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from healthd.durations import format_seconds

KINDS = ("http", "https", "tcp", "exec")
HTTP_KINDS = ("http", "https")  # healthd's type http; https is its scheme: https
SENTINELS = ("sentinel0", "sentinel1", "sentinel2")


@dataclass(frozen=True)
class CheckTarget:
    """What a check of one kind points at: URL path, port string or shell command."""

    target: str
    port: int | None = None  # http, https and tcp only
    host: str | None = None  # http, https and tcp only
    ca_file: str | None = None  # https only: the CA the workloads trust (verification on)


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    kind: str
    check: CheckTarget
    interval: float
    timeout: float
    retries: int
    keep_alive: bool = False  # http and https only


def workload_name(index: int) -> str:
    return f"wl{index:05d}"


def http_target(port: int, host: str = "127.0.0.1", ca_file: str | None = None) -> CheckTarget:
    return CheckTarget("/healthz", port, host, ca_file)


def tcp_target(port: int, host: str = "127.0.0.1") -> CheckTarget:
    return CheckTarget(str(port), port, host)


def render(spec: WorkloadSpec) -> str:
    """The YAML text of one workload file."""
    if spec.kind not in KINDS:
        raise ValueError(f"unknown check kind {spec.kind!r}")
    lines = [
        f"workload: {spec.name}",
        f"type: {'http' if spec.kind in HTTP_KINDS else spec.kind}",
        f"target: {json.dumps(spec.check.target)}",
    ]
    if spec.kind != "exec":
        if spec.check.port is None or spec.check.host is None:
            raise ValueError(f"{spec.kind} workload {spec.name} needs a port and a host")
        lines += [f"port: {spec.check.port}", f"host: {spec.check.host}"]
    if spec.kind == "https":
        if spec.check.ca_file is None:
            raise ValueError(f"https workload {spec.name} needs a ca_file")
        lines += ["scheme: https", f"ca_file: {json.dumps(spec.check.ca_file)}"]
    if spec.keep_alive:
        if spec.kind not in HTTP_KINDS:
            raise ValueError(f"{spec.kind} workload {spec.name}: keep_alive is for http and https")
        lines.append("keep_alive: true")
    lines += [
        f"interval: {format_seconds(spec.interval)}",
        f"timeout: {format_seconds(spec.timeout)}",
        f"retries: {spec.retries}",
        "enabled: true",
    ]
    return "\n".join(lines) + "\n"


def bench_specs(
    kind: str,
    n: int,
    measured: CheckTarget,
    sentinel: CheckTarget,
    *,
    interval: float,
    timeout: float,
    retries: int,
    keep_alive: bool = False,
) -> list[WorkloadSpec]:
    """N workloads ``wl00000``... on ``measured``, then the sentinels on ``sentinel``; all of
    them keep their connection with ``keep_alive`` (the sentinels too, so that detection is
    timed for the checks measured)."""
    common = (interval, timeout, retries, keep_alive)
    specs = [WorkloadSpec(workload_name(i), kind, measured, *common) for i in range(n)]
    specs += [WorkloadSpec(s, kind, sentinel, *common) for s in SENTINELS]
    return specs


def write_workloads(config_dir: Path, specs: Iterable[WorkloadSpec]) -> list[Path]:
    """Write one ``NAME.yaml`` per spec into ``config_dir`` (created if missing)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        path = config_dir / f"{spec.name}.yaml"
        path.write_text(render(spec), encoding="utf-8")
        paths.append(path)
    return paths
