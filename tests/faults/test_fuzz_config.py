"""Fuzzing the config parsers and Go-duration syntax (hypothesis).

Properties: the parsers never raise anything but their documented errors; a refused input gets
``Problem``s with a line; a valid workload config survives ``to_yaml_mapping`` and a reload
unchanged. Durations are checked against Go itself: a small Go program running the real
``time.ParseDuration`` and ``Duration.String`` is the oracle, so "Go semantics" is not our guess.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from healthd.config import editor
from healthd.config.daemon_file import DaemonFile, parse_daemon_file
from healthd.config.loader import parse_text
from healthd.config.workload import FIELDS, WorkloadConfig
from healthd.durations import format_ns, format_seconds, parse_ns, parse_seconds
from healthd.errors import ConfigError, DurationError

GO_MIN_NS, GO_MAX_NS = -(1 << 63), (1 << 63) - 1
FAST = settings(max_examples=300, deadline=None)
ORACLE_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Reads lines "P<hex of UTF-8>" (parse) or "F<int>" (format); answers one line each.
ORACLE_GO = """package main

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<22), 1<<22)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		line := in.Text()
		if line[0] == 'F' {
			n, _ := strconv.ParseInt(line[1:], 10, 64)
			fmt.Fprintln(out, time.Duration(n).String())
		} else if s, err := hex.DecodeString(line[1:]); err != nil {
			fmt.Fprintln(out, "bad", err)
		} else if d, err := time.ParseDuration(string(s)); err != nil {
			fmt.Fprintln(out, "err")
		} else {
			fmt.Fprintln(out, "ok", int64(d))
		}
		out.Flush()
	}
}
"""


class GoOracle:
    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().rstrip("\n")

    def parse(self, text: str) -> int | None:
        answer = self._ask("P" + text.encode().hex()).split()
        assert answer[0] in ("ok", "err"), answer
        return int(answer[1]) if answer[0] == "ok" else None

    def format(self, ns: int) -> str:
        return self._ask(f"F{ns}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


_built: dict[str, Path] = {}


@pytest.fixture
def go(
    require_binary: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GoOracle]:
    go_bin = require_binary("go")
    if "oracle" not in _built:
        src = tmp_path_factory.mktemp("go-oracle")
        (src / "main.go").write_text(ORACLE_GO)
        env = {**os.environ, "GOCACHE": str(src / "cache")}
        env.setdefault("HOME", str(src))
        subprocess.run(
            [go_bin, "build", "-o", str(src / "oracle"), "main.go"],
            cwd=src,
            env=env,
            check=True,
            timeout=120,
        )
        _built["oracle"] = src / "oracle"
    oracle = GoOracle(_built["oracle"])
    yield oracle
    oracle.close()


# -- durations ----------------------------------------------------------------------------------

UNITS = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
_digits = st.text("0123456789", max_size=22)
_term = st.builds(
    lambda whole, dot, frac, unit: whole + (f".{frac}" if dot else "") + unit,
    _digits,
    st.booleans(),
    _digits,
    st.sampled_from([*UNITS, "x", "S", "sec", " s", ""]),
)
# Mostly Go-shaped strings (signs, zero padding, fractions, every unit, overflow), plus noise.
GO_SHAPED = st.builds(
    lambda sign, terms: sign + "".join(terms),
    st.sampled_from(["", "-", "+", " ", "--"]),
    st.lists(_term, min_size=0, max_size=4),
)
NOISE = st.text(alphabet=st.sampled_from(list("0123456789.+-smhnuµμ \t١٢²\x00")), max_size=14)


@ORACLE_SETTINGS
@given(st.one_of(GO_SHAPED, NOISE, st.text(max_size=12)))
@example(" 30s")  # Go does not trim: a quoted " 30s" in a file must fail as in the reference
@example("١٢s")  # Arabic-Indic digits: Python's \d and int() take them, Go does not
@example("0." + "3" * 40 + "h")  # Go drops fraction digits beyond int64 and rounds via float64
@example("2562047h47m16.854775807s")
@example("-2562047h47m16.854775808s")
@example("2562047h47m16.854775808s")
def test_parse_ns_accepts_exactly_what_go_accepts(go: GoOracle, text: str) -> None:
    try:
        ours: int | None = parse_ns(text)
    except DurationError:
        ours = None
    assert ours == go.parse(text), text


@ORACLE_SETTINGS
@given(st.integers(min_value=GO_MIN_NS, max_value=GO_MAX_NS))
@example(GO_MIN_NS)
@example(GO_MAX_NS)
def test_format_ns_prints_what_go_prints(go: GoOracle, ns: int) -> None:
    assert format_ns(ns) == go.format(ns)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1" + "0" * 5000 + "s", None),  # int() refuses 4300+ digits with a bare ValueError
        ("0." + "1" * 5000 + "s", 111_111_111),  # Go ignores the digits beyond int64
        ("0" * 100_000 + "1s", 1_000_000_000),
        ("1s" * 50_000, 50_000 * 1_000_000_000),
    ],
    ids=["5000-digit-integer", "5000-digit-fraction", "100000-leading-zeros", "50000-terms"],
)
def test_huge_duration_strings_parse_as_go_or_fail_cleanly(text: str, expected: int | None) -> None:
    # Only DurationError may come out (the loaders catch that, not ValueError), and fast;
    # its message shows the start of the text, not a megabyte of it.
    if expected is not None:
        assert parse_ns(text) == expected
        return
    with pytest.raises(DurationError) as info:
        parse_ns(text)
    assert str(info.value) == (
        f"invalid duration '{text[:48]}'... ({len(text)} characters): "
        "out of range (more than ~292 years)"
    )


@FAST
@given(st.text(max_size=40))
def test_parse_never_raises_anything_but_duration_error(text: str) -> None:
    try:
        value = parse_ns(text)
    except DurationError:
        return
    assert GO_MIN_NS <= value <= GO_MAX_NS
    assert parse_ns(format_ns(value)) == value


@FAST
@given(st.integers(min_value=GO_MIN_NS, max_value=GO_MAX_NS))
def test_format_then_parse_round_trips_over_the_whole_int64_range(ns: int) -> None:
    assert parse_ns(format_ns(ns)) == ns


@FAST
@given(st.integers(min_value=0, max_value=10**15))  # ~11 days in ns: float seconds are exact
def test_seconds_round_trip_through_the_go_text(ns: int) -> None:
    seconds = ns / 1e9
    assert parse_seconds(format_seconds(seconds)) == seconds


# -- workload files -----------------------------------------------------------------------------


def yaml_line_count(text: str) -> int:
    """Lines as YAML numbers them: it breaks at \\r\\n, \\r, \\n, NEL, LS and PS."""
    return len(re.split("\r\n|[\r\n\x85\u2028\u2029]", text))


def _assert_problems_have_lines(problems: list[Any], text: str) -> None:
    assert problems
    n_lines = yaml_line_count(text)
    for p in problems:
        assert p.file == "w.yaml"
        assert 1 <= p.line <= n_lines + 1, (p, text)
        assert p.reason


@FAST
@given(st.text(max_size=300))
@example("workload: w\ntype: exec\ntarget: x\ninterval: " + "9" * 5000 + "s\n")
@example("\x00")
@example("0:\r0")  # a lone CR is a line break to YAML: the error is on line 3
@example("a: &a [1]\nb: *a\n")
def test_parse_text_on_arbitrary_text(text: str) -> None:
    cfg, problems = parse_text(text, "w.yaml", "w")
    if cfg is None:
        _assert_problems_have_lines(problems, text)
    else:
        assert problems == []
        assert cfg.workload == "w"


DURATIONS = st.one_of(
    st.integers(min_value=1, max_value=10**13).map(format_ns), st.just("30s"), GO_SHAPED
)
NAMES = st.one_of(
    st.just("w"),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,20}", fullmatch=True),
    st.text(max_size=10),
)
WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "workload": NAMES,
    "type": st.sampled_from(["http", "tcp", "exec", "grpc"]),
    "target": st.one_of(st.just("/healthz"), st.just("true"), st.text(max_size=20)),
    "port": st.one_of(st.integers(min_value=-5, max_value=70000), st.just("53:53")),
    "interval": DURATIONS,
    "timeout": DURATIONS,
    "retries": st.integers(min_value=-2, max_value=10),
    "auto_restart": st.one_of(st.booleans(), st.sampled_from(["yes", "off", "y", "maybe"])),
    "max_restarts": st.integers(min_value=-2, max_value=10),
    "restart_delay": DURATIONS,
    "enabled": st.booleans(),
    "host": st.one_of(st.just("127.0.0.1"), st.text(max_size=12)),
    "restart_command": st.one_of(
        st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3), st.just("x")
    ),
}


@st.composite
def workload_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A mapping of real field names (the current FIELDS, whatever other work adds) to values
    that are mostly plausible and sometimes anything; keys are sometimes misspelled."""
    keys = draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=len(FIELDS)))
    doc: dict[str, Any] = {"workload": "w", "type": draw(VALUES["type"])}
    for key in keys:
        strategy = VALUES.get(key, WEIRD)
        doc[key] = draw(st.one_of(strategy, WEIRD) if draw(st.integers(0, 9)) == 0 else strategy)
    if draw(st.integers(0, 19)) == 0:
        doc[draw(st.sampled_from(["intreval", "Type", "ports"]))] = 1
    return doc


