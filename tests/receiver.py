"""A real HTTP webhook receiver on 127.0.0.1 for the tests: records every
request, answers what the test tells it to."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: it never answered)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def notification(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


# Given the request (headers, body) and how many requests came before it,
# the status to answer.
Answer = Callable[[dict[str, str], bytes, int], int]


@dataclass
class Receiver:
    answer: Answer
    requests: list[Received] = field(default_factory=list)
    arrivals: list[Received] = field(default_factory=list)  # as they came in, answered or not
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in the order they were answered."""
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait(self, predicate: Callable[[Receiver], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)


@contextmanager
def webhook_receiver(answer: Answer = lambda headers, body, before: 200) -> Iterator[Receiver]:
    receiver = Receiver(answer)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers: no connection per request

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {key.lower(): value for key, value in self.headers.items()}
            with receiver.lock:
                before = len(receiver.arrivals)
                receiver.arrivals.append(Received(headers, body, 0))
            status = receiver.answer(headers, body, before)
            try:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:
                status = 0  # the sender went away
            with receiver.lock:
                receiver.requests.append(Received(headers, body, status))

        def log_message(self, format: str, *args: Any) -> None:
            return None

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default backlog (5) refuses a burst of concurrent connections

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
