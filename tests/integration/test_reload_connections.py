"""A reload that replaces a workload releases what its old probe kept open (``keep_alive``).

The server keeps every connection open for as long as the client does, and counts the ones
still open: each reload that changes the workload must leave one open connection, not one more.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import threading

from .harness import DaemonProc, wait_for, write

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class KeepAliveServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.open_connections = 0
        self.accepted = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(socketserver.BaseRequestHandler):
    server: KeepAliveServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.open_connections += 1
            self.server.accepted += 1
        conn: socket.socket = self.request
        buffered = b""
        try:
            while chunk := conn.recv(4096):  # answers requests until the client closes
                buffered += chunk
                while b"\r\n\r\n" in buffered:
                    _, buffered = buffered.split(b"\r\n\r\n", 1)
                    conn.sendall(ANSWER)
        except OSError:
            pass
        finally:
            with self.server.lock:
                self.server.open_connections -= 1


def test_reloads_that_change_a_workload_do_not_pile_up_kept_connections(
    daemon: DaemonProc,
) -> None:
    server = KeepAliveServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        write(daemon, "web", "http", host="127.0.0.1", port=server.port, target="/a",
              keep_alive=True)  # fmt: skip
        daemon.start("--no-watch")
        wait_for("the first check", lambda: (daemon.status("web") or {}).get("total_checks"))
        for n in range(5):
            write(daemon, "web", "http", host="127.0.0.1", port=server.port, target=f"/r{n}",
                  keep_alive=True)  # fmt: skip
            accepted = server.accepted
            os.kill(daemon.pid, signal.SIGHUP)

            def reconnected(before: int = accepted) -> bool:
                return server.accepted > before

            # the new probe has connected: the reload is done and the old probe retired
            wait_for(f"reload {n}", reconnected, detail=daemon.log)
        wait_for(
            "one open connection",
            lambda: server.open_connections == 1,
            detail=lambda: f"{server.open_connections} open after 5 reloads\n{daemon.log()}",
        )
        assert daemon.terminate() == 0, daemon.log()
    finally:
        server.shutdown()
        server.server_close()
