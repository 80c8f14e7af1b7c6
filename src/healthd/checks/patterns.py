"""The config's regular expressions (``body_regex``, ``expect_output_regex``), matched by RE2.

A check matches the operator's pattern against text the monitored service controls: an HTTP
body, a command's output. A backtracking engine such as Python's ``re`` can take exponential
time on it (``^(a|aa)+$`` against 64 ``a`` and a ``!``), on the event loop, where every
check, the API and SIGTERM wait for it. RE2 takes time linear in the text, times the size of
the pattern, which ``MAX_MEM`` bounds: no text can stall the daemon. Its syntax is Go's, the
one Prometheus and blackbox_exporter users write; what needs backtracking (backreferences,
lookaround, atomic groups, possessive quantifiers) is refused when the file loads, with a
hint, as is what Python read differently and RE2 would silently take as text (``{,3}``).

Matching is ``re.search``'s: anywhere in the text, with ``(?i)``, ``(?m)``, ``(?s)`` and
``(?U)`` for flags; ``\\d``, ``\\w``, ``\\s`` and ``\\b`` are ASCII. RE2's ``$`` without
``(?m)`` is the very end of the text, where Python's also matched before a final newline,
which almost every command's output ends with: a text that ends with a newline is also tried
without it, so patterns written for healthd before RE2 match as they did.
"""

from __future__ import annotations

import re
from typing import Any

# RE2's memory for one pattern: its compiled program, then its DFA cache. The program's size
# bounds the cost of a search (the text's length times it), so this also bounds how long one
# search can take; 1 MiB holds any pattern a health check needs (RE2's default is 8).
MAX_MEM = 1 << 20
# RE2 parses while holding the GIL, about 50 µs per large class (\pL): a pattern of this many
# characters is parsed in well under a second, and no health check needs a longer one.
MAX_CHARS = 4096
SHOWN_CHARS = 40  # of a pattern, in an error (errors go to logs and the API)
WHY = "healthd uses RE2, which matches in linear time"

# {,3} and {,}: a repetition for Python, text for RE2. A count RE2 cannot read (over 1000, say
# {99999999999}), it also takes as text.
_BRACES = re.compile(r"\{(?:([0-9]+)(?:,([0-9]*))?|,([0-9]*))\}")
_options: Any = None  # re2.Options, made at the first compile
_CODES = {"invalid perl operator": "invalid group or flags"}  # RE2's words, said for users
# Groups Python has and RE2 has not (most need backtracking), by what RE2 names in its
# error: what, and a hint
_GROUPS = {
    "(?=": (
        "lookahead (?=...) is not supported",
        "match the text itself: a(?=b) finds what ab finds",
    ),
    "(?!": ("negative lookahead (?!...) is not supported", "match what the text must say instead"),
    "(?<=": (
        "lookbehind (?<=...) is not supported",
        "match the text itself: (?<=a)b finds what ab finds",
    ),
    "(?<!": (
        "negative lookbehind (?<!...) is not supported",
        "match what the text must say instead",
    ),
    "(?>": ("atomic groups (?>...) are not supported", "use a plain group, (?:...)"),
    "(?#": ("comments (?#...) are not supported", "remove the comment"),
    "(?(": ("conditionals (?(...)...) are not supported", "use an alternation, a|b"),
}


class PatternError(ValueError):
    """A pattern RE2 cannot use; the message says why, from "invalid regular expression" on
    (the config loader puts FILE:LINE: KEY: before it)."""


class Pattern:
    """A compiled pattern: ``search`` says whether it matches anywhere in a text."""

    __slots__ = ("_regexp", "pattern")

    def __init__(self, pattern: str, regexp: Any) -> None:
        self.pattern = pattern  # as written in the config
        self._regexp = regexp

    def search(self, text: str) -> bool:
        data = text.encode("utf-8", "replace")  # "replace": a lone surrogate, never from I/O
        if self._regexp.search(data) is not None:
            return True
        # Python's $ also matched before a final newline (see the module's docstring)
        return data.endswith(b"\n") and self._regexp.search(data[:-1]) is not None

    def __eq__(self, other: object) -> bool:
        # by the text, as re.Pattern: a reload keeps a workload whose config did not change
        return isinstance(other, Pattern) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"Pattern({self.pattern!r})"


