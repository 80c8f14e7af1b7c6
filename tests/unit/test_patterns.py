"""checks/patterns.py: the config's regular expressions, compiled by RE2.

What RE2 refuses (and what it would silently read differently from Python) is a config error
at the key's FILE:LINE with a hint; what it accepts is searched as ``re.search`` did, in time
linear in the text.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from healthd.checks import patterns
from healthd.config.loader import parse_text

WHY = "healthd uses RE2, which matches in linear time"

# pattern -> the reason after "invalid regular expression '<pattern>': "
REFUSED: dict[str, str] = {
    # backtracking, which RE2 does not do
    r"(a)\1": rf"backreferences (\1) are not supported ({WHY}; match the text itself)",
    r"(?P<x>a)(?P=x)": (
        f"named backreferences (?P=name) are not supported ({WHY}; match the text itself)"
    ),
    r"a(?=b)": (
        f"lookahead (?=...) is not supported ({WHY}; match the text itself: a(?=b) finds "
        "what ab finds)"
    ),
    r"a(?!b)": (
        f"negative lookahead (?!...) is not supported ({WHY}; match what the text must say instead)"
    ),
    r"(?<=a)b": (
        f"lookbehind (?<=...) is not supported ({WHY}; match the text itself: (?<=a)b finds "
        "what ab finds)"
    ),
    r"(?<!a)b": (
        f"negative lookbehind (?<!...) is not supported ({WHY}; match what the text must say "
        "instead)"
    ),
    r"(?>a+)b": f"atomic groups (?>...) are not supported ({WHY}; use a plain group, (?:...))",
    r"a*+b": f"possessive quantifiers (*+) are not supported ({WHY}; drop the last +: RE2 "
    "never backtracks)",
    r"a{2}+": f"possessive quantifiers ({{2}}+) are not supported ({WHY}; drop the last +: RE2 "
    "never backtracks)",
    r"(?(1)a|b)": f"conditionals (?(...)...) are not supported ({WHY}; use an alternation, a|b)",
    # Python's syntax that RE2 spells otherwise, or not at all
    r"ok\Z": rf"\Z is not supported ({WHY}; use \z or $ for the end of the text)",
    r"(?x) ok  # comment": (
        f"verbose mode (?x) is not supported ({WHY}; write the pattern without its spaces and "
        "comments)"
    ),
    r"(?ix)ok": (
        f"verbose mode (?x) is not supported ({WHY}; write the pattern without its spaces and "
        "comments)"
    ),
    r"(?a)\w": f"the flag (?a) is not supported ({WHY}; RE2's flags are i, m, s and U)",
    r"(?#why)ok": f"comments (?#...) are not supported ({WHY}; remove the comment)",
    r"caf\u00e9": rf"\u escapes are not supported ({WHY}; write \x{{...}} with the code point)",
    # counts: RE2 compiles repetitions out, so it bounds them
    r"a{1001}": f"{{1001}}: counts over 1000 are not supported ({WHY}; use + or * instead)",
    r"a{2,1001}": f"{{2,1001}}: counts over 1000 are not supported ({WHY}; use + or * instead)",
    r"(?:a{100}){11}": (
        f"{{11}}: nested repetitions whose counts multiply to over 1000 are not supported "
        f"({WHY}; use + or * instead)"
    ),
    r"(a{1000}){1000}": (
        f"{{1000}}: nested repetitions whose counts multiply to over 1000 are not supported "
        f"({WHY}; use + or * instead)"
    ),
    # RE2 would take these braces as text, where Python read a repetition
    r"a{99999999999}": (
        f"{{99999999999}}: counts over 1000 are not supported ({WHY}; use + or * instead)"
    ),
    r"\d{,3}": f"{{,3}} is not a repetition in RE2, it matches that text ({WHY}; write {{0,3}})",
    r"[[:digit:]]{,}": f"{{,}} is not a repetition in RE2, it matches that text ({WHY}; write *)",
    # too big to compile within MAX_MEM
    r"\pL{1000}": (
        f"the pattern is too large (over 1 MiB compiled) ({WHY}; counted repetitions of large "
        r"classes, such as \pL{500}, are the usual cause)"
    ),
    # plain mistakes, as in any engine
    "(unclosed": "missing )",
    "a)": "unexpected )",
    "[a-": "missing ]",
    "[z-a]": "invalid character class range: 'z-a'",
    r"\e": r"invalid escape sequence: '\e'",
    "a**": "'**' repeats a repetition (to mean that, group the first: (?:...))",
    "a{1000}{1000}": "'{1000}{1000}' repeats a repetition (to mean that, group the first: (?:...))",
    "a{2,1}": "{2,1}: the maximum is below the minimum",
    "(?i": "invalid group or flags: '(?i'",
    "ok\\": "trailing \\",
}


@pytest.mark.parametrize(("pattern", "reason"), list(REFUSED.items()), ids=list(REFUSED))
def test_refused_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(patterns.PatternError) as caught:
        patterns.compile(pattern)
    assert str(caught.value) == f"invalid regular expression '{pattern}': {reason}"


def yaml_single_quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.mark.parametrize(
    ("head", "key"),
    [
        ("workload: w\ntype: http\n", "body_regex"),
        ("workload: w\ntype: exec\ntarget: pg_isready\n", "expect_output_regex"),
    ],
    ids=["body_regex", "expect_output_regex"],
)
@pytest.mark.parametrize(("pattern", "reason"), list(REFUSED.items()), ids=list(REFUSED))
def test_both_keys_refuse_at_their_line(head: str, key: str, pattern: str, reason: str) -> None:
    line = head.count("\n") + 2
    text = f"{head}interval: 10s\n{key}: {yaml_single_quoted(pattern)}\nretries: 2\n"
    cfg, problems = parse_text(text, "w.yaml", "w")
    assert cfg is None
    assert [str(p) for p in problems] == [
        f"w.yaml:{line}: {key}: invalid regular expression '{pattern}': {reason}"
    ]


@pytest.mark.parametrize(
    "pattern",
    [
        r"[{,3}]",  # in a class, braces are characters for both
        r"\{,3}",
        r"\Q{,3}\E",
        r"[]{,3}]",  # a ] first in a class is one of its characters
        r"[[:alpha:]]{2,3}",
        r"a{0,1000}",
        r"(?:a{10}){100}",
        r"a{,3",  # not a repetition for Python either
        "(" * 2000 + ")" * 2000,  # nested deeply (Python's re ran out of stack)
        r"(?i)(?m)(?s)(?U)^ok$",
        r"(?P<name>x)(?<other>y)\x{1F600}\pL\p{Greek}[[:^space:]]\z\A",
    ],
)
def test_re2_syntax_and_what_means_the_same_in_both_compiles(pattern: str) -> None:
    assert patterns.compile(pattern).pattern == pattern


def test_the_pattern_shown_is_cut_short_and_escaped() -> None:
    # an error is world-readable (the API) and lands in logs: never a whole pattern, never a
    # control character (terminal escapes, a forged log line, text written right to left)
    pattern = "\x1b[2J\nfake line\u202e" + "a" * 100 + "("
    with pytest.raises(patterns.PatternError) as caught:
        patterns.compile(pattern)
    assert str(caught.value) == (
        "invalid regular expression '\\x1b[2J\\nfake line\\u202e" + "a" * 25 + "'...: missing ]"
    )
    assert str(caught.value).isprintable()


def test_what_re2_points_at_is_escaped_too() -> None:
    with pytest.raises(patterns.PatternError) as caught:
        patterns.compile("[\x07-\x01]")
    assert str(caught.value) == (
        "invalid regular expression '[\\x07-\\x01]': invalid character class range: '\\x07-\\x01'"
    )


def test_a_pattern_longer_than_the_limit_is_refused_before_it_is_parsed() -> None:
    pattern = "a" * patterns.MAX_CHARS
    assert patterns.compile(pattern).search(pattern)
    with pytest.raises(patterns.PatternError) as caught:
        patterns.compile(pattern + "a")
    assert str(caught.value) == (
        f"invalid regular expression '{'a' * 40}'...: longer than 4096 characters"
    )


def test_a_lone_surrogate_is_refused() -> None:
    # YAML can write one ("\ud800"); RE2 takes UTF-8
    with pytest.raises(patterns.PatternError) as caught:
        patterns.compile("ok\ud800")
    assert str(caught.value) == "invalid regular expression 'ok\\ud800': it is not valid Unicode"


def test_nothing_is_written_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    """RE2 logs its parse errors to fd 2 unless told not to: the daemon's stderr is its log."""
    for pattern in ("(a)\\1", "(unclosed", "\\pL{1000}", "a{1001}"):
        with pytest.raises(patterns.PatternError):
            patterns.compile(pattern)
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


