"""WorkloadConfig: the reference's fields and defaults, healthd's additive keys, and validation.

The reference decodes one YAML mapping per file into its ``Config``. healthd reads the same
keys with the same defaults, but is strict: an unknown key, a wrong type or a value that makes
no sense is a problem reported at its line, never silently replaced by a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from healthd import durations
from healthd.checks import KINDS, http_options, patterns
from healthd.config import policy_keys
from healthd.errors import DurationError, Problem, WorkloadNameError, quoted
from healthd.pathwalk import Authors

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid workload name; it is safe to join into a path."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise WorkloadNameError(
            f"invalid workload name {quoted(name)}: use 1-128 characters from A-Z a-z 0-9 _ . @ -, "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """One workload's check and restart settings. Durations are seconds."""

    workload: str
    type: str
    target: str = ""
    port: int = 0  # 0: not set (the reference omits it)
    interval: float = 30.0
    timeout: float = 5.0
    retries: int = 3
    auto_restart: bool = False
    max_restarts: int = 0  # 0: unlimited
    restart_delay: float = 10.0
    enabled: bool = True  # the reference treats a missing key as false; see README
    # healthd's additive keys
    host: str | None = None
    restart_command: tuple[str, ...] | None = None
    # exec checks only: an argv instead of target, the account, the environment
    command: tuple[str, ...] | None = None
    user: str | None = None
    group: str | None = None
    env: tuple[tuple[str, str], ...] | None = None  # (NAME, value) pairs, in file order
    # -- http options (checks/http.py) --
    scheme: str | None = None  # http (not set) or https
    method: str | None = None  # GET when not set
    headers: tuple[tuple[str, str], ...] | None = None  # (name, value) pairs, in file order
    expected_status: tuple[tuple[int, int], ...] | None = None  # (low, high); 200-399 not set
    body_contains: str | None = None
    body_regex: patterns.Pattern | None = None  # compiled when loaded
    follow_redirects: bool | None = None
    tls_skip_verify: bool | None = None
    cert_expiry_warn: float | None = None
    # TLS files, read by http (https) and grpc checks
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    # a connection kept between checks, read by http (https) and grpc checks
    keep_alive: bool | None = None

    # -- tcp options (checks/tcp.py) --
    send: str | None = None  # written once connected
    expect: str | None = None  # must appear in what the peer sends (substring)
    # -- exec options (checks/exec.py) --
    expect_output: str | None = None  # substring of the captured output
    expect_output_regex: patterns.Pattern | None = None  # searched in the captured output
    # -- grpc options (checks/grpc.py) --
    service: str | None = None  # grpc.health.v1 service name; "" or unset: the whole server
    tls: bool | None = None
    # -- policy options (engine/policy.py) --
    success_threshold: int | None = None
    start_period: float | None = None
    restart_backoff: bool | None = None
    max_restart_delay: float | None = None
    backoff_reset: float | None = None
    restart_window: float | None = None
    on_exhausted: str | None = None
    flap_threshold: int | None = None
    flap_window: float | None = None
    depends_on: tuple[str, ...] | None = None

    # -- end of options --

    # Not a key: who besides root could have changed the file this came from (empty: only
    # root). Files the config names are read only as far as they could read them (pathwalk.py).
    authors: Authors = frozenset()

    def with_defaults(self) -> WorkloadConfig:
        """The config as the daemon uses it: check-kind defaults filled in."""
        kind = KINDS.get(self.type)
        return kind.fill_defaults(self) if kind else self

    def restart_argv(self) -> list[str] | None:
        """``restart_command`` with ``{workload}`` substituted, or None."""
        if self.restart_command is None:
            return None
        return [arg.replace("{workload}", self.workload) for arg in self.restart_command]

    def to_yaml_mapping(self) -> dict[str, Any]:
        """The keys in the reference's order and rendering, then ours when set."""
        out: dict[str, Any] = {"workload": self.workload, "type": self.type, "target": self.target}
        if self.port:
            out["port"] = self.port
        out |= {
            "interval": durations.format_seconds(self.interval),
            "timeout": durations.format_seconds(self.timeout),
            "retries": self.retries,
            "auto_restart": self.auto_restart,
            "max_restarts": self.max_restarts,
            "restart_delay": durations.format_seconds(self.restart_delay),
            "enabled": self.enabled,
        }
        if self.host is not None:
            out["host"] = self.host
        if self.restart_command is not None:
            out["restart_command"] = list(self.restart_command)
        if self.command is not None:
            out["command"] = list(self.command)
        if self.user is not None:
            out["user"] = self.user
        if self.group is not None:
            out["group"] = self.group
        if self.env is not None:
            out["env"] = dict(self.env)
        # -- http options --
        out |= http_options.to_yaml(self)
        # TLS files, read by http (https) and grpc checks
        if self.ca_file is not None:
            out["ca_file"] = self.ca_file
        if self.client_cert is not None:
            out["client_cert"] = self.client_cert
        if self.client_key is not None:
            out["client_key"] = self.client_key
        if self.keep_alive is not None:
            out["keep_alive"] = self.keep_alive

        # -- tcp options --
        if self.send is not None:
            out["send"] = self.send
        if self.expect is not None:
            out["expect"] = self.expect
        # -- exec options --
        if self.expect_output is not None:
            out["expect_output"] = self.expect_output
        if self.expect_output_regex is not None:
            out["expect_output_regex"] = self.expect_output_regex.pattern
        # -- grpc options --
        if self.service is not None:
            out["service"] = self.service
        if self.tls is not None:
            out["tls"] = self.tls
        # -- policy options --
        for key in ("success_threshold", "restart_backoff", "on_exhausted", "flap_threshold"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in (
            "start_period", "max_restart_delay", "backoff_reset", "restart_window", "flap_window"
        ):  # fmt: skip
            if getattr(self, key) is not None:
                out[key] = durations.format_seconds(getattr(self, key))
        if self.depends_on is not None:
            out["depends_on"] = list(self.depends_on)

        # -- end of options --
        return out


class FieldProblem(ValueError):
    """A value that cannot be used for its field; the loader adds file and line."""


Converter = Callable[[yaml.Node], Any]


def _scalar(node: yaml.Node) -> yaml.ScalarNode:
    if not isinstance(node, yaml.ScalarNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
        raise FieldProblem(f"expected a single value, got {kind}")
    return node


def _as_str(node: yaml.Node) -> str:
    # Like the reference's decoder, any scalar fills a string field: `target: 6379` is "6379".
    return str(_scalar(node).value)


def _as_text(node: yaml.Node) -> str:
    """A string that may become an argument or a variable of a command: exec cannot pass a
    NUL byte (YAML can write one, "\\0")."""
    value = _as_str(node)
    if "\0" in value:
        raise FieldProblem("must not contain a NUL byte")
    return value


def _as_int(node: yaml.Node) -> int:
    scalar = _scalar(node)
    # ":" excludes YAML 1.1's base-60 integers (`port: 53:53` would be 3233), which the
    # reference's YAML 1.2 library rejects.
    if scalar.tag != "tag:yaml.org,2002:int" or ":" in scalar.value:
        raise FieldProblem(f"expected an integer, got {quoted(scalar.value)}")
    value = yaml.SafeLoader.construct_yaml_int(yaml.SafeLoader(""), scalar)
    assert isinstance(value, int)
    return value


_TRUE = frozenset({"true", "yes", "on", "y"})
_FALSE = frozenset({"false", "no", "off", "n"})


def _as_bool(node: yaml.Node) -> bool:
    # The words the reference's decoder takes for a bool field (YAML 1.1's, y/n included).
    scalar = _scalar(node)
    word = scalar.value.lower() if not scalar.style else ""  # plain, not quoted
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise FieldProblem(f"expected true or false, got {quoted(scalar.value)}")


def _as_duration(node: yaml.Node) -> float:
    scalar = _scalar(node)
    try:
        return durations.parse_seconds(scalar.value)
    except DurationError as exc:
        raise FieldProblem(str(exc)) from None


def _argv_of(example: str) -> Converter:
    def convert(node: yaml.Node) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise FieldProblem(f"expected a list of arguments, e.g. {example}")
        argv = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode) or item.tag == "tag:yaml.org,2002:null":
                raise FieldProblem("every argument must be a single string")
            if "\0" in item.value:
                raise FieldProblem("an argument must not contain a NUL byte")
            argv.append(str(item.value))
        if not argv or not argv[0].strip():
            raise FieldProblem("must name a program to run")
        return tuple(argv)

    return convert


def _as_regex(empty: str) -> Converter:
    """A regular expression, compiled (RE2: checks/patterns.py); ``empty`` is why "" is not."""

    def convert(node: yaml.Node) -> patterns.Pattern:
        text = _as_str(node)
        if not text:
            raise FieldProblem(empty)
        try:
            return patterns.compile(text)
        except patterns.PatternError as exc:
            raise FieldProblem(str(exc)) from None

    return convert


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _as_env(node: yaml.Node) -> tuple[tuple[str, str], ...]:
    if not isinstance(node, yaml.MappingNode):
        raise FieldProblem("expected a mapping of variable names to values, e.g. {PGUSER: app}")
    pairs: dict[str, str] = {}
    for key, value in node.value:
        name = str(key.value) if isinstance(key, yaml.ScalarNode) else ""
        if not ENV_NAME.fullmatch(name):
            raise FieldProblem(
                f"invalid variable name {quoted(name)}: use letters, digits and _, "
                "not starting with a digit"
            )
        if name in pairs:
            raise FieldProblem(f"{name} is set twice")
        if not isinstance(value, yaml.ScalarNode) or value.tag == "tag:yaml.org,2002:null":
            raise FieldProblem(f"{name}: expected a single value (quote '' for an empty one)")
        if "\0" in value.value:
            raise FieldProblem(f"{name}: must not contain a NUL byte")
        pairs[name] = str(value.value)
    return tuple(pairs.items())


def _account(value: str) -> str | None:
    if not value or len(value) > 256 or any(c.isspace() or c in ":/" for c in value):
        return "must be an account name or a numeric id"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than zero"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"{value} is outside 1-65535"


def _host(value: str) -> str | None:
    # a NUL byte used to crash the tcp check (getaddrinfo raises ValueError) and hang http's
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        return "must be an address or host name without spaces or control characters"
    return None


def _workload_name(value: str) -> str | None:
    try:
        check_name(value)
    except WorkloadNameError as exc:
        return str(exc)
    return None


def _check_type(value: str) -> str | None:
    if value in KINDS:
        return None
    return f"unknown check type {quoted(value)} (use one of: {', '.join(sorted(KINDS))})"


@dataclass(frozen=True)
class Field:
    convert: Converter
    check: Callable[[Any], str | None] | None = None


FIELDS: dict[str, Field] = {
    "workload": Field(_as_str, _workload_name),
    "type": Field(_as_str, _check_type),
    "target": Field(_as_text),
    "port": Field(_as_int, _port),
    "interval": Field(_as_duration, _positive),
    "timeout": Field(_as_duration, _positive),
    "retries": Field(_as_int, lambda v: None if v >= 1 else "must be at least 1"),
    "auto_restart": Field(_as_bool),
    "max_restarts": Field(_as_int, lambda v: None if v >= 0 else "must be 0 (unlimited) or more"),
    "restart_delay": Field(_as_duration, _positive),
    "enabled": Field(_as_bool),
    "host": Field(_as_str, _host),
    "restart_command": Field(_argv_of("[systemctl, restart, 'app@{workload}']")),
    "command": Field(_argv_of("[pg_isready, -h, 127.0.0.1]")),
    "user": Field(_as_str, _account),
    "group": Field(_as_str, _account),
    "env": Field(_as_env),
    # -- http options --
    "scheme": Field(_as_str, http_options.check_scheme),
    "method": Field(_as_str, http_options.check_method),
    "headers": Field(http_options.as_headers),
    "expected_status": Field(http_options.as_status),
    "body_contains": Field(_as_text, http_options.check_needle),
    "body_regex": Field(_as_regex("must not be empty (it would match any body)")),
    "follow_redirects": Field(_as_bool),
    "tls_skip_verify": Field(_as_bool),
    "cert_expiry_warn": Field(_as_duration, _positive),
    # TLS files, read by http (https) and grpc checks
    "ca_file": Field(_as_text, lambda v: None if v else "must not be empty"),
    "client_cert": Field(_as_text, lambda v: None if v else "must not be empty"),
    "client_key": Field(_as_text, lambda v: None if v else "must not be empty"),
    "keep_alive": Field(_as_bool),
    # -- tcp options --
    # NUL bytes allowed: they are only written to and looked for on a socket
    "send": Field(_as_str, lambda v: None if v else "must not be empty"),
    "expect": Field(_as_str, lambda v: None if v else "must not be empty"),
    # -- exec options --
    "expect_output": Field(_as_str, lambda v: None if v else "must not be empty"),
    "expect_output_regex": Field(_as_regex("must not be empty")),
    # -- grpc options --
    "service": Field(_as_text),  # "" is the whole server, as in the protocol
    "tls": Field(_as_bool),
    # -- policy options --
    "success_threshold": Field(_as_int, policy_keys.at_least_one),
    "start_period": Field(_as_duration, policy_keys.not_negative),
    "restart_backoff": Field(_as_bool),
    "max_restart_delay": Field(_as_duration, _positive),
    "backoff_reset": Field(_as_duration, _positive),
    "restart_window": Field(_as_duration, _positive),
    "on_exhausted": Field(_as_str, policy_keys.on_exhausted),
    "flap_threshold": Field(_as_int, policy_keys.flap_threshold),
    "flap_window": Field(_as_duration, _positive),
    "depends_on": Field(policy_keys.as_names),
    # -- end of options --
}
REQUIRED = ("workload", "type")
# Keys that only one or some check kinds read: anywhere else they are a mistake, not ignored.
KIND_ONLY: dict[str, frozenset[str]] = {
    **dict.fromkeys(("command", "user", "group", "env"), frozenset({"exec"})),
    # -- http options --
    **dict.fromkeys(http_options.KEYS, frozenset({"http"})),
    # TLS files and keep_alive, read by http (https) and grpc checks
    **dict.fromkeys(
        ("ca_file", "client_cert", "client_key", "keep_alive"), frozenset({"http", "grpc"})
    ),
    # -- tcp options --
    **dict.fromkeys(("send", "expect"), frozenset({"tcp"})),
    # -- exec options --
    **dict.fromkeys(("expect_output", "expect_output_regex"), frozenset({"exec"})),
    # -- grpc options --
    **dict.fromkeys(("service", "tls"), frozenset({"grpc"})),
    # -- end of options --
}


def did_you_mean(key: str) -> str:
    import difflib  # noqa: PLC0415  (only for a typo, so not paid by every daemon)

    close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build(
    values: dict[str, Any],
    lines: dict[str, int],
    file: str,
    stem: str | None,
    authors: Authors = frozenset(),
) -> tuple[WorkloadConfig | None, list[Problem]]:
    """Cross-field validation of converted values; ``lines`` maps field -> line for messages.
    ``authors``: who besides root could have changed the file (``WorkloadConfig.authors``)."""
    problems: list[Problem] = []
    first_line = min(lines.values(), default=1)

    def problem(fieldname: str, reason: str) -> None:
        problems.append(Problem(file, lines.get(fieldname, first_line), fieldname, reason))

    for key in REQUIRED:
        if key not in values:
            problem(key, "required")
    name = values.get("workload")
    if name is not None and stem is not None and name != stem:
        problem(
            "workload",
            f"{quoted(name)} differs from the file name (expected {quoted(stem)} in {stem}.yaml)",
        )
    if "type" in values:
        for key, kinds in KIND_ONLY.items():
            if key in values and values["type"] not in kinds:
                problem(key, f"only for {' and '.join(sorted(kinds))} checks "
                        f"(this is a {values['type']} check)")  # fmt: skip
    if problems:
        return None, problems
    cfg = WorkloadConfig(**values, authors=authors)
    for fieldname, reason in KINDS[cfg.type].validate(cfg):
        problem(fieldname, reason)
    for fieldname, reason in policy_keys.problems(cfg):
        problem(fieldname, reason)
    if problems:
        return None, problems
    return cfg, []


def convert(key: str, node: yaml.Node) -> Any:
    """Convert and check one field's YAML value; raises FieldProblem with the reason."""
    spec = FIELDS[key]
    value = spec.convert(node)
    if spec.check is not None and (reason := spec.check(value)):
        raise FieldProblem(reason)
    return value
