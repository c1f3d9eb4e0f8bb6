"""Asyncio TCP server for JT/T 808 vehicle terminals: frames in, Positions out, replies back.

One task per connection. A connection that misbehaves (oversized frame, a run of undecodable
frames, a flood of bytes outside frames, a crash in its handling) is logged with its peer and
closed; nothing it does reaches another connection. Rules live in detectors; this only registers,
authenticates, acknowledges and forwards positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from core.model import Position
from gateway.protocols import jt808

log = logging.getLogger(__name__)

PositionCallback = Callable[[Position], Any]
EventCallback = Callable[[str, str, Mapping[str, Any]], Any]

MAX_PENDING_PACKETS = 256  # subpackages held per connection while a message is reassembled


class _Drop(Exception):
    """Close this connection; the message is the reason that goes into the log."""


class Jt808Server:
    """JT/T 808 platform side.

    registry maps terminal number (BCD digits as the terminal sends them) to its auth code.
    on_position(Position) is called for every decoded position; on_event(kind, terminal, info)
    for "unknown_terminal", "registered", "auth_failed" and "unregistered". Either may be a plain
    function or a coroutine function.
    """

    name = "jt808"

    def __init__(
        self,
        host: str,
        port: int,
        registry: Mapping[str, str],
        on_position: PositionCallback,
        on_event: EventCallback | None = None,
        *,
        idle_timeout_s: float = 180,
        max_frame_bytes: int = 4096,
        max_garbage_frames: int = 5,
        backlog: int = 1024,
        accept_unknown: bool = True,
    ) -> None:
        self.host = host
        self._port = port
        self.registry = registry
        self.on_position = on_position
        self.on_event = on_event
        self.idle_timeout_s = idle_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.max_garbage_frames = max_garbage_frames
        self.backlog = backlog  # a fleet reconnecting at once after a network blip must not be reset
        self.accept_unknown = accept_unknown
        self.stats: dict[str, int] = {
            "connections": 0,
            "open_connections": 0,
            "frames": 0,
            "positions": 0,
            "decode_errors": 0,
            "dropped_connections": 0,
            "idle_timeouts": 0,
            "replies": 0,
            "unknown_terminals": 0,
            "rejected": 0,
            "callback_errors": 0,
        }
        self._issued: dict[str, str] = {}  # auth codes handed to unknown terminals
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0 and started)."""
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port, backlog=self.backlog)
        log.info("JT/T 808 server listening on %s:%d", self.host, self.port)

    async def listen(self) -> None:
        """Listen now: a port in use fails the gateway's start-up, not a restart loop later."""
        if self._server is None:
            await self.start()

    async def run(self, stop: asyncio.Event) -> None:
        await self.listen()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.writer.transport.abort()  # the handler sees EOF and ends normally
        tasks = [conn.task for conn in self._connections if conn.task is not None]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=5)
            for task in stuck:  # e.g. blocked in a slow consumer callback
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    # -------------------------------------------------------------- callbacks

    async def _call(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a consumer bug must not cost the terminal its connection
            self.stats["callback_errors"] += 1
            log.exception("JT/T 808 callback %r failed", getattr(callback, "__name__", callback))

    async def _event(self, kind: str, terminal: str, info: Mapping[str, Any]) -> None:
        await self._call(self.on_event, kind, terminal, info)

    def _auth_code(self, terminal: str) -> str | None:
        code = self.registry.get(terminal)
        return code if code is not None else self._issued.get(terminal)


class _Connection:
    """State of one terminal connection: framing buffer, serial counter, subpackages."""

    def __init__(
        self, server: Jt808Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.serial = 0
        self.garbage_frames = 0  # undecodable frames in a row
        self.garbage_bytes = 0  # bytes outside any frame since the last good frame
        self.packets: dict[tuple[str, int], dict[int, jt808.Message]] = {}
        self.known: set[str] = set()  # terminals already reported / checked on this connection

    async def run(self) -> None:
        stats = self.server.stats
        stats["connections"] += 1
        stats["open_connections"] += 1
        log.info("JT/T 808 connection from %s", self.peer)
        reason = "closed by terminal"
        try:
            await self._serve()
        except _Drop as exc:
            reason = str(exc)
            stats["dropped_connections"] += 1
            log.warning("JT/T 808 dropping %s: %s", self.peer, reason)
        except TimeoutError:
            reason = f"idle for {self.server.idle_timeout_s:g} s"
            stats["idle_timeouts"] += 1
            log.info("JT/T 808 closing %s: %s", self.peer, reason)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            reason = f"connection error: {exc!r}"
            log.info("JT/T 808 %s: %s", self.peer, reason)
        except asyncio.CancelledError:
            reason = "server stopping"
            raise
        except Exception:  # never let one connection's bug reach the others
            reason = "internal error"
            stats["dropped_connections"] += 1
            log.exception("JT/T 808 dropping %s after an internal error", self.peer)
        finally:
            stats["open_connections"] -= 1
            self.writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await self.writer.wait_closed()
            log.debug("JT/T 808 connection %s ended: %s", self.peer, reason)

    async def _serve(self) -> None:
        server = self.server
        buffer = b""
        while True:
            chunk = await asyncio.wait_for(self.reader.read(65536), server.idle_timeout_s)
            if not chunk:
                return
            data = buffer + chunk
            frames, buffer = jt808.split_frames(data)
            self.garbage_bytes += len(data) - len(buffer) - sum(len(f) for f in frames)
            if len(buffer) > server.max_frame_bytes:
                raise _Drop(f"frame over {server.max_frame_bytes} bytes without an end delimiter")
            for frame in frames:
                if len(frame) > server.max_frame_bytes:
                    raise _Drop(f"frame of {len(frame)} bytes over {server.max_frame_bytes}")
                await self._frame(frame)
            if self.garbage_bytes > server.max_frame_bytes * server.max_garbage_frames:
                raise _Drop(f"{self.garbage_bytes} bytes outside any frame")
            await self.writer.drain()

    async def _frame(self, frame: bytes) -> None:
        server = self.server
        server.stats["frames"] += 1
        try:
            msg = jt808.decode(frame)
        except jt808.DecodeError as exc:
            server.stats["decode_errors"] += 1
            self.garbage_frames += 1
            log.info(
                "JT/T 808 undecodable frame from %s (%d in a row): %s", self.peer, self.garbage_frames, exc
            )
            if self.garbage_frames >= server.max_garbage_frames:
                raise _Drop(f"{self.garbage_frames} undecodable frames in a row, last: {exc}") from None
            return
        self.garbage_frames = 0
        self.garbage_bytes = 0
        if not msg.is_packet:
            await self._message(msg)
            return
        joined = self._collect(msg)
        if joined is not None:
            await self._message(joined, acked=True)

    def _collect(self, part: jt808.Message) -> jt808.Message | None:
        """Keep a subpackage; return the joined message once all its packets are here."""
        self._reply(part, jt808.RESULT_OK)  # each packet is acknowledged on its own
        key = (part.terminal, part.msg_id)
        parts = self.packets.setdefault(key, {})
        if parts and next(iter(parts.values())).packet_total != part.packet_total:
            parts.clear()  # a new message started before the old one completed
        parts[part.packet_index] = part
        if sum(len(p) for p in self.packets.values()) > MAX_PENDING_PACKETS:
            raise _Drop(f"more than {MAX_PENDING_PACKETS} subpackages pending")
        if len(parts) < (part.packet_total or 0):
            return None
        del self.packets[key]
        try:
            return jt808.join_packets(list(parts.values()))
        except jt808.DecodeError as exc:
            self.server.stats["decode_errors"] += 1
            log.info("JT/T 808 subpackages from %s do not join: %s", self.peer, exc)
            return None

    # -------------------------------------------------------------- messages

    def _next_serial(self) -> int:
        serial = self.serial
        self.serial = (serial + 1) & 0xFFFF
        return serial

    def _send(self, data: bytes) -> None:
        self.server.stats["replies"] += 1
        self.writer.write(data)

    def _reply(self, msg: jt808.Message, result: int) -> None:
        self._send(
            jt808.encode_general_reply(
                msg.terminal, self._next_serial(), msg.serial, msg.msg_id, result, msg.version
            )
        )

    async def _allowed(self, msg: jt808.Message) -> bool:
        """Whether data from this terminal is taken; reports an unknown terminal once per connection."""
        terminal = msg.terminal
        if terminal in self.server.registry:
            return True
        if not self.server.accept_unknown:
            return False
        if terminal not in self.known:
            self.known.add(terminal)
            self.server.stats["unknown_terminals"] += 1
            log.warning("JT/T 808 unknown terminal %s from %s", terminal, self.peer)
            await self.server._event("unknown_terminal", terminal, {"peer": self.peer, **msg.fields})
        return True

    async def _message(self, msg: jt808.Message, acked: bool = False) -> None:
        """Handle one whole message; acked: its subpackages were already answered one by one."""
        server = self.server
        mid = msg.msg_id

        def reply(result: int) -> None:
            if not acked:
                self._reply(msg, result)

        if mid == jt808.MSG_REGISTER:
            await self._register(msg)
        elif mid == jt808.MSG_AUTH:
            await self._authenticate(msg)
        elif mid in (jt808.MSG_LOCATION, jt808.MSG_LOCATION_BATCH):
            if not await self._allowed(msg):
                server.stats["rejected"] += 1
                reply(jt808.RESULT_FAIL)
                return
            for position in msg.positions:
                server.stats["positions"] += 1
                await server._call(server.on_position, position)
            reply(jt808.RESULT_OK)
        elif mid == jt808.MSG_HEARTBEAT:
            reply(jt808.RESULT_OK)
        elif mid == jt808.MSG_UNREGISTER:
            reply(jt808.RESULT_OK)
            await server._event("unregistered", msg.terminal, {"peer": self.peer})
        elif mid == jt808.MSG_TERMINAL_REPLY:
            pass  # the terminal acknowledging one of our commands: nothing to answer
        else:
            reply(jt808.RESULT_UNSUPPORTED)

    async def _register(self, msg: jt808.Message) -> None:
        server = self.server
        terminal = msg.terminal
        code = server.registry.get(terminal)
        if code is None and not server.accept_unknown:
            server.stats["rejected"] += 1
            log.warning("JT/T 808 refused registration of unknown terminal %s from %s", terminal, self.peer)
            self._send(
                jt808.encode_register_reply(
                    terminal, self._next_serial(), msg.serial, jt808.REGISTER_NO_VEHICLE, "", msg.version
                )
            )
            return
        if code is None:
            code = server._issued.get(terminal) or secrets.token_hex(8)
            server._issued[terminal] = code
            await self._allowed(msg)
        self._send(
            jt808.encode_register_reply(
                terminal, self._next_serial(), msg.serial, jt808.REGISTER_OK, code, msg.version
            )
        )
        await server._event("registered", terminal, {"peer": self.peer, **msg.fields})

    async def _authenticate(self, msg: jt808.Message) -> None:
        server = self.server
        expected = server._auth_code(msg.terminal)
        given = msg.fields.get("auth_code", "")
        if expected is not None:
            ok = given == expected
        else:  # never registered with us: only an open gateway takes it, and says so
            ok = server.accept_unknown and await self._allowed(msg)
        if not ok:
            server.stats["rejected"] += 1
            log.warning("JT/T 808 auth failed for terminal %s from %s", msg.terminal, self.peer)
            await server._event("auth_failed", msg.terminal, {"peer": self.peer})
        self._reply(msg, jt808.RESULT_OK if ok else jt808.RESULT_FAIL)
