"""The http check's YAML keys: converters and checks for ``config/workload.py``'s FIELDS,
their rendering back to YAML, and what they mean for each exchange (``RequestOptions``).

Every value is checked when the file loads, so that a bad one is a config error at its line:
header names and values, status codes and ranges; ``body_regex`` is compiled (RE2,
``patterns.py``) by ``config/workload.py``'s converter, as ``expect_output_regex`` is.
What needs several keys or the disk (https-only keys, the TLS files, which grpc checks share)
is ``HttpCheck.validate``'s.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING, Any

import yaml

from healthd import __version__, durations
from healthd.errors import quoted

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

SCHEMES = ("http", "https")
# Keys only an https check reads: with scheme http they are a mistake, not ignored.
TLS_FILE_KEYS = ("ca_file", "client_cert", "client_key")  # grpc checks read them too
HTTPS_KEYS = ("tls_skip_verify", *TLS_FILE_KEYS, "cert_expiry_warn")
# What the probe does with each exchange (the others make its connection)
EXCHANGE_KEYS = (
    "scheme",
    "method",
    "headers",
    "expected_status",
    "body_contains",
    "body_regex",
    "follow_redirects",
)
# Keys no other kind reads
KEYS = (*EXCHANGE_KEYS, "tls_skip_verify", "cert_expiry_warn")
DEFAULT_STATUS = ((200, 399),)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names
# Set by healthd from the request it sends (framing and connection handling): a value from the
# config would contradict it.
RESERVED_HEADERS = frozenset(
    {"connection", "content-length", "transfer-encoding", "keep-alive", "te", "trailer", "upgrade"}
)
# Methods whose requests carry a body by their nature: an empty one is declared, or servers
# answer 411 Length Required.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_STATUS_ITEM = re.compile(r"([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?")
_NULL = "tag:yaml.org,2002:null"


def _problem(reason: str) -> ValueError:
    # config/workload.py imports the check kinds, so its FieldProblem is imported at call time
    from healthd.config.workload import FieldProblem  # noqa: PLC0415

    return FieldProblem(reason)


# -- converters (YAML node -> value) ------------------------------------------------------------


def as_headers(node: yaml.Node) -> tuple[tuple[str, str], ...]:
    """``{Name: value, ...}`` -> pairs in file order."""
    if not isinstance(node, yaml.MappingNode):
        raise _problem("expected a mapping of header names to values, e.g. {X-Probe: healthd}")
    pairs: dict[str, tuple[str, str]] = {}  # lower-case name -> (name, value)
    for key, value in node.value:
        name = str(key.value) if isinstance(key, yaml.ScalarNode) else ""
        if not _TOKEN.fullmatch(name):
            raise _problem(
                f"invalid header name {quoted(name)}: use letters, digits and !#$%&'*+-.^_`|~"
            )
        lower = name.lower()
        if lower in pairs:
            raise _problem(f"{name} is set twice (header names are case-insensitive)")
        if lower in RESERVED_HEADERS:
            raise _problem(f"{name} is set by healthd itself and cannot be configured")
        if not isinstance(value, yaml.ScalarNode) or value.tag == _NULL:
            raise _problem(f"{name}: expected a single value (quote '' for an empty one)")
        text = str(value.value)
        if not text.isascii() or any(c < " " or c == "\x7f" for c in text):
            # CR/LF would end the header early (request splitting), NUL is refused by servers
            raise _problem(f"the value of {name} must be printable ASCII on one line")
        if lower == "host" and (reason := _host_problem(text)):
            raise _problem(f"Host: {reason}")
        pairs[lower] = (name, text)
    return tuple(pairs.values())


def _host_problem(value: str) -> str | None:
    if not value or any(c in value for c in " \t/?#@\\"):
        return f"{quoted(value)} is not a host name with an optional :port"
    try:
        parts = urllib.parse.urlsplit(f"//{value}")
        port = parts.port
    except ValueError as exc:
        return f"{quoted(value)}: {exc}"
    if not parts.hostname:
        return f"{quoted(value)} is not a host name with an optional :port"
    if port == 0:
        return f"{quoted(value)}: port 0 is not a port"
    return None


def as_status(node: yaml.Node) -> tuple[tuple[int, int], ...]:
    """``200``, ``"200-299"`` or a list of those -> (low, high) ranges, in file order."""
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    if not items:
        raise _problem("expected at least one status code or range")
    ranges = []
    for item in items:
        if not isinstance(item, yaml.ScalarNode) or item.tag == _NULL:
            raise _problem('expected status codes (200) or ranges ("200-299")')
        text = str(item.value).strip()
        match = _STATUS_ITEM.fullmatch(text)
        if match is None:
            raise _problem(
                f"{quoted(text)} is not a status code (100-599) "
                'or a range of them such as "200-299"'
            )
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low:
            raise _problem(f"{quoted(text)}: the range ends before it starts")
        ranges.append((low, high))
    return tuple(ranges)


# -- checks of converted values (reason or None) ----------------------------------------------


def check_scheme(value: str) -> str | None:
    return None if value in SCHEMES else f"must be http or https, got {quoted(value)}"


def check_method(value: str) -> str | None:
    if not _TOKEN.fullmatch(value) or len(value) > 32:
        return f"{quoted(value)} is not an HTTP method"
    if value != value.upper():
        return f"methods are case-sensitive: did you mean {quoted(value.upper())}?"
    if value == "CONNECT":
        return "CONNECT opens a tunnel: it cannot be a health check"
    return None


def check_needle(value: str) -> str | None:
    return "must not be empty (every body contains it)" if not value else None


# -- values as the check and people use them ----------------------------------------------------


def status_text(ranges: tuple[tuple[int, int], ...]) -> str:
    """``200-299, 418`` for messages."""
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def status_codes(ranges: tuple[tuple[int, int], ...]) -> frozenset[int]:
    return frozenset(code for low, high in ranges for code in range(low, high + 1))


def to_yaml(cfg: WorkloadConfig) -> dict[str, Any]:
    """The http keys that are set, as they are written in a file (and read back the same);
    the TLS files are written where grpc's are (config/workload.py)."""
    out: dict[str, Any] = {}
    if cfg.scheme is not None:
        out["scheme"] = cfg.scheme
    if cfg.method is not None:
        out["method"] = cfg.method
    if cfg.headers is not None:
        out["headers"] = dict(cfg.headers)
    if cfg.expected_status is not None:
        items: list[int | str] = [
            low if low == high else f"{low}-{high}" for low, high in cfg.expected_status
        ]
        out["expected_status"] = items[0] if len(items) == 1 else items
    if cfg.body_contains is not None:
        out["body_contains"] = cfg.body_contains
    if cfg.body_regex is not None:
        out["body_regex"] = cfg.body_regex.pattern
    if cfg.follow_redirects is not None:
        out["follow_redirects"] = cfg.follow_redirects
    if cfg.tls_skip_verify is not None:
        out["tls_skip_verify"] = cfg.tls_skip_verify
    if cfg.cert_expiry_warn is not None:
        out["cert_expiry_warn"] = durations.format_seconds(cfg.cert_expiry_warn)
    return out


