"""healthd.systemd: which environments make a notifier, and what they are left with."""

from __future__ import annotations

import io
import os
import socket
import tempfile
from pathlib import Path

from healthd.logs import make_logger
from healthd.systemd import SystemdNotifier, socket_address, watchdog_interval


def test_socket_address_paths_abstract_names_and_what_is_not_spoken() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify/1") == (
        "\0/org/freedesktop/systemd1/notify/1"
    )
    assert socket_address("@") is None
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/notify") is None


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only() -> None:
    pid = 4242
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "4242"}, pid) == 0.2
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "x"}, pid) is None
    for usec in ("", "0", "-5", "1e6", "٤٠٠"):
        assert watchdog_interval({"WATCHDOG_USEC": usec}, pid) is None, usec


def test_without_notify_socket_nothing_is_made_and_the_environment_is_left_alone() -> None:
    stream = io.StringIO()
    env = {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    assert SystemdNotifier.from_environment(make_logger(stream), env) is None
    assert env == {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    assert stream.getvalue() == ""


def test_the_variables_are_taken_out_of_the_environment_once_read() -> None:
    env = {
        "NOTIFY_SOCKET": "@x",
        "WATCHDOG_USEC": "400000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/bin",
    }
    notifier = SystemdNotifier.from_environment(make_logger(io.StringIO()), env)
    assert notifier is not None
    assert (notifier.address, notifier.watchdog) == ("\0x", 0.2)
    assert env == {"PATH": "/bin"}


def test_an_unsupported_address_is_said_once_and_sends_nothing() -> None:
    stream = io.StringIO()
    env = {"NOTIFY_SOCKET": "vsock:2:999"}
    assert SystemdNotifier.from_environment(make_logger(stream), env) is None
    assert "event=systemd_notify_unsupported" in stream.getvalue()
    assert "notify_socket=vsock:2:999" in stream.getvalue()


def test_one_datagram_per_message_and_a_gone_manager_is_logged_once() -> None:
    stream = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="hd-sd-") as directory:
        path = str(Path(directory) / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
            manager.bind(path)
            notifier = SystemdNotifier(path, make_logger(stream))
            notifier.ready("monitoring 3 workloads")
            notifier.pet()
            assert manager.recv(4096) == b"READY=1\nSTATUS=monitoring 3 workloads"
            assert manager.recv(4096) == b"WATCHDOG=1"
        os.unlink(path)  # the manager went away
        assert notifier.send("WATCHDOG=1") is False
        assert notifier.send("WATCHDOG=1") is False
        notifier.close()
    lines = [line for line in stream.getvalue().splitlines() if "systemd_notify_failed" in line]
    assert len(lines) == 1, stream.getvalue()
    assert "No such file or directory" in lines[0]
