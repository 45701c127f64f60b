"""A real HTTP receiver for webhook tests and the benchmark: `http.server` on a loopback port in a
thread, recording every request (path, headers, body, the status it answered) in arrival order.

It answers 500 to its first `fail_first` requests and 200 after. With `hold_first`, the first
request waits (at most `hold_s`) until `release()` before it is answered: a sender killed while
posting it never hears back. With `gate`, every request that arrives before `release()` waits
so (the benchmark builds a backlog that way).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    def __init__(
        self,
        fail_first: int = 0,
        hold_first: bool = False,
        hold_s: float = 30.0,
        gate: bool = False,
    ) -> None:
        self.fail_first = fail_first
        self.hold_first = hold_first
        self.gate = gate
        self.hold_s = hold_s
        self.received: list[Received] = []
        self.held = threading.Event()  # the held request arrived
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def release(self) -> None:
        self._release.set()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def ok_ids(self, path: str | None = None) -> list[str]:
        """The `webhook-id` of each request answered 2xx, in arrival order."""
        return [
            r.headers["webhook-id"]
            for r in self.snapshot()
            if r.status == 200 and path in (None, r.path)
        ]

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            n = len(self.received)
            hold = (self.hold_first and n == 0) or (
                self.gate and not self._release.is_set()
            )
            status = 500 if n < self.fail_first else 200
            if not hold:
                self.received.append(Received(path, headers, body, status))
        if hold:
            self.held.set()
            self._release.wait(self.hold_s)
            with self._lock:
                self.received.append(Received(path, headers, body, status))
        return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer(self.path, headers, body)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed while waiting)

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler
