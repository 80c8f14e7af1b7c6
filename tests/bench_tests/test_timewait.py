"""bench.timewait: counting TIME-WAIT sockets, against tables written here and real sockets."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bench.timewait import (
    HostTcpLimits,
    TimeWaitCount,
    TimeWaitSampler,
    count_time_wait,
    host_tcp_limits,
    proc_hex,
)

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)
REST = "00000000:00000000 03:000016A8 00000000     0        0 0 3 0000000000000000\n"


def row(sl: int, local: tuple[str, int], remote: tuple[str, int], state: str) -> str:
    (la, lp), (ra, rp) = local, remote
    return (
        f"{sl:4d}: {proc_hex(la).decode()}:{lp:04X} {proc_hex(ra).decode()}:{rp:04X} {state} {REST}"
    )


def test_counts_time_wait_rows_by_side(tmp_path: Path) -> None:
    target = ("127.0.0.1", 8443)
    mapped = ("::ffff:127.0.0.1", 8443)
    tcp = tmp_path / "tcp"
    tcp.write_text(
        HEADER
        + row(0, target, ("0.0.0.0", 0), "0A")  # the listener
        + row(1, ("127.0.0.1", 40000), target, "06")  # a checker's socket
        + row(2, ("127.0.0.1", 40001), target, "06")
        + row(3, ("127.0.0.1", 40002), target, "01")  # established: not counted
        + row(4, target, ("127.0.0.1", 40003), "06")  # the target's socket
        + row(5, ("127.0.0.1", 50000), ("127.0.0.1", 9000), "06")  # someone else's
        + row(12345, ("127.0.0.2", 40004), ("127.0.0.2", 8443), "06")  # same port, not ours
    )
    tcp6 = tmp_path / "tcp6"
    tcp6.write_text(
        HEADER
        + row(0, ("::ffff:127.0.0.1", 40005), mapped, "06")  # a dual-stack client
        + row(1, mapped, ("::ffff:127.0.0.1", 40006), "06")
        + row(2, ("::1", 40007), ("::1", 8443), "06")  # IPv6 loopback: another address
    )
    tables = [tcp, tcp6, tmp_path / "missing"]
    assert count_time_wait("127.0.0.1", 8443, tables) == TimeWaitCount(host=8, client=3, server=2)
    assert count_time_wait("::1", 8443, tables) == TimeWaitCount(host=8, client=1, server=0)
    assert count_time_wait("127.0.0.1", 9000, tables) == TimeWaitCount(8, 1, 0)


def test_proc_hex_matches_the_kernel_on_this_host() -> None:
    # the kernel prints each 32-bit word as a number in host order: 127.0.0.1 is 0100007F on x86
    expected = b"0100007F" if struct.pack("=I", 1) == b"\x01\x00\x00\x00" else b"7F000001"
    assert proc_hex("127.0.0.1") == expected
    assert proc_hex("::ffff:127.0.0.1").endswith(expected)
    assert len(proc_hex("::1")) == 32


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


def eventually_equal(probe: Callable[[], object], expected: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := probe()) != expected:
        assert time.monotonic() < deadline, f"{got} != {expected}"
        time.sleep(0.02)


def close_pair(first: socket.socket, second: socket.socket) -> None:
    """Close ``first`` (which then holds TIME-WAIT), then ``second`` once it read the FIN."""
    first.close()
    second.settimeout(5)
    assert second.recv(1) == b""
    second.close()


def test_counts_real_sockets_in_time_wait(listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    def ours() -> tuple[int, int]:
        count = count_time_wait("127.0.0.1", port)
        assert count.host >= count.client + count.server
        return count.client, count.server

    assert ours() == (0, 0)

    for _ in range(3):  # the checker closes first: its socket waits
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        close_pair(client, server)
    eventually_equal(ours, (3, 0))

    for _ in range(2):  # the server closes first: the target's socket waits
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        close_pair(server, client)
    eventually_equal(ours, (3, 2))

    # what healthd does: SO_LINGER 0 resets the connection, and nothing waits on either end
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    server.settimeout(5)
    with pytest.raises(ConnectionResetError):
        server.recv(1)
    server.close()
    time.sleep(0.1)
    assert ours() == (3, 2)


def test_counts_a_dual_stack_client_in_tcp6(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    try:
        client = socket.socket(socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 sockets here: {exc}")
    client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    client.connect(("::ffff:127.0.0.1", port))
    server, _ = listener.accept()
    close_pair(client, server)
    eventually_equal(lambda: count_time_wait("127.0.0.1", port).client, 1)
    only_v4 = count_time_wait("127.0.0.1", port, [Path("/proc/net/tcp")])
    assert only_v4.client == 0  # it was found in tcp6


def test_sampler_keeps_each_peak_and_the_last_sample(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    target = ("127.0.0.1", 443)

    def write(clients: int, servers: int, others: int) -> None:
        rows = [row(i, ("127.0.0.1", 40000 + i), target, "06") for i in range(clients)]
        rows += [row(i, target, ("127.0.0.1", 41000 + i), "06") for i in range(servers)]
        rows += [row(i, ("127.0.0.1", 42000 + i), ("127.0.0.1", 1), "06") for i in range(others)]
        table.write_text(HEADER + "".join(rows))

    sampler = TimeWaitSampler("127.0.0.1", 443, period=3600, tables=[table])
    assert (sampler.peak, sampler.last, sampler.read_ms) == (None, None, None)
    write(5, 0, 1)
    sampler.maybe_sample()  # the first is due at once
    write(1, 4, 0)
    sampler.maybe_sample()  # not due for an hour
    assert sampler.samples == 1
    sampler.sample()
    assert sampler.samples == 2
    assert sampler.last == TimeWaitCount(5, 1, 4)
    assert sampler.peak == TimeWaitCount(6, 5, 4)
    assert sampler.read_ms is not None
    assert sampler.read_ms >= 0


def test_sampler_spaces_out_samples_that_cost_too_much(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(HEADER + row(0, ("127.0.0.1", 40000), ("127.0.0.1", 443), "06"))
    frugal = TimeWaitSampler("127.0.0.1", 443, period=0, max_share=1e-9, tables=[table])
    frugal.sample()
    time.sleep(0.05)
    frugal.maybe_sample()  # its cost over a billionth of a core: not due for a long while
    assert frugal.samples == 1

    eager = TimeWaitSampler("127.0.0.1", 443, period=0, max_share=0.5, tables=[table])
    eager.sample()
    time.sleep(2 * eager.read_seconds + 0.01)  # twice what the sample cost: due
    eager.maybe_sample()
    assert eager.samples == 2


def test_host_tcp_limits(tmp_path: Path) -> None:
    (tmp_path / "ip_local_port_range").write_text("32768\t60999\n")
    (tmp_path / "tcp_max_tw_buckets").write_text("262144\n")
    limits = host_tcp_limits(tmp_path)  # tcp_tw_reuse missing: unknown
    assert limits == HostTcpLimits((32768, 60999), 262144, None)
    assert limits.local_ports == 28232
    assert limits.describe() == (
        "local ports 28232 (32768-60999), tcp_max_tw_buckets 262144, tcp_tw_reuse ?"
    )
    here = host_tcp_limits()  # this machine's, which Linux always has
    assert here.local_ports is not None
    assert here.local_ports > 0
    assert here.max_tw_buckets is not None