def compile(pattern: str) -> Pattern:
    """``pattern`` compiled by RE2; raises PatternError with the reason and a hint."""
    global _options
    if len(pattern) > MAX_CHARS:
        raise PatternError(f"{_invalid(pattern)}: longer than {MAX_CHARS} characters")
    try:
        encoded = pattern.encode("utf-8")
    except UnicodeEncodeError:
        raise PatternError(f"{_invalid(pattern)}: it is not valid Unicode") from None
    # loaded with the first pattern: a daemon without any does not carry the library
    import re2  # noqa: PLC0415

    if _options is None:
        options = re2.Options()
        # RE2 would write its errors to the daemon's stderr: they are raised, and said here
        options.log_errors = False
        options.max_mem = MAX_MEM
        options.never_capture = True  # only whether it matches is asked: no groups to track
        _options = options
    try:
        regexp = re2.compile(encoded, _options)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else b""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise PatternError(f"{_invalid(pattern)}: {_reason(pattern, text)}") from None
    if problem := _read_as_text(pattern):
        raise PatternError(f"{_invalid(pattern)}: {problem}")
    return Pattern(pattern, regexp)


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` quoted for a message: cut to ``limit`` characters, control and other
    unprintable characters escaped (backslashes are not doubled: a pattern reads as written)."""
    cut = text[:limit]
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in cut)
    return f"'{out}'" + ("..." if len(cut) < len(text) else "")


def _invalid(pattern: str) -> str:
    return f"invalid regular expression {shown(pattern)}"


def _refused(what: str, hint: str) -> str:
    return f"{what} ({WHY}; {hint})"


def _reason(pattern: str, error: str) -> str:
    """What RE2's ``error`` ("CODE" or "CODE: ARG") means for someone who wrote ``pattern``."""
    code, _, arg = error.partition(": ")
    if code == "invalid escape sequence":
        if arg[1:2].isdigit() and arg[1:2] != "0":
            return _refused(f"backreferences ({arg}) are not supported", "match the text itself")
        if arg == "\\Z":
            return _refused("\\Z is not supported", "use \\z or $ for the end of the text")
        if arg in ("\\u", "\\U", "\\N"):
            return _refused(
                f"{arg} escapes are not supported", "write \\x{...} with the code point"
            )
    elif code == "invalid perl operator":
        if arg.startswith("(?P") and "(?P=" in pattern:
            return _refused(
                "named backreferences (?P=name) are not supported", "match the text itself"
            )
        if arg in _GROUPS:
            return _refused(*_GROUPS[arg])
        flags = arg[2:]  # "(?ix", "(?i-x": the flags up to the one refused
        if flags.replace("-", "").isalpha() and "x" in flags:
            return _refused(
                "verbose mode (?x) is not supported",
                "write the pattern without its spaces and comments",
            )
        if flags.replace("-", "").isalpha() and (unknown := [f for f in flags if f in "aLu"]):
            return _refused(
                f"the flag (?{unknown[0]}) is not supported", "RE2's flags are i, m, s and U"
            )
    elif code == "bad repetition operator" and arg[-2:] in ("*+", "++", "?+", "}+"):
        return _refused(
            f"possessive quantifiers ({arg}) are not supported",
            "drop the last +: RE2 never backtracks",
        )
    elif code == "invalid repetition size":
        counts = [int(n) for n in arg.strip("{}").split(",") if n.isdigit()]
        if len(counts) == 2 and counts[1] < counts[0]:
            return f"{arg}: the maximum is below the minimum"
        if any(n > 1000 for n in counts):
            return _refused(f"{arg}: counts over 1000 are not supported", "use + or * instead")
        return _refused(
            f"{arg}: nested repetitions whose counts multiply to over 1000 are not supported",
            "use + or * instead",
        )
    elif code.startswith("pattern too large"):
        return _refused(
            f"the pattern is too large (over {MAX_MEM >> 20} MiB compiled)",
            "counted repetitions of large classes, such as \\pL{500}, are the usual cause",
        )
    elif code == "bad repetition operator":  # a**, a{2}{3}: Python refused them too
        return f"{shown(arg, 20)} repeats a repetition (to mean that, group the first: (?:...))"
    # a plain syntax error, as in any engine: RE2's words, and what it points at (for these,
    # the rest of the pattern, already shown)
    if code in ("missing )", "unexpected )", "missing ]") or not arg:
        return code
    return f"{_CODES.get(code, code)}: {shown(arg, 20)}"


def _read_as_text(pattern: str) -> str | None:
    """Why ``pattern``, which RE2 compiled, means something else than it did to Python:
    braces that Python read as a repetition and RE2 reads as text. None when it does not."""
    i, end = 0, len(pattern)
    in_class = False
    while i < end:
        c = pattern[i]
        if c == "\\":
            if pattern.startswith("Q", i + 1):  # \Q...\E: text, braces included
                stop = pattern.find("\\E", i + 2)
                i = end if stop < 0 else stop + 2
            else:
                i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith(":", i + 1):  # [:alpha:]
                stop = pattern.find(":]", i + 2)
                if stop >= 0:
                    i = stop + 2
                    continue
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1
            if pattern.startswith("^", i):
                i += 1
            if pattern.startswith("]", i):  # a ] first in a class is one of its characters
                i += 1
            continue
        elif c == "{" and (braces := _BRACES.match(pattern, i)):
            low, high, upto = braces.groups()
            if low is None:
                zero = "*" if not upto else f"{{0,{upto}}}"
                return _refused(
                    f"{braces.group()} is not a repetition in RE2, it matches that text",
                    f"write {zero}",
                )
            if int(low) > 1000 or (high and int(high) > 1000):
                return _refused(
                    f"{braces.group()}: counts over 1000 are not supported", "use + or * instead"
                )
        i += 1
    return None
