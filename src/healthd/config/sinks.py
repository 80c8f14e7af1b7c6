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
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

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


# A secret this short is taken out of an error only where the error names it (`token=ab`,
# `Bearer ab`, the whole header value): replacing every "ab" would garble the message.
MIN_BARE_SECRET = 4
# A query value may be no secret at all (`?format=json`, `?v=1`): as bare text it is taken out
# from this length on, unless its name says it is a credential (`?token=`, `?api_key=`).
MIN_BARE_QUERY_VALUE = 8
# Credentials by name: a header or query parameter called so carries a secret.
CREDENTIAL_NAME = re.compile(r"authorization|cookie|token|secret|key|auth|pass|signature", re.I)
# Schemes of the Authorization header (IANA's registry, and the common "Token"/"ApiKey"):
# in any header, the credential after one of them is a secret.
_AUTH_SCHEME = re.compile(
    r"basic|bearer|digest|dpop|gnap|hoba|mutual|negotiate|ntlm|privatetoken|scram-sha-(1|256)"
    r"|token|apikey|vapid",
    re.I,
)
_SCHEME_AND_CREDENTIAL = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s+(\S.*)")


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
    it got, whole or in part: a header's value or just the credential after its scheme, the
    query or any one value of it, the user and password (also as HTTP basic auth)."""
    if not text:
        return text
    if settings.url:
        text = text.replace(settings.url, public_url(settings.url))
    pattern, replacements = _redaction(settings)
    if pattern is None:
        return text
    return pattern.sub(lambda m: replacements[m.group(0)], text)


def _redaction(settings: SinkSettings) -> tuple[re.Pattern[str] | None, dict[str, str]]:
    """One pattern matching every form of every secret of ``settings``, longest first (so a
    `name=value` is taken out whole before its value alone), and what replaces each."""
    found: dict[str, str] = {}

    def secret(value: str, minimum: int = MIN_BARE_SECRET) -> None:
        if len(value) >= minimum:
            found.setdefault(value, "***")

    parts = urlsplit(settings.url)
    if parts.username is not None or parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        secret(parts.password or "")
        secret(password)
        secret(base64.b64encode(f"{user}:{password}".encode()).decode())
    for raw in filter(None, parts.query.split("&")):
        raw_name, equals, raw_value = raw.partition("=")
        if not equals:  # "?SECRET": a value without a name
            secret(raw)
            secret(unquote_plus(raw))
            continue
        name, value = unquote_plus(raw_name), unquote_plus(raw_value)
        if not value:
            continue
        # named, it is taken out whatever its length: "token=1" says what the 1 is
        found[raw] = f"{raw_name}=***"
        found.setdefault(f"{name}={value}", f"{name}=***")
        minimum = MIN_BARE_SECRET if CREDENTIAL_NAME.search(name) else MIN_BARE_QUERY_VALUE
        secret(raw_value, minimum)
        secret(value, minimum)
    for name, value in settings.headers.items():
        secret(value)
        for credential in _credentials(name, value):
            secret(credential)
    if not found:
        return None, {}
    alternatives = sorted(found, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, alternatives))), found


def _credentials(name: str, value: str) -> list[str]:
    """The secrets inside a header's value: the credential after an auth scheme (in a header
    whose name says it carries one, or after a known scheme), and a Basic pair's password."""
    match = _SCHEME_AND_CREDENTIAL.fullmatch(value.strip())
    if match is None:
        return []
    scheme, credential = match.group(1), match.group(2).strip()
    if not (CREDENTIAL_NAME.search(name) or _AUTH_SCHEME.fullmatch(scheme)):
        return []
    out = [credential]
    if scheme.lower() == "basic":
        try:
            pair = base64.b64decode(credential, validate=True).decode()
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            return out
        out += [pair, pair.partition(":")[2]]
    return out


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