@settings(max_examples=400, deadline=None)
@given(workload_documents())
def test_structured_workload_files_round_trip_or_name_their_problems(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    cfg, problems = parse_text(text, "w.yaml", "w")
    if cfg is None:
        _assert_problems_have_lines(problems, text)
        return
    assert problems == []
    assert_round_trips(cfg)


def assert_round_trips(cfg: WorkloadConfig) -> None:
    again_text = editor.render(cfg)  # as healthd add writes it
    again, problems = parse_text(again_text, "w.yaml", cfg.workload)
    assert problems == []
    assert again == cfg


ARG_CHARS = st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])
VALID = st.fixed_dictionaries(
    {
        "workload": st.one_of(
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,20}", fullmatch=True), st.just("w" * 128)
        ),
        "interval": st.integers(min_value=1, max_value=10**15).map(lambda ns: ns / 1e9),
        "timeout": st.integers(min_value=1, max_value=10**15).map(lambda ns: ns / 1e9),
        "restart_delay": st.integers(min_value=1, max_value=10**15).map(lambda ns: ns / 1e9),
        "retries": st.integers(min_value=1, max_value=100),
        "max_restarts": st.integers(min_value=0, max_value=100),
        "auto_restart": st.booleans(),
        "enabled": st.booleans(),
        "host": st.one_of(st.none(), st.from_regex(r"[a-z0-9.:-]{1,20}", fullmatch=True)),
        "restart_command": st.one_of(
            st.none(), st.lists(st.text(ARG_CHARS, min_size=1, max_size=10), min_size=1, max_size=4)
        ),
    }
)
KIND_FIELDS = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("http"),
            "target": st.from_regex(r"/[!-~]{0,20}", fullmatch=True),
            "port": st.integers(1, 65535),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("tcp"),
            "target": st.text(ARG_CHARS, max_size=10),
            "port": st.integers(1, 65535),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("exec"), "target": st.from_regex(r"[a-z][ -~]{0,20}", fullmatch=True)}
    ),
)


