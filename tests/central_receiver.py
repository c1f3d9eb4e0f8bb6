"""A fake central platform for tests and benchmarks: records every POST and fails on demand.

In a test::

    with CentralReceiver() as rx:          # serves on 127.0.0.1, a free port, in a thread
        rx.fail_next(2, status=500)        # the next two requests get 500
        rx.set_status(422, body=b"bad")    # then every request gets 422 ...
        rx.delay_s = 3                     # ... after sleeping 3 s (to provoke client timeouts)
        rx.fail_key("c-1:2", 3, status=503)  # the next 3 requests with this idempotency key get 503
        rx.on_request = fn                 # fn(Received) before each answer (e.g. kill the sender)
        ... rx.url, rx.received, rx.accepted_ids()

As a process (a kill -9 test, the benchmark)::

    python tests/central_receiver.py --port 0 --log FILE

prints ``listening on http://127.0.0.1:PORT`` and appends the idempotency key of every request it
answers with 2xx to FILE, one per line, flushed per request so another process can read it: the
case_id for a case, ``<case_id>:<seq> <kind> evidence=<n>`` for a later event of a case (n: the
evidence files that came with it). Stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Received:
    """One request as the receiver saw it, and what it answered."""

    time: float  # time.time() when the request was read
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int
    case: dict[str, Any] | None = None  # the JSON body, or the multipart part named "case" or "event"
    parts: dict[str, Part] = field(default_factory=dict)  # multipart parts by name

    @property
    def case_id(self) -> str | None:
        if self.case is not None and "case_id" in self.case:
            return self.case["case_id"]
        return self.headers.get("idempotency-key")

    @property
    def key(self) -> str | None:
        """The idempotency key: the case_id of a case, the event_id of a later event."""
        return self.headers.get("idempotency-key") or self.case_id

    @property
    def kind(self) -> str:
        """opened (a case POST) or the event's kind."""
        return (self.case or {}).get("kind", "opened")


@dataclass(frozen=True)
class _Answer:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """Split a multipart/form-data body into its parts (enough for what httpx sends)."""
    params = dict(_header_params(content_type)[1])
    boundary = params.get("boundary")
    if not boundary:
        raise ValueError(f"multipart body without a boundary: {content_type!r}")
    parts: dict[str, Part] = {}
    for section in body.split(b"--" + boundary.encode())[1:]:
        if section.startswith(b"--"):
            break
        head, _, data = section.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = dict(_header_params(headers.get("content-disposition", ""))[1])
        name = disposition.get("name", "")
        parts[name] = Part(name, disposition.get("filename"), headers.get("content-type"),
                           data.removesuffix(b"\r\n"))
    return parts


def _header_params(value: str) -> tuple[str, list[tuple[str, str]]]:
    main, *rest = value.split(";")
    params = []
    for item in rest:
        key, _, val = item.strip().partition("=")
        params.append((key.strip().lower(), val.strip().strip('"')))
    return main.strip().lower(), params


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client killed or timed out mid-request: expected in these tests
        super().handle_error(request, client_address)


