"""The daemon config file (``--daemon-config``, default /etc/volt/healthd.yaml).

It configures healthd itself, not a workload, so it lives outside the workload directory.
Strict like the workload files: an unknown key or a bad value is a ``FILE:LINE: key: reason``
problem and the daemon does not start on it. A missing default file means all defaults; a
file named on the command line must exist.

    api:
      listen: 127.0.0.1:9780       # HTTP API; "" turns the TCP listener off
      socket: /run/healthd.sock    # also a Unix socket (mode 0660); off when not set
      token_file: /etc/volt/healthd.token   # bearer token for mutating calls (mode 0600)
      allowed_hosts: [node1.example]  # Host names the TCP listener answers to, beyond
                                   # localhost and addresses (DNS rebinding guard)
      max_connections: 256         # TCP listener; max_connections_per_address: 64
      socket_max_connections: 64   # Unix socket; socket_max_connections_per_uid: 16,
                                   # and that many kept for root
    security:
      strict_modes: true           # as root: no commands from files others could change
      cgroup_per_command: false    # true: a cgroup per exec check where the host allows it
      pass_environment: [TZ]       # the daemon's variables that exec checks get too
    reload:
      watch: true                  # reload by itself when the config dir changes
      debounce: 250ms              # ... once a burst of changes has been quiet this long
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from healthd.api.hosts import BadHost, host_value
from healthd.config import nodes
from healthd.config.sinks import SinkSettings, parse_sinks
from healthd.config.workload import ENV_NAME
from healthd.errors import ConfigError, Problem

DEFAULT_DAEMON_CONFIG = Path("/etc/volt/healthd.yaml")
DEFAULT_LISTEN = "127.0.0.1:9780"
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything


def parse_listen(text: str) -> ListenAddress | None:
    """``host:port`` or ``[v6]:port``; "" means no TCP listener. Raises ValueError."""
    text = text.strip()
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9780")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"{text!r}: no address in the brackets")
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:9780")
    # ASCII digits only: str.isdigit() takes "٨٠" and "²" too
    if not _PORT.fullmatch(port_text) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    if any(c.isspace() for c in host):
        raise ValueError(f"{text!r}: the host has spaces")
    return ListenAddress(host, int(port_text))


@dataclass(frozen=True)
class ApiSettings:
    listen: ListenAddress | None = field(default_factory=lambda: parse_listen(DEFAULT_LISTEN))
    socket: Path | None = None
    token_file: Path | None = None
    allowed_hosts: tuple[str, ...] = ()  # names (or addresses) beyond the listener's own
    # Connection budgets (api/budget.py): the TCP listener's, per client (a local client's
    # uid, else its address; also the places kept for root), the Unix socket's, and per uid
    # on it (also the places kept for root).
    max_connections: int = 256
    max_connections_per_address: int = 64
    socket_max_connections: int = 64
    socket_max_connections_per_uid: int = 16


@dataclass(frozen=True)
class EventsSettings:
    """The event journal's retention: older or more events are pruned (never one that is
    still to be delivered)."""

    max_age: float = 30 * 86400.0
    max_count: int = 100_000


@dataclass(frozen=True)
class SecuritySettings:
    """``strict_modes``: see config/trust.py. ``pass_environment``: names of the daemon's own
    environment variables that exec checks get as well (they get nothing else of it).
    ``cgroup_per_command``: contain each exec check, sink command and lookup in a cgroup of
    its own where the host allows it (containment.py). Off by default: moving the daemon into
    a cgroup waits for an RCU grace period on a default cgroup2 mount (about 8 ms on an idle
    machine, much more on a busy one) with the event loop blocked, for every command."""

    strict_modes: bool = True
    pass_environment: tuple[str, ...] = ()
    cgroup_per_command: bool = False


@dataclass(frozen=True)
class ReloadSettings:
    """Config dir watching (``engine/watch.py``); ``healthd run --no-watch`` turns it off."""

    watch: bool = True
    debounce: float = 0.25


@dataclass(frozen=True)
class DaemonFile:
    """What the daemon config file says (defaults where it says nothing)."""

    path: Path | None = None  # None: no file was read
    api: ApiSettings = field(default_factory=ApiSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    sinks: tuple[SinkSettings, ...] = ()
    security: SecuritySettings = field(default_factory=SecuritySettings)
    reload: ReloadSettings = field(default_factory=ReloadSettings)


def _listen(node: yaml.Node) -> ListenAddress | None:
    try:
        return parse_listen(nodes.string(node))
    except ValueError as exc:
        raise nodes.Invalid(str(exc)) from None


def _hosts(node: yaml.Node) -> tuple[str, ...]:
    hosts = nodes.strings(node)
    for host in hosts:
        try:
            host_value(host)
        except BadHost:
            raise nodes.Invalid(
                f"{host!r} is not a host name or address (no port, no scheme)"
            ) from None
    return hosts


def _connections(node: yaml.Node) -> int:
    value = nodes.count(node)
    if not 1 <= value <= 100_000:
        raise nodes.Invalid(f"{value}: must be from 1 to 100000")
    return value


_API_KEYS: dict[str, nodes.Converter] = {
    "listen": _listen,
    "socket": nodes.path,
    "token_file": nodes.path,
    "allowed_hosts": _hosts,
    "max_connections": _connections,
    "max_connections_per_address": _connections,
    "socket_max_connections": _connections,
    "socket_max_connections_per_uid": _connections,
}


def _flag(node: yaml.Node) -> bool:
    word = nodes.string(node)
    if word not in ("true", "false"):
        raise nodes.Invalid(f"expected true or false, got {word!r}")
    return word == "true"


def _names(node: yaml.Node) -> tuple[str, ...]:
    names = nodes.strings(node)
    for name in names:
        if not ENV_NAME.fullmatch(name):
            raise nodes.Invalid(f"{name!r} is not an environment variable name")
    return names


_SECURITY_KEYS: dict[str, nodes.Converter] = {
    "strict_modes": _flag,
    "pass_environment": _names,
    "cgroup_per_command": _flag,
}


def _debounce(node: yaml.Node) -> float:
    value = nodes.duration(node)
    if not 0.05 <= value <= 60:
        raise nodes.Invalid(f"{nodes.string(node)!r}: must be from 50ms to 1m")
    return value


_RELOAD_KEYS: dict[str, nodes.Converter] = {
    "watch": _flag,
    "debounce": _debounce,
}
_EVENTS_KEYS: dict[str, nodes.Converter] = {
    "max_age": nodes.duration,
    "max_count": nodes.count,
}


def read_daemon_file(named: Path | None) -> DaemonFile:
    """The file named on the command line (which must exist), or the default one (if any)."""
    return load_daemon_file(named or DEFAULT_DAEMON_CONFIG, required=named is not None)


def load_daemon_file(path: Path, *, required: bool) -> DaemonFile:
    """Read ``path``; raises ConfigError with every problem found."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError([Problem(file, 0, "", "daemon config file does not exist")]) from None
        return DaemonFile()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(file, 0, "", f"cannot read: {exc}")]) from None
    return parse_daemon_file(text, path)