@settings(max_examples=300, deadline=None)
@given(VALID, KIND_FIELDS)
def test_valid_configs_round_trip_through_to_yaml_mapping(
    base: dict[str, Any], kind: dict[str, Any]
) -> None:
    values = {**base, **kind}
    if values["restart_command"] is not None:
        values["restart_command"] = tuple(values["restart_command"])
        if not values["restart_command"][0].strip():
            values["restart_command"] = ("/bin/true", *values["restart_command"])
    cfg = WorkloadConfig(**values)
    # What healthd writes (healthd add): PyYAML's own safe_dump folds a lone NEL into a space.
    text = editor.render(cfg)
    loaded, problems = parse_text(text, "w.yaml", cfg.workload)
    assert problems == [], (problems, text)
    assert loaded == cfg


# -- the daemon config file ---------------------------------------------------------------------


def _daemon_file(text: str) -> DaemonFile | list[Any]:
    try:
        return parse_daemon_file(text, Path("/etc/volt/healthd.yaml"))
    except ConfigError as exc:
        problems = exc.problems
    assert problems
    n_lines = yaml_line_count(text)
    for p in problems:
        assert p.file == "/etc/volt/healthd.yaml"
        assert 1 <= p.line <= n_lines + 1, (p, text)
        assert p.reason
    return problems


