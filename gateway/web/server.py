"""The gateway's status page and JSON API: a tiny HTTP/1.1 server on asyncio streams (stdlib only).

Routes (GET and HEAD; anything else is 405):

    /                           status page (HTML, refreshes itself every 5 s)
    /cases/<case_id>            one case: fields, evidence inline, rejections, how to retry
    /api/status                 the runtime's snapshot() as JSON
    /api/cases?status=&limit=   newest cases as JSON (status: pending|delivered|dead|stored)
    /api/cases/<case_id>        one case as JSON (404 if unknown)
    /evidence/<case_id>/<name>  an evidence file of that case
    /healthz                    "ok", for systemd / docker health checks

One request per connection (`Connection: close`): the page is for a few operators, not for
load. The request head is bounded in size and time; a malformed request gets 400 and costs the
server nothing else. Outbox reads are SQLite calls and run in a thread (`asyncio.to_thread`).

Evidence is served only when the file is listed in that case's evidence AND its real path
(symlinks resolved) lies inside `evidence_root`: the URL names an entry, never a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.outbox import STATUSES, Outbox
from gateway.web import page

log = logging.getLogger(__name__)

MAX_LINE = 8 * 1024  # bytes of the request line or of one header line
MAX_HEAD = 32 * 1024  # bytes of the whole request head
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 10.0  # a client that does not send its request head in time is dropped
LINGER_S = 2.0  # after an error answer, how long unread input is drained before closing
LINGER_BYTES = 1024 * 1024
MAX_CONNECTIONS = 64  # concurrent connections; more get 503
MAX_LIMIT = 1000  # largest ?limit= of /api/cases
PAGE_CASES = 50  # cases on the status page
CHUNK = 256 * 1024  # evidence files are streamed in chunks of this size

_METHOD = re.compile(r"[A-Z]{1,20}")
_VERSION = re.compile(r"HTTP/1\.[01]")
# A media type as it may appear in a header: anything else (from a damaged case) is sent as bytes.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[\w.+-]+(; *[\w.-]+=[\w.-]+)?")

_HTML = "text/html; charset=utf-8"
_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
# Pages hold no script and load only their own images; a stray tag in some data stays inert.
_PAGE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


class BadRequest(Exception):
    """The request cannot be parsed; answered with 400."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = _TEXT
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # streamed instead of body
    file_size: int = 0


def _text(status: int, message: str | None = None) -> Response:
    return Response(status, ((message or HTTPStatus(status).phrase) + "\n").encode())


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, ensure_ascii=False, indent=1, default=str).encode()
    return Response(status, body, _JSON)


def _html(text: str) -> Response:
    return Response(200, text.encode(), _HTML, {"Content-Security-Policy": _PAGE_CSP})


