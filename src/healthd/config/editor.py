"""Write, remove and find workload files: what the reference's CLI helpers do, made safe.

A workload name is validated before it becomes part of a path, a config is validated by the
same parser that loads it before it is written, and writes are atomic.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from healthd.config.loader import SUFFIXES, load_file, parse_text
from healthd.config.workload import WorkloadConfig, check_name
from healthd.errors import ConfigError, Problem
from healthd.store.atomic import write_atomic


class _Dumper(yaml.SafeDumper):
    """safe_dump's output, except for text holding a character YAML reads as a line break
    (NEL, LS, PS): PyYAML may put such text in single quotes, where reading it back folds the
    break into a space, so it is written double-quoted, where it is an escape."""


_BREAKS = ("\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = '"' if any(c in text for c in _BREAKS) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def render(cfg: WorkloadConfig) -> str:
    """The file the reference would write for ``cfg`` (defaults filled), plus our keys."""
    return yaml.dump(cfg.to_yaml_mapping(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def workload_files(config_dir: Path, name: str) -> list[Path]:
    """Existing files that define ``name`` (``.yaml`` first)."""
    check_name(name)
    return [p for p in (config_dir / f"{name}{s}" for s in SUFFIXES) if p.exists()]


def find(config_dir: Path, name: str) -> tuple[WorkloadConfig | None, list[Problem]]:
    """Load one workload by name."""
    files = workload_files(config_dir, name)
    if not files:
        where = config_dir / f"{name}.yaml"
        return None, [Problem(str(where), 0, "", f"no such workload {name!r} in {config_dir}")]
    return load_file(files[0])


def write(config_dir: Path, cfg: WorkloadConfig) -> tuple[Path, bool]:
    """Validate and atomically write ``cfg``; returns (path, created). Raises ConfigError."""
    check_name(cfg.workload)
    path = config_dir / f"{cfg.workload}.yaml"
    wanted = cfg.with_defaults()
    text = render(wanted)
    parsed, problems = parse_text(text, str(path), cfg.workload)
    if parsed is None:
        raise ConfigError(problems)
    # never write a file that would load as something else (compared as the file says it)
    if parsed.to_yaml_mapping() != wanted.to_yaml_mapping():
        raise ConfigError(
            [Problem(str(path), 0, "", "cannot be written so that it reads back the same")]
        )
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    created = not path.exists()
    write_atomic(path, text.encode("utf-8"))
    return path, created


def remove(config_dir: Path, name: str) -> list[Path]:
    """Remove every file that defines ``name``; returns what was removed."""
    removed = []
    for path in workload_files(config_dir, name):
        path.unlink()
        removed.append(path)
    return removed
