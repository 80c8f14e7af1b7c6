"""TLS for https checks: the files a workload names, its client context, and its server's
certificate expiry.

The files (``ca_file``, ``client_cert``, ``client_key``) are checked when the config loads, so
that a missing or unusable file is a config error at its line. They are read only as far as
whoever could change the workload's file could read them (``pathwalk.py``): root's keys are
not lent to a file another user wrote, and the errors tell that user nothing they could not
find out themselves. The client context is built
when the probe is made, never per check, and workloads with the same settings share one:
loading the system's CA bundle costs milliseconds and megabytes that a thousand https
workloads should not pay a thousand times.

A certificate renewed in place is picked up without a reload: before each new connection
(not each check: a kept connection keeps its handshake) the probe compares the files' inode,
size and modification time with those its context was built from, and builds a new context
when they changed. A reload builds new probes for the workloads whose config changed.

The server certificate's expiry is read from its DER encoding with the small reader below
rather than a dependency: ``getpeercert()`` decodes certificates only when they were verified,
and ``tls_skip_verify`` checks want their expiry too.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from healthd import pathwalk
from healthd.errors import quoted
from healthd.pathwalk import Authors

MAX_FILE_BYTES = 1 << 20  # a CA bundle is a few hundred KiB; anything larger is a mistake


class TlsFileError(ValueError):
    """A file that cannot be used; the message says why."""


def _refused(path: str, exc: pathwalk.WalkRefused) -> TlsFileError:
    if exc.not_regular:
        return TlsFileError(f"{path} is not a regular file")
    if exc.denied:
        return TlsFileError(f"not read: {exc}")
    return TlsFileError(f"cannot read {path}: {exc}")


@contextlib.contextmanager
def opened(path: str, authors: Authors) -> Iterator[str]:
    """A name OpenSSL can open for ``path``, read only as far as ``authors`` (who besides root
    could have changed the workload's file) could read it (``pathwalk.py``): the judged
    descriptor's ``/proc/self/fd`` name, valid inside the block."""
    if not os.path.isabs(path):
        raise TlsFileError(
            f"{quoted(path)} must be an absolute path (the daemon's working directory is not yours)"
        )
    try:
        found = pathwalk.open_file(path, authors)
    except pathwalk.WalkRefused as exc:
        raise _refused(path, exc) from None
    try:
        yield pathwalk.proc_path(found)
    finally:
        found.close()


def read_file(path: str, authors: Authors = frozenset()) -> bytes:
    """A certificate or key file: absolute path, regular file, readable, not empty."""
    with opened(path, authors) as name, open(name, "rb") as fh:
        try:
            data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise TlsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise TlsFileError(f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB")
    if not data.strip():
        raise TlsFileError(f"{path} is empty")
    return data


def ca_problem(path: str, authors: Authors = frozenset()) -> str | None:
    """Why ``path`` is no CA file OpenSSL accepts as trust anchors, or None."""
    try:
        read_file(path, authors)
        with opened(path, authors) as name:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=name)
    except TlsFileError as exc:
        return str(exc)
    except (ssl.SSLError, OSError) as exc:
        return f"{path} holds no usable CA certificate ({_ssl_reason(exc)})"
    return None


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    raise TlsFileError("encrypted")


def client_pair_problem(cert: str, key: str | None, authors: Authors = frozenset()) -> str | None:
    """Why ``client_cert`` (with ``client_key``, or a key in the same file) cannot be used,
    or None. Nothing is said of a file ``authors`` may not read but that they may not."""
    key_path = key if key is not None else cert
    try:
        read_file(cert, authors)
        key_data = read_file(key_path, authors)
    except TlsFileError as exc:
        return str(exc)
    if b"ENCRYPTED" in key_data:
        # "BEGIN ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED"
        return f"the key in {key_path} is encrypted: healthd cannot ask for a passphrase"
    try:
        _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key, authors)
    except (ssl.SSLError, OSError, TlsFileError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            return f"the key in {key_path} does not belong to the certificate in {cert}"
        if isinstance(exc, TlsFileError):
            return str(exc)
        if key is None:
            return (
                f"{cert}: no certificate followed by its private key ({_ssl_reason(exc)}); "
                "set client_key if the key is in another file"
            )
        return f"{cert} / {key}: not a PEM certificate and its key ({_ssl_reason(exc)})"
    return None


def _load_pair(context: ssl.SSLContext, cert: str, key: str | None, authors: Authors) -> None:
    with opened(cert, authors) as cert_name, contextlib.ExitStack() as stack:
        key_name = None if key is None else stack.enter_context(opened(key, authors))
        context.load_cert_chain(cert_name, key_name, password=_no_passphrase)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """What a client context is made of."""

    skip_verify: bool = False
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    authors: Authors = frozenset()  # the workload file's (WorkloadConfig.authors)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.ca_file, self.client_cert, self.client_key) if f)


Signature = tuple[tuple[int, int, int] | str, ...]


def signature(settings: TlsSettings) -> Signature:
    """Inode, size and modification time of each file (its error, if it cannot be stat'ed):
    what tells that a file was replaced or rewritten since a context was built from it."""
    out: list[tuple[int, int, int] | str] = []
    for path in settings.files:
        try:
            st = os.stat(path)
        except OSError as exc:
            out.append(f"cannot read {path}: {exc.strerror or exc}")
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


# Contexts in use, by settings and the files' signature; one goes when its last probe does.
_CONTEXTS: weakref.WeakValueDictionary[tuple[TlsSettings, Signature], ssl.SSLContext] = (
    weakref.WeakValueDictionary()
)


def client_context(settings: TlsSettings, files: Signature) -> ssl.SSLContext:
    """The context for ``settings`` as its files are now (``files``: their ``signature``);
    raises TlsFileError when they do not load."""
    context = _CONTEXTS.get((settings, files))
    if context is None:
        context = _build(settings)
        _CONTEXTS[settings, files] = context
    return context


def _build(settings: TlsSettings) -> ssl.SSLContext:
    try:
        # cafile replaces the system's trust store (as curl's --cacert does): an internal CA
        # file says which servers this check trusts
        if settings.ca_file is not None and not settings.skip_verify:
            with opened(settings.ca_file, settings.authors) as ca_name:
                context = ssl.create_default_context(cafile=ca_name)
        else:
            context = ssl.create_default_context()
        if settings.skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if settings.client_cert is not None:
            _load_pair(context, settings.client_cert, settings.client_key, settings.authors)
    except (ssl.SSLError, OSError, TlsFileError) as exc:
        files = ", ".join(settings.files)
        raise TlsFileError(f"the TLS files ({files}) do not load: {_ssl_reason(exc)}") from None
    return context


def server_name(host_header: str | None, address: str) -> str:
    """The name sent as SNI and verified against the certificate: the host of a configured
    ``Host`` header (the name the server is known by), else the address checked."""
    if host_header is None:
        return address
    if host_header.startswith("["):  # [v6]:port
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


_LIBRARY_NOISE = re.compile(r"^\[\w+\] |\s*\(_ssl\.c:\d+\)$")  # "[SSL] x (_ssl.c:3926)"


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or exc.reason or exc)
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return _LIBRARY_NOISE.sub("", exc.strerror).lower()
    return str(exc) or "the TLS library gave no reason"