class StatusServer:
    """Serves the status page and JSON API of one gateway; `port=0` picks a free port (see `.port`)."""

    name = "web"

    def __init__(
        self,
        outbox: Outbox,
        snapshot: Callable[[], dict],
        *,
        evidence_root: Path,
        host: str = "127.0.0.1",
        port: int = 8080,
    ) -> None:
        self.outbox = outbox
        self.snapshot = snapshot
        self.evidence_root = Path(evidence_root)
        self.host = host
        self.port = port
        # Counters for the runtime's snapshot: requests by outcome.
        self.stats: dict[str, int] = {"requests": 0, "bad_requests": 0, "not_found": 0, "errors": 0,
                                      "timeouts": 0, "rejected_busy": 0}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_LINE)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("status page on http://%s:%d/", self.host, self.port)

    async def listen(self) -> None:
        if self._server is None:
            await self.start()

    async def run(self, stop: asyncio.Event) -> None:
        await self.listen()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Python 3.11's wait_closed does not wait for open connections: end them ourselves.
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    # -- connection handling -----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                self.stats["rejected_busy"] += 1
                await self._send(writer, _text(503, "busy, try again"), head_only=False)
                await _linger(reader, writer)
                return
            if not await self._one_request(reader, writer):
                await _linger(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except Exception:
            self.stats["errors"] += 1
            log.exception("status page: connection from %s failed", writer.get_extra_info("peername"))
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):  # already reset by the client
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False if input may be left unread (the connection should linger)."""
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                method, target = await read_head(reader)
        except TimeoutError:
            self.stats["timeouts"] += 1
            await self._send(writer, _text(408), head_only=False)
            return False
        except BadRequest as exc:
            self.stats["bad_requests"] += 1
            await self._send(writer, _text(400, f"bad request: {exc}"), head_only=False)
            return False
        self.stats["requests"] += 1
        if method not in ("GET", "HEAD"):
            response = _text(405)
            response.headers["Allow"] = "GET, HEAD"
        else:
            try:
                response = await self.handle(target)
            except Exception:
                self.stats["errors"] += 1
                log.exception("status page: %s %s failed", method, target[:200])
                response = _text(500, "internal error, see the gateway log")
        if response.status == 404:
            self.stats["not_found"] += 1
        await self._send(writer, response, head_only=method == "HEAD")
        return method in ("GET", "HEAD")  # another method may have sent a body we did not read

    async def _send(self, writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
        length = response.file_size if response.file is not None else len(response.body)
        headers = {
            "Date": formatdate(usegmt=True),
            "Server": "citygate",
            "Content-Type": response.content_type,
            "Content-Length": str(length),
            "Connection": "close",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            **response.headers,
        }
        phrase = HTTPStatus(response.status).phrase
        head = f"HTTP/1.1 {response.status} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode("latin-1") + b"\r\n")
        if not head_only:
            if response.file is not None:
                await self._stream(writer, response.file, length)
            else:
                writer.write(response.body)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, path: Path, length: int) -> None:
        with open(path, "rb") as f:  # opening a local file does not block measurably; reads go to a thread
            left = length
            while left > 0:
                chunk = await asyncio.to_thread(f.read, min(CHUNK, left))
                if not chunk:
                    raise ConnectionError(f"evidence file {path} shrank while being sent")
                writer.write(chunk)
                await writer.drain()
                left -= len(chunk)

    # -- routes --------------------------------------------------------------------------------

    async def handle(self, target: str) -> Response:
        """The response to GET `target` (path and query), without the connection handling."""
        url = urlsplit(target)
        # Split the raw path before unquoting, so an encoded "/" stays inside its segment.
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        match parts:
            case [""]:
                return await self._index()
            case ["healthz"]:
                return _text(200, "ok")
            case ["api", "status"]:
                snap, error = self._snapshot()
                return _json(snap) if error is None else _json({"error": error}, 500)
            case ["api", "cases"] | ["api", "cases", ""]:
                return await self._api_cases(query)
            case ["api", "cases", case_id] if case_id:
                rec = await asyncio.to_thread(self.outbox.get, case_id)
                if rec is None:
                    return _json({"error": f"no case {case_id!r}"}, 404)
                letters = await asyncio.to_thread(self.outbox.dead_letters, case_id)
                data = rec.to_json()
                data["dead_letters"] = [
                    {"at": d.at.isoformat(), "status_code": d.status_code, "response_body": d.response_body}
                    for d in letters
                ]
                return _json(data)
            case ["cases", case_id] if case_id:
                return await self._case_page(case_id)
            case ["evidence", case_id, name] if case_id and name:
                return await self._evidence(case_id, name)
        return _text(404)

    def _snapshot(self) -> tuple[dict, str | None]:
        # Called on the loop: the runtime's state lives there and is not thread-safe.
        try:
            snap = self.snapshot()
            json.dumps(snap, default=str)  # fail here, with a message, not halfway through a page
            return snap, None
        except Exception as exc:
            self.stats["errors"] += 1
            log.exception("status page: snapshot() failed")
            return {}, f"snapshot() failed: {type(exc).__name__}: {exc}"

    async def _index(self) -> Response:
        snap, error = self._snapshot()

        def read():
            return self.outbox.counts(), self.outbox.fill_ratio(), self.outbox.list(limit=PAGE_CASES)

        counts, ratio, records = await asyncio.to_thread(read)
        return _html(page.index_page(snap, counts, ratio, records, snapshot_error=error))

    async def _api_cases(self, query: dict[str, list[str]]) -> Response:
        status = query.get("status", [None])[-1] or None
        if status is not None and status not in STATUSES:
            return _json({"error": f"unknown status {status!r}; expected one of {', '.join(STATUSES)}"}, 400)
        raw_limit = query.get("limit", ["50"])[-1]
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_LIMIT:
            return _json({"error": f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw_limit!r}"}, 400)
        records = await asyncio.to_thread(self.outbox.list, status, limit)
        return _json([r.to_json() for r in records])

    async def _case_page(self, case_id: str) -> Response:
        def read():
            rec = self.outbox.get(case_id)
            return rec, (self.outbox.dead_letters(case_id) if rec is not None else [])

        rec, letters = await asyncio.to_thread(read)
        if rec is None:
            return _text(404, f"no case {case_id!r}")
        return _html(page.case_page(rec, letters))

    async def _evidence(self, case_id: str, name: str) -> Response:
        rec = await asyncio.to_thread(self.outbox.get, case_id)
        if rec is None:
            return _text(404)
        item = next((i for i in rec.case.get("evidence", ()) if page.evidence_name(i) == name), None)
        if item is None or not item.get("path"):
            return _text(404)
        found = await asyncio.to_thread(self._locate, str(item["path"]))
        if found is None:
            log.warning("evidence %s of case %s is missing or outside %s", item["path"], case_id,
                        self.evidence_root)
            return _text(404)
        path, size = found
        media = str(item.get("media_type", ""))
        headers = {"Cache-Control": "private, max-age=86400, immutable",  # evidence never changes
                   "Content-Security-Policy": "default-src 'none'; sandbox"}
        if item.get("sha256"):
            headers["ETag"] = f'"{item["sha256"]}"'
        content_type = media if _MEDIA_TYPE.fullmatch(media) else "application/octet-stream"
        return Response(200, content_type=content_type, headers=headers, file=path, file_size=size)

    def _locate(self, listed: str) -> tuple[Path, int] | None:
        """The real file of an evidence path, if it is a file inside evidence_root (symlinks resolved)."""
        root = self.evidence_root.resolve()
        p = Path(listed)
        # The case desk stores the path as it wrote it: absolute, or relative to the working folder.
        candidates = [p] if p.is_absolute() else [Path.cwd() / p, root / p]
        for c in candidates:
            real = c.resolve()
            if real.is_relative_to(root) and real.is_file():
                return real, real.stat().st_size
        return None


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard what the client still sends, briefly.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    response we just wrote before the client reads it (an error page the client never sees)."""
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_S):
            discarded = 0
            while discarded < LINGER_BYTES:
                chunk = await reader.read(64 * 1024)
                if not chunk:
                    break
                discarded += len(chunk)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Read a request head; (method, target). Raises BadRequest, IncompleteReadError on early EOF."""
    line = await _read_line(reader)
    if not line:
        raise BadRequest("empty request line")
    pieces = line.split(" ")
    if len(pieces) != 3:
        raise BadRequest("request line is not 'METHOD TARGET HTTP/1.x'")
    method, target, version = pieces
    if not _METHOD.fullmatch(method) or not _VERSION.fullmatch(version):
        raise BadRequest("request line is not 'METHOD TARGET HTTP/1.x'")
    if not target.startswith("/") or any(ord(ch) <= 32 or ord(ch) >= 127 for ch in target):
        raise BadRequest("request target must be a path starting with '/'")
    total, count = len(line), 0
    while True:  # headers are read only to find their end; none changes what is served
        header = await _read_line(reader)
        if not header:
            return method, target
        count += 1
        total += len(header)
        if count > MAX_HEADERS or total > MAX_HEAD:
            raise BadRequest("request head too large")
        if ":" not in header or header[0] in " \t":
            raise BadRequest("malformed header line")


async def _read_line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise BadRequest(f"line longer than {MAX_LINE} bytes") from exc
    return raw.rstrip(b"\r\n").decode("latin-1")
