"""statuses.json: the reference's JSON shape written and read, atomically and leniently."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from healthd.errors import StatusFileError
from healthd.model import State, WorkloadStatus
from healthd.store.status import FILENAME, StatusStore, decode, encode

T0 = datetime(2026, 11, 28, 3, 2, 47, tzinfo=UTC)

# Exactly what the reference's json.MarshalIndent(statuses, "", " ") writes: Go field names,
# RFC 3339 with nanoseconds or an offset, the zero time for "never", no healthd fields.
GO_STATUSES = """[
 {
  "workload": "web",
  "healthy": true,
  "last_check": "2026-11-28T03:02:47.123456789Z",
  "last_healthy": "2026-11-28T03:02:47.123456789Z",
  "consecutive_fails": 0,
  "total_checks": 120,
  "total_fails": 4,
  "restart_count": 1,
  "last_restart": "2026-11-28T05:00:00.5+02:00"
 },
 {
  "workload": "db",
  "healthy": false,
  "last_check": "2026-11-28T03:02:40Z",
  "last_healthy": "0001-01-01T00:00:00Z",
  "consecutive_fails": 7,
  "total_checks": 7,
  "total_fails": 7,
  "restart_count": 0,
  "last_error": "TCP check failed: 10.0.0.5:5432: connection refused",
  "last_restart": "0001-01-01T00:00:00Z"
 },
 {
  "workload": "new",
  "healthy": false,
  "last_check": "0001-01-01T00:00:00Z",
  "last_healthy": "0001-01-01T00:00:00Z",
  "consecutive_fails": 0,
  "total_checks": 0,
  "total_fails": 0,
  "restart_count": 0,
  "last_restart": "0001-01-01T00:00:00Z"
 }
]"""


def test_encode_uses_go_field_names_types_and_zero_time() -> None:
    status = WorkloadStatus(workload="db", total_checks=3, total_fails=3, consecutive_fails=3)
    status.last_check = T0
    entries = json.loads(encode([status]))
    assert entries == [
        {
            "workload": "db",
            "healthy": False,
            "last_check": "2026-11-28T03:02:47Z",
            "last_healthy": "0001-01-01T00:00:00Z",
            "consecutive_fails": 3,
            "total_checks": 3,
            "total_fails": 3,
            "restart_count": 0,
            "last_restart": "0001-01-01T00:00:00Z",
            "state": "starting",
            "address": "",
            "address_source": "",
            "restart_failures": 0,
        }
    ]
    assert "last_error" not in entries[0]  # omitempty, as the reference


def test_encode_full_status_in_reference_field_order_then_ours() -> None:
    status = WorkloadStatus(
        workload="web",
        healthy=True,
        last_check=T0,
        last_healthy=T0 - timedelta(seconds=30),
        consecutive_fails=1,
        total_checks=10,
        total_fails=2,
        restart_count=1,
        last_error="HTTP 503",
        last_restart=datetime(2026, 11, 28, 5, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2))),
        state=State.HEALTHY,
        address="10.0.0.7",
        address_source="docker",
        restart_failures=2,
        last_restart_error="exit status 1",
        last_check_duration=0.0123456789,
    )
    (entry,) = json.loads(encode([status]))
    assert list(entry) == [
        "workload",
        "healthy",
        "last_check",
        "last_healthy",
        "consecutive_fails",
        "total_checks",
        "total_fails",
        "restart_count",
        "last_error",
        "last_restart",
        "state",
        "address",
        "address_source",
        "restart_failures",
        "last_restart_error",
        "last_check_duration_seconds",
    ]
    assert entry["healthy"] is True
    assert entry["last_healthy"] == "2026-11-28T03:02:17Z"
    assert entry["last_restart"] == "2026-11-28T03:00:00.500000Z"  # converted to UTC
    assert entry["last_error"] == "HTTP 503"
    assert entry["last_check_duration_seconds"] == 0.012346
    for name in ("consecutive_fails", "total_checks", "total_fails", "restart_count"):
        assert type(entry[name]) is int


def test_encode_sorts_by_workload_and_ends_with_newline() -> None:
    data = encode([WorkloadStatus("b"), WorkloadStatus("a"), WorkloadStatus("c")])
    assert [e["workload"] for e in json.loads(data)] == ["a", "b", "c"]
    assert data.endswith(b"]\n")


def test_encode_empty_is_an_empty_array() -> None:
    assert json.loads(encode([])) == []


def test_decode_reads_what_the_reference_writes() -> None:
    statuses = decode(GO_STATUSES.encode())
    assert list(statuses) == ["web", "db", "new"]
    web, db, new = statuses["web"], statuses["db"], statuses["new"]

    assert (web.healthy, web.state) == (True, State.HEALTHY)
    assert web.last_check == datetime(2026, 11, 28, 3, 2, 47, 123456, tzinfo=UTC)
    assert web.last_healthy == web.last_check
    assert web.last_restart == datetime(2026, 11, 28, 3, 0, 0, 500000, tzinfo=UTC)
    assert (web.total_checks, web.total_fails, web.restart_count) == (120, 4, 1)
    assert web.last_error == ""

    assert (db.healthy, db.state) == (False, State.UNHEALTHY)
    assert db.last_check == datetime(2026, 11, 28, 3, 2, 40, tzinfo=UTC)
    assert (db.last_healthy, db.last_restart) == (None, None)
    assert db.consecutive_fails == 7
    assert db.last_error == "TCP check failed: 10.0.0.5:5432: connection refused"

    assert new.state is State.STARTING  # never checked: no verdict to carry over
    assert (new.last_check, new.last_healthy, new.last_restart) == (None, None, None)
    # fields the reference does not have keep their defaults
    assert (web.address, web.restart_failures, web.last_check_duration) == ("", 0, None)


def test_decode_reads_our_own_state_back() -> None:
    status = WorkloadStatus("web", healthy=False, total_checks=5, state=State.GAVE_UP)
    status.last_check_duration = 0.25
    (back,) = decode(encode([status])).values()
    assert back == status


def test_decode_null_is_empty() -> None:
    assert decode(b"null") == {}
    assert decode(b"null\n") == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'[{"workload": "web"', "not valid JSON: "),
        (b"", "not valid JSON: "),
        (b"\xff\xfe[]", "not valid JSON: "),
        (b'{"workload": "web"}', "expected a JSON array of statuses"),
        (b'"statuses"', "expected a JSON array of statuses"),
    ],
)
def test_decode_garbage_raises_status_file_error(data: bytes, message: str) -> None:
    with pytest.raises(StatusFileError) as info:
        decode(data)
    assert str(info.value).startswith(message)


def test_decode_is_lenient_per_field_and_per_entry() -> None:
    data = json.dumps(
        [
            {"workload": "web", "total_checks": "many", "healthy": "yes", "restart_count": -1},
            {"workload": 7},
            "not an object",
            {"workload": "db", "last_check": "yesterday", "total_fails": True, "state": "odd"},
        ]
    ).encode()
    statuses = decode(data)
    assert list(statuses) == ["web", "db"]
    assert statuses["web"] == WorkloadStatus("web")
    assert statuses["db"] == WorkloadStatus("db")


def test_store_read_missing_file_is_empty(tmp_path: Path) -> None:
    assert StatusStore(tmp_path / "state").read() == {}


def test_store_write_then_read_round_trips(tmp_path: Path) -> None:
    store = StatusStore(tmp_path / "state")
    statuses = [
        WorkloadStatus("web", True, T0, T0, 0, 12, 1, 2, "", T0, State.HEALTHY, "10.0.0.7"),
        WorkloadStatus("db", False, T0, None, 4, 4, 4, 0, "refused", None, State.UNHEALTHY),
    ]
    store.write(statuses)
    assert store.path == tmp_path / "state" / FILENAME
    assert store.read() == {s.workload: s for s in statuses}


def test_store_write_leaves_no_temp_files(tmp_path: Path) -> None:
    store = StatusStore(tmp_path)
    store.write([WorkloadStatus("web")])
    store.write([WorkloadStatus("web"), WorkloadStatus("db")])
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]
    assert list(store.read()) == ["db", "web"]


def test_store_read_garbage_names_the_file(tmp_path: Path) -> None:
    store = StatusStore(tmp_path)
    store.path.write_text("{not json")
    with pytest.raises(StatusFileError) as info:
        store.read()
    assert str(info.value).startswith(f"{store.path}: not valid JSON: ")


def test_quarantine_moves_the_bad_file_aside(tmp_path: Path) -> None:
    store = StatusStore(tmp_path)
    store.path.write_text("{not json")
    aside = store.quarantine()
    assert aside.parent == tmp_path
    assert aside.name.startswith(f"{FILENAME}.corrupt-")
    assert aside.read_text() == "{not json"
    assert not store.path.exists()
    assert store.read() == {}
    store.write([WorkloadStatus("web")])
    assert list(store.read()) == ["web"]