class CentralReceiver:
    """A local HTTP receiver standing in for the central platform."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_path: str | Path | None = None) -> None:
        self.received: list[Received] = []
        self.delay_s = 0.0
        self.on_request: Callable[[Received], None] | None = None  # called before each answer, in its thread
        self._default = _Answer()
        self._script: deque[_Answer] = deque()
        self._by_key: dict[str, deque[_Answer]] = {}
        self._lock = threading.Lock()
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
        self._conns: set[socket.socket] = set()
        self._server = _Server((host, port), _make_handler(self))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}/cases"

    # -- scripting -------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, body: bytes = b"", *, delay_s: float = 0.0,
                  retry_after: str | None = None) -> None:
        """Answer the next `n` requests with `status` (then go back to the default answer)."""
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        with self._lock:
            self._script.extend(_Answer(status, body, delay_s, headers) for _ in range(n))

    def fail_key(self, key: str, n: int = 1, status: int = 500, body: bytes = b"") -> None:
        """Answer the next `n` requests carrying ``Idempotency-Key: key`` with `status`."""
        with self._lock:
            self._by_key.setdefault(key, deque()).extend(_Answer(status, body) for _ in range(n))

    def set_status(self, status: int = 200, body: bytes = b"") -> None:
        """Answer every following (unscripted) request with `status` and `body`."""
        with self._lock:
            self._default = _Answer(status, body)

    def accepted_ids(self) -> list[str]:
        """case_ids of the requests answered with 2xx, in arrival order (duplicates kept)."""
        with self._lock:
            return [r.case_id for r in self.received if 200 <= r.status < 300]

    def accepted_events(self, case_id: str) -> list[Received]:
        """The requests about one case answered with 2xx (the case itself first), in arrival order."""
        with self._lock:
            return [r for r in self.received if 200 <= r.status < 300 and r.case_id == case_id]

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    # -- running ---------------------------------------------------------------------------

    def start(self) -> CentralReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="central-receiver",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for conn in self._conns:  # keep-alive connections would otherwise go on being served
                with contextlib.suppress(OSError):  # the client already closed it
                    conn.shutdown(socket.SHUT_RDWR)
            if self._log:
                self._log.close()
                self._log = None

    def __enter__(self) -> CentralReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler ---------------------------------------------------------------

    def _answer(self, key: str | None = None) -> _Answer:
        with self._lock:
            scripted = self._by_key.get(key or "")
            if scripted:
                answer = scripted.popleft()
            else:
                answer = self._script.popleft() if self._script else self._default
        if self.delay_s and not answer.delay_s:
            answer = _Answer(answer.status, answer.body, self.delay_s, answer.headers)
        return answer

    def _record(self, rec: Received) -> None:
        with self._lock:
            self.received.append(rec)
            if self._log and 200 <= rec.status < 300 and rec.key:
                files = sum(1 for name in rec.parts if name.startswith("evidence["))
                self._log.write(rec.key + ("" if rec.kind == "opened" else f" {rec.kind} evidence={files}") + "\n")
                self._log.flush()


def _make_handler(rx: CentralReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real platform would offer

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without NODELAY, Nagle + delayed ACK stall 40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with rx._lock:
                rx._conns.add(self.connection)

        def finish(self) -> None:
            with rx._lock:
                rx._conns.discard(self.connection)
            with contextlib.suppress(OSError):  # the client hung up first (it timed out)
                super().finish()

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's naming)
            body = self._read_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = rx._answer(headers.get("idempotency-key"))
            rec = Received(time.time(), self.path, headers, body, answer.status)
            ctype = headers.get("content-type", "")
            try:
                if ctype.startswith("multipart/"):
                    rec.parts = parse_multipart(ctype, body)
                    json_part = rec.parts.get("case") or rec.parts.get("event")
                    if json_part is not None:
                        rec.case = json.loads(json_part.data)
                elif body:
                    rec.case = json.loads(body)
            except ValueError as exc:
                rec.status = 400
                answer = _Answer(400, f"unreadable body: {exc}".encode())
            if rx.on_request is not None:
                rx.on_request(rec)
            if answer.delay_s:
                time.sleep(answer.delay_s)
            rx._record(rec)
            out = answer.body or json.dumps({"ok": 200 <= answer.status < 300, "case_id": rec.case_id}).encode()
            try:
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            except OSError:
                self.close_connection = True  # the client gave up waiting (a timeout test)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    chunk = self.rfile.read(size + 2)[:size]
                    if size == 0:
                        return b"".join(chunks)
                    chunks.append(chunk)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read `received` instead

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description="fake central platform: records POSTed cases and case events")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port (printed on stdout)")
    ap.add_argument("--log", help="append the case_id of every accepted request to this file")
    ap.add_argument("--status", type=int, default=200, help="status to answer with")
    ap.add_argument("--delay-s", type=float, default=0.0, help="answer each request after this many seconds")
    args = ap.parse_args()
    rx = CentralReceiver(args.host, args.port, args.log)
    rx.set_status(args.status)
    rx.delay_s = args.delay_s
    # SIGTERM -> shutdown from another thread (shutdown() from the serving thread would deadlock).
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=rx._server.shutdown).start())
    print(f"listening on http://{args.host}:{rx.port}", flush=True)
    try:
        rx.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        rx._server.server_close()
        if rx._log:
            rx._log.close()


if __name__ == "__main__":
    main()
