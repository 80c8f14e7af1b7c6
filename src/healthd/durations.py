"""Durations in Go's syntax, both ways.

The reference writes durations with Go's ``time.Duration.String`` ("30s", "1m30s", "1h0m0s",
"250ms") and reads them with ``time.ParseDuration``; files move between the two daemons, so
healthd parses and prints exactly that syntax. Values are held as float seconds (what asyncio
wants); conversions go through integer nanoseconds so printing is exact.
"""

from __future__ import annotations

import re

from healthd.errors import DurationError

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_NS = (1 << 63) - 1  # Go's Duration is an int64 of nanoseconds
# ASCII digits only: ``\d`` and int() also take "١٢" and other scripts' digits, which Go refuses.
_TERM = re.compile(r"([0-9]*)(?:\.([0-9]*))?([a-zµμ]+)")
_BARE_NUMBER = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?|[-+]?\.[0-9]+")
_MAX_DIGITS = 19  # more significant digits than an int64 holds


def _fraction_ns(digits: str, scale: int) -> int:
    """Go's leadingFraction and its float64 step, so results match it to the nanosecond.

    Go keeps fraction digits only while they fit an int64 and ignores the rest; doing the same
    also bounds the work for a line of a million digits.
    """
    value, div = 0, 1.0
    for c in digits:
        if value > _MAX_NS // 10 or value * 10 + int(c) > _MAX_NS + 1:
            break
        value = value * 10 + int(c)
        div *= 10
    return int(float(value) * (float(scale) / div)) if value else 0


def parse_ns(text: str) -> int:
    """Parse a Go duration into integer nanoseconds.

    Exactly what Go's ``time.ParseDuration`` accepts, no more: no surrounding spaces, ASCII
    digits, the int64 range. Anything else raises DurationError (and nothing else).
    """
    original = text
    if not isinstance(text, str):
        raise DurationError(f"expected a duration string such as '30s', got {text!r}")
    # a megabyte of digits is refused in a line that still fits a terminal
    shown = repr(text) if len(text) <= 64 else repr(text[:48]) + f"... ({len(text)} characters)"
    sign = 1
    if text[:1] in "+-" and text:
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise DurationError(f"invalid duration {shown}: empty")
    if _BARE_NUMBER.fullmatch(text):
        raise DurationError(
            f"invalid duration {shown}: missing unit (did you mean '{original.strip()}s'? "
            "units: ns, us, ms, s, m, h)"
        )
    out_of_range = DurationError(f"invalid duration {shown}: out of range (more than ~292 years)")
    total = 0
    pos = 0
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m or (not m.group(1) and not m.group(2)):
            raise DurationError(
                f"invalid duration {shown}: use Go syntax such as '30s', '1m30s', '250ms'"
            )
        whole, frac, unit = m.group(1).lstrip("0"), m.group(2) or "", m.group(3)
        scale = _NS_PER_UNIT.get(unit)
        if scale is None:
            raise DurationError(
                f"invalid duration {shown}: unknown unit {unit!r} (use ns, us, ms, s, m, h)"
            )
        if len(whole) > _MAX_DIGITS or int(whole or "0") > (_MAX_NS + 1) // scale:
            raise out_of_range
        total += int(whole or "0") * scale + _fraction_ns(frac, scale)
        if total > _MAX_NS + 1:
            raise out_of_range
        pos = m.end()
    if total > _MAX_NS + (sign < 0):
        raise out_of_range
    return sign * total


def parse_seconds(text: str) -> float:
    """Parse a Go duration into seconds."""
    return parse_ns(text) / 1e9


def _fraction(value: int, digits: int) -> str:
    """``value`` in units of 10**-digits, printed like Go: trailing zeros dropped."""
    whole, frac = divmod(value, 10**digits)
    text = str(frac).rjust(digits, "0").rstrip("0")
    return f"{whole}.{text}" if text else str(whole)


def format_ns(ns: int) -> str:
    """Print nanoseconds the way Go's ``time.Duration.String`` does."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fraction(ns, 6)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _fraction(rest, 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return f"{sign}{seconds}"


def format_seconds(seconds: float) -> str:
    """Print seconds as a Go duration string."""
    return format_ns(round(seconds * 1e9))
