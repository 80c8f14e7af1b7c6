"""``sinks:`` in the daemon config file: where events are delivered, and which ones.

sinks:
  - name: ops
    type: webhook
    url: http://127.0.0.1:8099/hook
    headers: {X-Team: ops}
    secret_file: /etc/volt/healthd-webhook.secret   # HMAC-SHA256 of the body, signed
    events: [unhealthy, healthy, restart]           # default: every type but check_fail
    workloads: [web, db]                            # default: all
    timeout: 10s            # deadline of one attempt
    max_age: 24h            # then a delivery still failing is marked expired
    min_interval: 0s        # at most one delivery per workload and type this often
    repeat_interval: 0s     # reminders while a workload stays unhealthy (0: none)
  - name: page
    type: command
    command: [/usr/local/bin/page-oncall, --team, ops]  # event JSON on stdin
  - name: am
    type: alertmanager
    url: http://127.0.0.1:9093
    severity: critical
    resend_interval: 1m     # firing alerts are re-posted this often
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml

from healthd.config import nodes
from healthd.errors import Problem
from healthd.model import EventType

SINK_TYPES = ("webhook", "command", "alertmanager")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# By default a sink gets every event but check_fail: one per failed check is a log line's
# worth, not a notification's (a sink can still ask for it).
DEFAULT_EVENTS = tuple(t for t in EventType if t is not EventType.CHECK_FAIL)


@dataclass(frozen=True)
class SinkSettings:
    name: str
    type: str
    events: tuple[EventType, ...] = DEFAULT_EVENTS
    workloads: tuple[str, ...] | None = None  # None: all
    timeout: float = 10.0
    max_age: float = 86400.0
    min_interval: float = 0.0
    repeat_interval: float = 0.0
    # webhook and alertmanager
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # webhook
    secret_file: Path | None = None
    # command
    command: tuple[str, ...] = ()
    # alertmanager
    severity: str = "critical"
    resend_interval: float = 60.0

    def wants(self, kind: EventType, workload: str) -> bool:
        if kind not in self.events:
            return False
        return self.workloads is None or not workload or workload in self.workloads


def public_url(url: str) -> str:
    """A sink's URL without what may be a secret: user and password, and the query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact(text: str, settings: SinkSettings) -> str:
    """``text`` (a delivery error: logged, journaled, shown) without the secrets the sink's
    settings hold. An error may quote the URL it posted to, and a receiver may echo back what
    it got: a header's value, the query, the user and password (also as HTTP basic auth)."""
    if not text:
        return text
    if settings.url:
        text = text.replace(settings.url, public_url(settings.url))
    parts = urlsplit(settings.url)
    secrets = [parts.password or "", parts.query, *settings.headers.values()]
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        secrets += [unquote(parts.password or ""), base64.b64encode(pair.encode()).decode()]
    # Not a value of a few characters ("X-Team: ops"): a secret is longer, and replacing
    # every "ops" would garble the message.
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _event_types(node: yaml.Node) -> tuple[EventType, ...]:
    names = nodes.strings(node)
    known = {t.value for t in EventType}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise nodes.Invalid(
            f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    return tuple(EventType(n) for n in names)


def _url(node: yaml.Node) -> str:
    text = nodes.string(node)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise nodes.Invalid(f"{text!r}: expected an http:// or https:// URL")
    return text


def _name(node: yaml.Node) -> str:
    text = nodes.string(node)
    if not NAME.fullmatch(text):
        raise nodes.Invalid(
            f"{text!r}: use 1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return text


def _type(node: yaml.Node) -> str:
    text = nodes.string(node)
    if text not in SINK_TYPES:
        raise nodes.Invalid(f"unknown sink type {text!r} (use one of: {', '.join(SINK_TYPES)})")
    return text


def _positive(node: yaml.Node) -> float:
    value = nodes.duration(node)
    if value <= 0:
        raise nodes.Invalid("must be greater than zero")
    return value


def _argv(node: yaml.Node) -> tuple[str, ...]:
    argv = nodes.strings(node)
    if not argv or not argv[0].strip():
        raise nodes.Invalid("must name a program to run, e.g. [/usr/local/bin/notify]")
    return argv


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)


def _headers(node: yaml.Node) -> dict[str, str]:
    headers = nodes.string_map(node)
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise nodes.Invalid(f"{name!r} is not a valid header name")
        if not value.isascii() or any(c < " " or c == "\x7f" for c in value):
            raise nodes.Invalid(f"the value of {name} must be printable ASCII on one line")
    return headers


_COMMON: dict[str, nodes.Converter] = {
    "name": _name,
    "type": _type,
    "events": _event_types,
    "workloads": nodes.strings,
    "timeout": _positive,
    "max_age": _positive,
    "min_interval": nodes.duration,
    "repeat_interval": nodes.duration,
}
_BY_TYPE: dict[str, dict[str, nodes.Converter]] = {
    "webhook": {"url": _url, "headers": _headers, "secret_file": nodes.path},
    "command": {"command": _argv},
    "alertmanager": {
        "url": _url,
        "headers": _headers,
        "severity": nodes.string,
        "resend_interval": _positive,
    },
}
_REQUIRED = {"webhook": ("url",), "command": ("command",), "alertmanager": ("url",)}


def parse_sinks(node: yaml.Node, file: str, problems: list[Problem]) -> list[SinkSettings]:
    if nodes.is_null(node):
        return []
    if not isinstance(node, yaml.SequenceNode):
        problems.append(
            Problem(file, node.start_mark.line + 1, "sinks", "expected a list of sinks")
        )
        return []
    out: list[SinkSettings] = []
    names: set[str] = set()
    for index, item in enumerate(node.value):
        where = f"sinks[{index}]"
        line = item.start_mark.line + 1
        before = len(problems)
        kind = _kind_of(item)
        keys = {**_COMMON, **_BY_TYPE.get(kind, {})}
        values = nodes.section(item, file, where, keys, problems)
        for key in ("name", "type", *_REQUIRED.get(kind, ())):
            if key not in values and not any(p.field == f"{where}.{key}" for p in problems):
                problems.append(Problem(file, line, f"{where}.{key}", "required"))
        name = str(values.get("name", ""))
        if name in names:
            problems.append(Problem(file, line, f"{where}.name", f"duplicate sink name {name!r}"))
        if len(problems) > before:
            continue
        names.add(name)
        out.append(_settings(values))
    return out


def _kind_of(item: yaml.Node) -> str:
    """The sink's type, read first: it decides which other keys are known."""
    if isinstance(item, yaml.MappingNode):
        for key, value in item.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "type":
                return str(value.value) if isinstance(value, yaml.ScalarNode) else ""
    return ""


def _settings(values: dict[str, Any]) -> SinkSettings:
    if "workloads" in values:
        values["workloads"] = tuple(values["workloads"])
    return SinkSettings(**values)