# -- searching -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text", "found"),
    [
        ("ok", "status: ok, db: up", True),  # anywhere, as re.search
        ("^ok", "status: ok", False),
        ("(?i)STATUS: OK", "status: ok", True),
        ("(?m)^db: up$", "status: ok\ndb: up\nqueue: 3\n", True),
        ("^db: up$", "status: ok\ndb: up\nqueue: 3\n", False),
        ("(?s)ok.*up", "ok\nup", True),
        ("ok.*up", "ok\nup", False),
        # $ also before a final newline, as Python's: command output ends with one
        (r"v=\d{2}$", "v=12\n", True),
        ("(?m)accepting connections$", "/tmp:5432 - accepting connections\n", True),
        ("ok$", "ok\n\n", False),  # one newline only, as Python
        ("ok\n$", "ok\n", True),
        (r"ok\z", "ok", True),
        ("^$", "", True),
        # the text is Unicode (bodies are decoded as UTF-8); \d, \w, \s and \b are ASCII
        ("caf.$", "café", True),
        (r"(?i)É", "é", True),
        (r"^\w+$", "café", False),
        (r"\pL+$", "café", True),
        (r"\d", "٣", False),
        ("\ufffd", "a\ufffdb", True),  # what undecodable bytes became
        ("\x00", "a\x00b", True),
    ],
)
def test_search(pattern: str, text: str, found: bool) -> None:
    assert patterns.compile(pattern).search(text) is found


def test_patterns_are_equal_by_their_text() -> None:
    # a reload compares the old config with the new: an unchanged one keeps its workload
    first, again, other = (patterns.compile(p) for p in ("^ok$", "^ok$", "^OK$"))
    assert first == again
    assert hash(first) == hash(again)
    assert first != other
    assert first != "^ok$"
    assert repr(first) == "Pattern('^ok$')"


def test_a_backtracking_pattern_is_searched_in_linear_time() -> None:
    """The attack: ``^(a|aa)+$`` on a run of a's that does not end the way it must. Python's
    re takes exponential time (and holds the GIL, so only another process can time it)."""
    code = (
        "import time; from healthd.checks import patterns\n"
        "p = patterns.compile('^(a|aa)+$')\n"
        "start = time.monotonic()\n"
        "for n in (64, 10240, 4096):\n"
        "    assert not p.search('a' * n + '!')\n"
        "print(time.monotonic() - start)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert float(done.stdout) < 0.5, done.stdout