# OpenSSL reasons that say the server wanted a client certificate it did not get
_CLIENT_CERT_WANTED = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
    }
)


def error_text(exc: ssl.SSLError, *, has_client_cert: bool) -> str:
    """A TLS failure, for people: what went wrong and, where it is clear, what to set."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: server certificate not accepted: {_ssl_reason(exc)}"
    reason = getattr(exc, "reason", None) or ""
    text = f"TLS: {_ssl_reason(exc)}"
    if reason == "WRONG_VERSION_NUMBER":
        return f"{text} (does the server speak TLS on this port? scheme: http)"
    if reason in _CLIENT_CERT_WANTED:
        if not has_client_cert:
            return f"{text} (the server may require a client certificate: client_cert)"
        return f"{text} (the server refused the client certificate)"
    return text


# -- the expiry of a DER certificate ---------------------------------------------------------


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    tag = der[pos]
    length = der[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    end = start + length
    if end > len(der):
        raise ValueError("truncated")
    return tag, start, end


_SEQUENCE, _EXPLICIT_0, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0xA0, 0x17, 0x18


def not_after(der: bytes) -> float | None:
    """The notAfter of an X.509 certificate in DER, as Unix seconds; None if unreadable."""
    try:
        tag, start, _ = _element(der, 0)  # Certificate
        if tag != _SEQUENCE:
            return None
        tag, pos, _ = _element(der, start)  # TBSCertificate
        if tag != _SEQUENCE:
            return None
        tag, _, end = _element(der, pos)
        if tag == _EXPLICIT_0:  # version
            tag, _, end = _element(der, end)
        # serial number, then signature algorithm and issuer
        for _ in range(2):
            tag, _, end = _element(der, end)
        tag, start, _ = _element(der, end)  # Validity
        if tag != _SEQUENCE:
            return None
        _, _, end = _element(der, start)  # notBefore
        tag, start, end = _element(der, end)  # notAfter
        text = der[start:end].decode("ascii")
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return _asn1_time(tag, text)


def _asn1_time(tag: int, text: str) -> float | None:
    if not text.endswith("Z") or not text[:-1].isdigit():
        return None
    if tag == _UTC_TIME and len(text) == 13:  # YYMMDDHHMMSSZ; RFC 5280: 50-99 are 19xx
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME or len(text) != 15:  # YYYYMMDDHHMMSSZ
        return None
    month, day, hour, minute, second = (int(text[i : i + 2]) for i in range(4, 14, 2))
    try:
        return datetime(int(text[:4]), month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except ValueError:  # a 60th second, day 32, ...
        return None


def peer_not_after(ssl_object: ssl.SSLObject | None) -> float | None:
    """The expiry of the certificate a TLS connection's server presented."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return not_after(der) if der else None
