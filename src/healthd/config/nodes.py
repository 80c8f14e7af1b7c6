"""Reading YAML nodes of the daemon config file into values, with a reason when they do not fit.

Node by node (``yaml.compose``), not ``safe_load``: every problem keeps its line, and aliases
are never expanded, so an alias bomb costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from healthd import durations
from healthd.errors import DurationError, Problem, quoted

NULL = "tag:yaml.org,2002:null"
Converter = Callable[[yaml.Node], Any]


class Invalid(ValueError):
    """A value that does not fit its key; the caller adds file, line and key."""


def reader_problem(exc: yaml.YAMLError, text: str, file: str) -> Problem:
    """A YAML error without a mark (a character YAML refuses, such as NUL): the line from its
    position, so the problem still says where to look."""
    position = getattr(exc, "position", None)
    character = getattr(exc, "character", None)
    if isinstance(position, int) and isinstance(character, int):
        line = text.count("\n", 0, position) + 1
        return Problem(file, line, "", f"character U+{character:04X} is not allowed in YAML")
    return Problem(file, 1, "", f"YAML error: {exc}")


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL


def string(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise Invalid("expected a single value")
    return "" if node.tag == NULL else str(node.value)


def path(node: yaml.Node) -> Path | None:
    text = string(node)
    if not text:
        return None
    if not text.startswith("/"):
        raise Invalid(f"{quoted(text)}: use an absolute path")
    return Path(text)


def duration(node: yaml.Node) -> float:
    text = string(node)
    try:
        value = durations.parse_seconds(text)
    except DurationError as exc:
        raise Invalid(str(exc)) from None
    if value < 0:
        raise Invalid(f"{quoted(text)}: must not be negative")
    return value


def count(node: yaml.Node) -> int:
    text = string(node)
    if not text.isascii() or not text.isdigit():
        raise Invalid(f"expected a whole number, got {quoted(text)}")
    return int(text)


def strings(node: yaml.Node) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise Invalid("expected a list, e.g. [a, b]")
    out = []
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode) or item.tag == NULL:
            raise Invalid("every item must be a single value")
        out.append(str(item.value))
    return tuple(out)


def string_map(node: yaml.Node) -> dict[str, str]:
    if not isinstance(node, yaml.MappingNode):
        raise Invalid("expected a mapping, e.g. {X-Team: ops}")
    out = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or not isinstance(value, yaml.ScalarNode):
            raise Invalid("keys and values must be single values")
        out[str(key.value)] = str(value.value)
    return out


def items(
    node: yaml.Node, file: str, where: str, problems: list[Problem]
) -> list[tuple[str, yaml.Node, int]]:
    """(key, value node, line) of a mapping node; a problem if it is not one."""
    if is_null(node):
        return []
    if not isinstance(node, yaml.MappingNode):
        problems.append(
            Problem(file, node.start_mark.line + 1, where, "expected a mapping of keys to values")
        )
        return []
    out = []
    seen: set[str] = set()
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
        name = f"{where}.{key}" if where else key
        if not key:
            problems.append(Problem(file, line, where, "keys must be plain names"))
        elif key in seen:
            problems.append(Problem(file, line, name, "duplicate key"))
        else:
            seen.add(key)
            out.append((key, value_node, line))
    return out


def section(
    node: yaml.Node,
    file: str,
    where: str,
    keys: dict[str, Converter],
    problems: list[Problem],
) -> dict[str, Any]:
    """The values of a mapping whose keys are ``keys``; every problem appended."""
    values: dict[str, Any] = {}
    for key, value, line in items(node, file, where, problems):
        convert = keys.get(key)
        if convert is None:
            known = ", ".join(keys)
            problems.append(Problem(file, line, f"{where}.{key}", f"unknown key (known: {known})"))
            continue
        try:
            values[key] = convert(value)
        except Invalid as exc:
            problems.append(Problem(file, value.start_mark.line + 1, f"{where}.{key}", str(exc)))
    return values