def parse_daemon_file(text: str, path: Path) -> DaemonFile:
    file = str(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(
            [Problem(file, mark.line + 1 if mark else 0, "", f"YAML syntax error: {reason}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([nodes.reader_problem(exc, text, file)]) from None
    if root is None:
        return DaemonFile(path=path)
    problems: list[Problem] = []
    api: dict[str, Any] = {}
    events: dict[str, Any] = {}
    sinks: list[SinkSettings] = []
    security: dict[str, Any] = {}
    reload: dict[str, Any] = {}
    for key, value, line in nodes.items(root, file, "", problems):
        if key == "api":
            api = nodes.section(value, file, "api", _API_KEYS, problems)
        elif key == "events":
            events = nodes.section(value, file, "events", _EVENTS_KEYS, problems)
        elif key == "sinks":
            sinks = parse_sinks(value, file, problems)
        elif key == "security":
            security = nodes.section(value, file, "security", _SECURITY_KEYS, problems)
        elif key == "reload":
            reload = nodes.section(value, file, "reload", _RELOAD_KEYS, problems)
        else:
            problems.append(
                Problem(
                    file, line, key, "unknown key (known: api, events, sinks, security, reload)"
                )
            )
    if problems:
        raise ConfigError(problems)
    return DaemonFile(
        path=path,
        api=ApiSettings(**api),
        events=EventsSettings(**events),
        sinks=tuple(sinks),
        security=SecuritySettings(**security),
        reload=ReloadSettings(**reload),
    )
