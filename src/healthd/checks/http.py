"""http: ``METHOD SCHEME://ADDRESS:PORT/TARGET``; healthy on an expected status (200-399 unless
``expected_status`` says otherwise) and, when asked, a body that matches.

The kind: defaults, validation, and which probe a workload gets. A plain GET gets
``HttpProbe`` (``http_probe.py``: the exchange, keep-alive, the caps); options that judge the
response add ``JudgingProbe`` (``http_judge.py``: expected_status, body matchers, HEAD,
redirects); ``scheme: https`` adds TLS (``https.py``, with ``tls.py``). Only a workload that
uses an option pays for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from healthd.checks import http_options, tls
from healthd.checks.http_judge import JudgingProbe
from healthd.checks.http_options import RequestOptions
from healthd.checks.http_probe import (
    KEEPALIVE_MAX_INTERVAL,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    HttpProbe,
    check_url,
)
from healthd.checks.https import HttpsProbe
from healthd.errors import quoted

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

__all__ = [
    "HTTPS_DEFAULT_PORT",
    "KEEPALIVE_MAX_INTERVAL",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "HttpCheck",
    "HttpProbe",
    "HttpsProbe",
    "JudgingProbe",
    "check_url",
]

HTTPS_DEFAULT_PORT = 8443


class JudgingHttpsProbe(JudgingProbe, HttpsProbe):
    __slots__ = ()


class HttpCheck:
    name = "http"
    needs_address = True
    default_target = "/healthz"
    default_port = 8080

    def fill_defaults(self, cfg: WorkloadConfig) -> WorkloadConfig:
        port = HTTPS_DEFAULT_PORT if cfg.scheme == "https" else self.default_port
        return replace(cfg, target=cfg.target or self.default_target, port=cfg.port or port)

    def validate(self, cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
        target = cfg.target
        if target and not target.startswith("/"):
            yield "target", f"must be a URL path starting with '/', got {quoted(target)}"
        elif target and not all("!" <= c <= "~" for c in target):
            yield "target", "must be printable ASCII without spaces (percent-encode the rest)"
        if cfg.method == "HEAD":
            for key in ("body_contains", "body_regex"):
                if getattr(cfg, key) is not None:
                    yield key, "a HEAD response has no body: use method GET"
        if cfg.scheme != "https":
            for key in http_options.HTTPS_KEYS:
                if getattr(cfg, key) is not None:
                    yield key, "only for scheme: https (this check uses http)"
            return
        yield from _tls_problems(cfg)

    @staticmethod
    def describe(cfg: WorkloadConfig, address: str) -> str:
        return f"{cfg.method or 'GET'} {check_url(cfg, address)}"

    def probe(self, cfg: WorkloadConfig) -> HttpProbe:
        judged = RequestOptions.of(cfg).judged
        if cfg.scheme == "https":
            return JudgingHttpsProbe(cfg) if judged else HttpsProbe(cfg)
        return JudgingProbe(cfg) if judged else HttpProbe(cfg)


def _tls_problems(cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
    """The TLS files, read now: a missing or unusable one is a config error at its line."""
    if cfg.ca_file is not None:
        if cfg.tls_skip_verify:
            yield "ca_file", "not used with tls_skip_verify: true (set one of the two)"
        elif reason := tls.ca_problem(cfg.ca_file, cfg.authors):
            yield "ca_file", reason
    if cfg.client_cert is None:
        if cfg.client_key is not None:
            yield "client_key", "needs client_cert (the certificate the key belongs to)"
    elif reason := tls.client_pair_problem(cfg.client_cert, cfg.client_key, cfg.authors):
        yield "client_cert", reason