class RequestOptions:
    """What a workload's http options mean for each exchange, worked out once per probe."""

    __slots__ = (
        "codes",
        "expected",
        "extra_headers",
        "follow",
        "head",
        "host_header",
        "judged",
        "method",
        "needle",
        "needle_text",
        "reads_body",
        "regex",
        "scheme",
    )

    def __init__(self, cfg: WorkloadConfig) -> None:
        self.scheme = cfg.scheme or "http"
        self.method = cfg.method or "GET"
        self.head = self.method == "HEAD"
        ranges = cfg.expected_status
        self.codes = status_codes(ranges or DEFAULT_STATUS)
        # for the error; the default range is not spelled out, as it was not before
        self.expected = f" (expected {status_text(ranges)})" if ranges else ""
        self.host_header: str | None = None
        # healthd's own headers unless replaced, then the configured ones, in file order
        own = {"user-agent": f"User-Agent: healthd/{__version__}\r\n", "accept": "Accept: */*\r\n"}
        configured = []
        for name, value in cfg.headers or ():
            lower = name.lower()
            if lower == "host":
                self.host_header = value
                continue
            own.pop(lower, None)
            configured.append(f"{name}: {value}\r\n")
        body = "Content-Length: 0\r\n" if self.method in _BODY_METHODS else ""
        self.extra_headers = "".join(own.values()) + "".join(configured) + body
        needle = cfg.body_contains
        self.needle = needle.encode("utf-8") if needle is not None else None
        self.needle_text = needle or ""
        self.regex = cfg.body_regex
        self.reads_body = self.needle is not None or self.regex is not None
        self.follow = bool(cfg.follow_redirects)
        # whether responses are judged by more than 200-399 (a Judging probe)
        self.judged = self.head or self.reads_body or self.follow or ranges is not None

    @classmethod
    def of(cls, cfg: WorkloadConfig) -> RequestOptions:
        """The options of ``cfg``; one shared set for all workloads that set none."""
        global _plain
        if any(getattr(cfg, key) is not None for key in EXCHANGE_KEYS):
            return cls(cfg)
        if _plain is None:
            _plain = cls(cfg)
        return _plain


_plain: RequestOptions | None = None