@FAST
@given(st.text(max_size=300))
@example("\x00")
@example("api: {listen: '127.0.0.1:٨٠'}")
@example("events: {max_age: " + "9" * 5000 + "h}")
def test_daemon_file_on_arbitrary_text(text: str) -> None:
    _daemon_file(text)


SINK = st.fixed_dictionaries(
    {
        "name": st.one_of(st.just("ops"), st.text(max_size=8)),
        "type": st.sampled_from(["webhook", "command", "alertmanager", "smtp"]),
    },
    optional={
        "url": st.one_of(st.just("http://127.0.0.1:1/hook"), st.text(max_size=20)),
        "headers": st.one_of(
            st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2), WEIRD
        ),
        "secret_file": st.one_of(st.just("/etc/x"), st.text(max_size=8)),
        "command": st.one_of(st.lists(st.text(max_size=6), max_size=3), WEIRD),
        "events": st.one_of(st.lists(st.sampled_from(["unhealthy", "healthy", "boom"])), WEIRD),
        "workloads": st.one_of(st.lists(st.text(max_size=5), max_size=2), WEIRD),
        "timeout": st.one_of(DURATIONS, WEIRD),
        "max_age": st.one_of(DURATIONS, WEIRD),
        "min_interval": st.one_of(DURATIONS, WEIRD),
        "repeat_interval": st.one_of(DURATIONS, WEIRD),
        "severity": WEIRD,
        "resend_interval": st.one_of(DURATIONS, WEIRD),
    },
)
DAEMON_DOC = st.fixed_dictionaries(
    {},
    optional={
        "api": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "listen": st.one_of(st.just("127.0.0.1:0"), st.just("[::1]:80"), WEIRD),
                    "socket": st.one_of(st.just("/run/h.sock"), WEIRD),
                    "token_file": st.one_of(st.just("/etc/t"), WEIRD),
                    "tokenfile": WEIRD,
                },
            ),
            WEIRD,
        ),
        "events": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "max_age": st.one_of(DURATIONS, WEIRD),
                    "max_count": st.one_of(st.integers(), WEIRD),
                },
            ),
            WEIRD,
        ),
        "sinks": st.one_of(st.lists(SINK, max_size=3), WEIRD),
        "sink": WEIRD,
    },
)


@settings(max_examples=300, deadline=None)
@given(DAEMON_DOC)
def test_structured_daemon_files_load_or_name_their_problems(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    result = _daemon_file(text)
    if isinstance(result, DaemonFile):
        names = [s.name for s in result.sinks]
        assert len(names) == len(set(names))
        for sink in result.sinks:
            assert sink.timeout > 0
            assert sink.max_age > 0
            assert sink.min_interval >= 0
            assert sink.repeat_interval >= 0
