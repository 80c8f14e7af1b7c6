"""Read workload files: one YAML mapping per ``<workload>.yaml``; every problem has a line.

Nothing is skipped without a word: a file that cannot be used yields ``Problem``s in the form
``FILE:LINE: field: reason``, and the other files load regardless.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from healthd import pathwalk
from healthd.config import trust
from healthd.config.nodes import reader_problem
from healthd.config.workload import (
    FIELDS,
    FieldProblem,
    WorkloadConfig,
    build,
    convert,
    did_you_mean,
)
from healthd.errors import Problem
from healthd.pathwalk import Authors

MAX_FILE_BYTES = 1 << 20  # a workload file is a dozen lines; anything this big is a mistake
SUFFIXES = (".yaml", ".yml")
_NULL = "tag:yaml.org,2002:null"
_KEY_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")

try:  # libyaml's parser is much faster where PyYAML was built with it
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


@dataclass
class LoadResult:
    """Every valid workload of a directory, and every problem found on the way."""

    configs: dict[str, WorkloadConfig] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # workload -> file it came from
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def parse_text(
    text: str, file: str, stem: str | None, authors: Authors = frozenset()
) -> tuple[WorkloadConfig | None, list[Problem]]:
    """Parse one workload document. ``stem`` is the name the file says the workload must have;
    ``authors``: who besides root could have changed it (``pathwalk.py``)."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        return None, [Problem(file, line, "", f"YAML syntax error: {reason}")]
    except yaml.YAMLError as exc:
        return None, [reader_problem(exc, text, file)]
    if root is None:
        return None, [Problem(file, 1, "", "empty file: expected a mapping with workload and type")]
    if not isinstance(root, yaml.MappingNode):
        return None, [
            Problem(file, root.start_mark.line + 1, "", "expected a mapping of keys to values")
        ]
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            problems.append(Problem(file, line, "", "keys must be plain names"))
            continue
        key = str(key_node.value)
        if key in lines:
            problems.append(
                Problem(file, line, key, f"duplicate key (first set on line {lines[key]})")
            )
            continue
        lines[key] = line
        if key not in FIELDS:
            problems.append(_unknown_key(file, line, key))
            continue
        if isinstance(value_node, yaml.ScalarNode) and value_node.tag == _NULL:
            continue  # an empty value means "not set", as in the reference
        try:
            values[key] = convert(key, value_node)
        except FieldProblem as exc:
            problems.append(Problem(file, value_node.start_mark.line + 1, key, str(exc)))
    if problems:
        return None, problems
    return build(values, lines, file, stem, authors)


def _unknown_key(file: str, line: int, key: str) -> Problem:
    """A key that could be a misspelt one is named; anything else is not quoted at all: a
    line of some other file read by mistake (``root:$y$...:19700:0:99999:7:::``) or a secret
    would go to the log, events and the API."""
    if _KEY_LIKE.fullmatch(key):
        return Problem(file, line, key, f"unknown key{did_you_mean(key)}")
    return Problem(
        file, line, "", f"unknown key: not a key name ({len(key)} characters, not shown)"
    )


def load_file(
    path: Path, *, strict_modes: bool = True, directory: pathwalk.Directory | None = None
) -> tuple[WorkloadConfig | None, list[Problem]]:
    """Read and parse one file; its name (without suffix) is the workload it must define.
    ``strict_modes``: when running as root, refuse commands from a file others could change
    (``trust.py``). ``directory``: ``path``'s directory, walked already."""
    file = str(path)
    try:
        file.encode("utf-8")
    except UnicodeEncodeError:
        # Not text anywhere it would be shown (log, event, API): named with the bad bytes
        # escaped. No workload name could match it anyway.
        shown = os.fsencode(file).decode("utf-8", "backslashreplace")
        return None, [Problem(shown, 0, "", "file name is not UTF-8: rename the file")]
    try:
        walk = pathwalk.open_file(file) if directory is None else directory.open_file(path.name)
    except pathwalk.WalkRefused as exc:
        if exc.not_regular:
            return None, [Problem(file, 0, "", "not a regular file")]
        if exc.denied:
            return None, [Problem(file, 0, "", f"not read: {exc}")]
        return None, [Problem(file, 0, "", f"cannot read: {exc}")]
    try:
        with os.fdopen(walk.fd, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return None, [Problem(file, 0, "", f"cannot read: {exc.strerror or exc}")]
    if len(data) > MAX_FILE_BYTES:
        return None, [Problem(file, 0, "", f"file larger than {MAX_FILE_BYTES} bytes")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(file, 0, "", f"not UTF-8 text (byte {exc.start})")]
    stem = path.name.rsplit(".", 1)[0]
    cfg, problems = parse_text(text, file, stem, walk.authors)
    if cfg is not None and strict_modes and trust.applies():
        refused = trust.refusal(cfg, file, walk.faults)
        if refused is not None:
            return None, [refused]
    return cfg, problems


def config_files(config_dir: Path) -> list[Path]:
    """Workload files in ``config_dir``, sorted; raises OSError if it cannot be listed."""
    with os.scandir(config_dir) as entries:
        names = sorted(
            e.name for e in entries if e.name.endswith(SUFFIXES) and not e.name.startswith(".")
        )
    return [config_dir / n for n in names]


def load_dir(config_dir: Path, *, strict_modes: bool = True) -> LoadResult:
    """Load every workload file in ``config_dir``.

    ``<name>.yaml`` is the reference's layout; ``<name>.yml`` is accepted too, and when both
    exist the ``.yaml`` file wins and the other is reported as a duplicate.
    """
    result = LoadResult()
    try:
        files = config_files(config_dir)
    except FileNotFoundError:
        result.problems.append(Problem(str(config_dir), 0, "", "config directory does not exist"))
        return result
    except OSError as exc:
        result.problems.append(
            Problem(str(config_dir), 0, "", f"cannot list: {exc.strerror or exc}")
        )
        return result
    # .yaml before .yml for the same name, so the reference's file is the one kept
    files.sort(key=lambda p: (p.name.rsplit(".", 1)[0], p.suffix != ".yaml"))
    pathwalk.forget_accounts()  # group membership as it is now
    try:
        directory: pathwalk.Directory | None = pathwalk.Directory(str(config_dir))
    except OSError:
        directory = None  # each file's own walk says why
    try:
        _load_files(result, files, strict_modes, directory)
    finally:
        if directory is not None:
            directory.close()
    return result


def _load_files(
    result: LoadResult,
    files: list[Path],
    strict_modes: bool,
    directory: pathwalk.Directory | None,
) -> None:
    for path in files:
        cfg, problems = load_file(path, strict_modes=strict_modes, directory=directory)
        if cfg is None:
            result.problems.extend(problems)
            continue
        if cfg.workload in result.configs:
            first = result.files[cfg.workload]
            result.problems.append(
                Problem(
                    str(path),
                    1,
                    "workload",
                    f"duplicate workload {cfg.workload!r}, also defined in {first}",
                )
            )
            continue
        result.configs[cfg.workload] = cfg
        result.files[cfg.workload] = path
