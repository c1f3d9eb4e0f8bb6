"""Asyncio TCP server for JT/T 808 vehicle terminals: frames in, Positions out, replies back.

Per the standard a terminal registers once (0x0100, answered by 0x8100 with an auth code) and then
authenticates (0x0102 with that code) on every connection. A fleet terminal's code is handed out once:
the registration must match what the fleet config says about the terminal (plate, terminal id, maker),
and a terminal already registered is answered "terminal already registered" without a code until an
operator resets it (gateway/sources/jt808_registrations.py keeps who registered, across restarts).
Registrations are limited per connection and per source address. Until a connection has authenticated,
everything else it sends (locations, batches, heartbeats, subpackages...) is answered with a failure
result and goes no further; a wrong code is answered with a failure, and after `max_auth_failures` the
connection is closed. An authenticated connection speaks for that one terminal, resolved once to its
vehicle (detectors.vehicle.identity), and its positions carry the vehicle id in `Position.device`.

Terminals not in the fleet (with `accept_unknown`) may register and authenticate, but their positions
carry the terminal's own key, so the rules flag them and never take them for a fleet vehicle; how many
a connection and a source address may register is limited, so invented numbers cannot flood the case
desk. Connections are capped in total (never above what the open-file limit leaves) and per source
address: at a cap the oldest connection that has not authenticated yet makes room, and one that has
not authenticated within `auth_timeout_s` is closed. A connection that misbehaves is logged and closed;
repeated problems log once per interval. Nothing one connection does reaches another. Rules live in
detectors; this only registers, authenticates, acknowledges and forwards positions.

Platform commands (`command`): text, position query and parameters go to the connection a terminal
authenticated on last, or wait for its next authentication (gateway/sources/jt808_commands.py keeps
their state); the terminal's answers (0x0001, 0x0201) are matched by serial. A long message whose
subpackages stop coming is asked for again (0x8003, the missing packet numbers) after
`packet_timeout_s`, `packet_retries` times, then dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import resource
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.model import Position
from detectors.vehicle.identity import (
    PLATE_OF_ANOTHER,
    WRONG_PLATE,
    WRONG_TERMINAL,
    TerminalDirectory,
    TerminalFacts,
    plate_key,
    terminal_key,
)
from gateway.component import serve_until
from gateway.protocols import jt808
from gateway.sources.jt808_commands import Command, CommandBook, CommandRefused
from gateway.sources.jt808_registrations import Registrations, digest, new_code
from gateway.storage import JsonSaver
from gateway.throttle import LogThrottle, throttle_resource_errors

log = logging.getLogger(__name__)

PositionCallback = Callable[[Position], Any]
EventCallback = Callable[[str, str, Mapping[str, Any]], Any]

MAX_PENDING_PACKETS = 256  # subpackages held per connection while a message is reassembled
MAX_ISSUED_CODES = 10_000  # auth codes remembered for terminals not in the fleet
MAX_ADDRESSES = 10_000  # source addresses whose registration rate is tracked
SELF_RESET_S = 3600.0  # a terminal that deregistered (0x0003) may register again within this
_REFUSAL = {PLATE_OF_ANOTHER: jt808.REGISTER_VEHICLE_TAKEN, WRONG_PLATE: jt808.REGISTER_NO_VEHICLE,
            WRONG_TERMINAL: jt808.REGISTER_NO_TERMINAL}


def descriptor_budget(reserve_fraction: float = 0.125, min_reserve: int = 64) -> int | None:
    """How many connections the open-file limit leaves room for, keeping a reserve for the rest of the
    gateway (databases, HTTP, MQTT, cameras) and for accepting one more socket to close it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(16, soft - max(min_reserve, int(soft * reserve_fraction)))


class _Drop(Exception):
    """Close this connection; the message is the reason that goes into the log."""


class _TokenBucket:
    """`rate_per_min` tokens a minute, at most `rate_per_min` saved up."""

    __slots__ = ("tokens", "at")

    def __init__(self, capacity: float, now: float) -> None:
        self.tokens, self.at = capacity, now

    def take(self, rate_per_min: float, now: float) -> bool:
        self.tokens = min(rate_per_min, self.tokens + (now - self.at) * rate_per_min / 60)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Jt808Server:
    """JT/T 808 platform side.

    registry maps terminal number (any spelling: leading zeros, 12 or 20 digits) to its configured auth
    code (accepted until it has registered here; see jt808_registrations.py); vehicles maps terminal
    number to vehicle id (the id positions carry; without it a terminal's key is its id); terminals maps
    terminal number to what its registration must match. on_position(Position) is called for every
    position of an authenticated terminal; on_event(kind, terminal, info) for "unknown_terminal",
    "registered", "registration_refused", "auth_failed" and "unregistered". Either may be a plain
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
        vehicles: Mapping[str, str] | None = None,
        terminals: Mapping[str, TerminalFacts] | None = None,
        idle_timeout_s: float = 180,
        max_frame_bytes: int = 4096,
        max_garbage_frames: int = 5,
        backlog: int = 1024,
        accept_unknown: bool = True,
        auth_timeout_s: float = 30,
        max_auth_failures: int = 3,
        max_connections: int = 10_000,
        max_connections_per_address: int = 256,
        max_pending_packet_bytes: int = 65_536,
        unknown_per_connection: int = 1,
        unknown_per_address_per_min: float = 10,
        registrations_per_connection: int = 3,
        registrations_per_address_per_min: float = 10,
        log_interval_s: float = 60,
        command_ttl_s: float = 3600,
        command_reply_timeout_s: float = 60,
        max_commands: int = 10_000,
        max_queued_commands: int = 32,
        packet_timeout_s: float = 10,
        packet_retries: int = 2,
        state_path: Path | None = None,
        registrations_path: Path | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.on_position = on_position
        self.on_event = on_event
        self.idle_timeout_s = idle_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.max_garbage_frames = max_garbage_frames
        self.backlog = backlog  # a fleet reconnecting at once after a network blip must not be reset
        self.accept_unknown = accept_unknown
        self.auth_timeout_s = auth_timeout_s
        self.max_auth_failures = max_auth_failures
        budget = descriptor_budget()
        self.max_connections = max_connections if budget is None else min(max_connections, budget)
        self.max_connections_per_address = max_connections_per_address
        self.max_pending_packet_bytes = max_pending_packet_bytes
        self.unknown_per_connection = unknown_per_connection
        self.unknown_per_address_per_min = unknown_per_address_per_min
        self.registrations_per_connection = registrations_per_connection
        self.registrations_per_address_per_min = registrations_per_address_per_min
        self.registry = registry
        vehicles = vehicles if vehicles is not None else {t: terminal_key(t) for t in registry}
        self.directory = TerminalDirectory(vehicles)
        self._key_by_vehicle = {vehicle: terminal_key(t) for t, vehicle in vehicles.items()}
        self._vehicle_by_key = {key: vehicle for vehicle, key in self._key_by_vehicle.items()}
        self._facts = {terminal_key(t): f for t, f in (terminals or {}).items()}
        self._plates = {plate_key(f.plate): self._vehicle_by_key.get(terminal_key(t), t)
                        for t, f in (terminals or {}).items() if f.plate}
        self.packet_timeout_s = packet_timeout_s
        self.packet_retries = packet_retries
        self.commands = CommandBook(ttl_s=command_ttl_s, reply_timeout_s=command_reply_timeout_s,
                                    max_commands=max_commands, max_queued_per_terminal=max_queued_commands)
        self._online: dict[str, _Connection] = {}  # terminal key -> the connection it authenticated on last
        # terminal key -> (address, connected at, last data at, ended at) of its last authenticated connection
        self._ended: collections.OrderedDict[str, tuple[str, float, float | None, float]] = collections.OrderedDict()
        self.state_path = state_path  # where the commands are saved (None: memory only)
        self._command_saver = JsonSaver(state_path, lambda: {"commands": self.commands.export()},
                                        lambda: self.commands.version, self._command_save_failed)
        self.registrations = Registrations(registrations_path, self._registration_save_failed)
        self.throttle = LogThrottle(log_interval_s)
        self.counters: dict[str, int] = {
            "connections": 0,
            "open_connections": 0,
            "authenticated_connections": 0,
            "max_connections": self.max_connections,
            "frames": 0,
            "positions": 0,
            "decode_errors": 0,
            "lenient_frames": 0,  # accepted although they deviate from the standard (Message.problems)
            "dropped_connections": 0,
            "idle_timeouts": 0,
            "auth_timeouts": 0,
            "replies": 0,
            "unknown_terminals": 0,
            "rejected": 0,  # every refusal below, together
            "refused_unauthenticated": 0,  # messages from a connection that has not authenticated
            "auth_failures": 0,
            "closed_after_auth_failures": 0,
            "unknown_rate_limited": 0,  # registrations of unknown terminals over the limits
            "registrations": 0,  # auth codes handed out by a registration
            "registrations_refused": 0,  # already registered (or locked after a reset ran out): no code
            "registrations_mismatched": 0,  # plate, terminal id or maker differ from the fleet config
            "registrations_rate_limited": 0,  # over the per-connection or per-address limit: closed
            "registration_save_errors": 0,
            "refused_connections": 0,  # over the connection caps with nothing to make room
            "evicted_unauthenticated": 0,  # closed to make room at a cap
            "callback_errors": 0,
            "retransmit_requests": 0,  # 0x8003 sent for subpackages that stopped coming
            "incomplete_messages": 0,  # subpackaged messages given up after the retransmit requests
            "command_save_errors": 0,
        }
        self._issued: collections.OrderedDict[str, str] = collections.OrderedDict()  # key -> code
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._per_address: collections.Counter[str] = collections.Counter()
        self._waiting: dict[_Connection, None] = {}  # not yet authenticated, oldest first
        self._unknown_buckets: collections.OrderedDict[str, _TokenBucket] = collections.OrderedDict()
        self._register_buckets: collections.OrderedDict[str, _TokenBucket] = collections.OrderedDict()

    @property
    def registry(self) -> Mapping[str, str]:
        return self._codes

    @registry.setter
    def registry(self, registry: Mapping[str, str]) -> None:
        self._codes = {terminal_key(t): code for t, code in registry.items()}

    def stats(self) -> dict[str, Any]:
        self.commands.sweep(time.time())
        self._save_commands()
        # registration_resets: codes revoked by an operator's reset or by the terminal deregistering
        return {**self.counters, "registered_terminals": self.registrations.registered(),
                "registration_resets": self.registrations.resets, "commands": self.commands.stats()}

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0 and started)."""
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    async def start(self) -> None:
        self._load_commands()
        if not self.registrations.version:
            self.registrations.load()
        throttle_resource_errors(asyncio.get_running_loop(), self.throttle.interval_s)
        self._server = await asyncio.start_server(self._accept, self.host, self._port, backlog=self.backlog)
        log.info("JT/T 808 server listening on %s:%d (at most %d connections, %d per address)",
                 self.host, self.port, self.max_connections, self.max_connections_per_address)

    async def listen(self) -> None:
        """Listen now: a port in use fails the gateway's start-up, not a restart loop later."""
        if self._server is None:
            await self.start()

    async def run(self, stop: asyncio.Event) -> None:
        await serve_until(self, stop)

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
        await self._command_saver.flush()
        await self.registrations.saver.flush()

    # -------------------------------------------------------------- command state on disk

    def _load_commands(self) -> None:
        """Take back the commands saved by the last run. An unreadable file is moved aside (`.bad`):
        it must not keep the server from starting."""
        path = self.state_path
        if path is None or not path.exists() or self.commands.version:
            return
        try:
            self.commands.restore(json.loads(path.read_text(encoding="utf-8"))["commands"], time.time())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            bad = path.with_name(path.name + ".bad")
            log.error("JT/T 808 command state %s unreadable (%s); moved to %s", path, exc, bad)
            with contextlib.suppress(OSError):
                path.replace(bad)
            return
        self._command_saver.saved_version = self.commands.version
        log.info("JT/T 808: %d command(s) restored from %s", self.commands.stats()["tracked"], path)

    def _save_commands(self) -> None:
        """Save the commands soon after they changed."""
        self._command_saver.soon()

    def _command_save_failed(self, exc: OSError) -> None:
        self.counters["command_save_errors"] += 1
        self.warn("command-save", "JT/T 808 could not save commands to %s: %s", self.state_path, exc)

    def _registration_save_failed(self, exc: OSError) -> None:
        self.counters["registration_save_errors"] += 1
        self.warn("registration-save", "JT/T 808 could not save registrations to %s: %s", self.registrations.path,
                  exc)

    # -------------------------------------------------------------- admission

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        if not self._admit(conn):
            self.counters["refused_connections"] += 1
            self.counters["rejected"] += 1
            self.warn("refused", "JT/T 808 refused a connection from %s: connection limits reached "
                      "(%d open, %d from that address)", conn.peer, len(self._connections),
                      self._per_address[conn.address])
            writer.transport.abort()
            return
        self._connections.add(conn)
        self._per_address[conn.address] += 1
        self._waiting[conn] = None
        try:
            await conn.run()
        finally:
            self._forget(conn)

    def _admit(self, conn: _Connection) -> bool:
        """Room for one more connection, made by closing the oldest unauthenticated one at a cap."""
        if self._per_address[conn.address] >= self.max_connections_per_address and not self._evict(
            lambda c: c.address == conn.address
        ):
            return False
        if len(self._connections) >= self.max_connections:
            return self._evict(lambda c: True)
        return True

    def _evict(self, which: Callable[[_Connection], bool]) -> bool:
        victim = next((c for c in self._waiting if which(c)), None)
        if victim is None:
            return False
        self.counters["evicted_unauthenticated"] += 1
        self.warn("evicted", "JT/T 808 closed unauthenticated %s to make room at the connection limits",
                  victim.peer)
        self._forget(victim)
        victim.writer.transport.abort()
        return True

    def _forget(self, conn: _Connection) -> None:
        if conn.key is not None and self._online.get(conn.key) is conn:
            del self._online[conn.key]
            self._ended.pop(conn.key, None)
            self._ended[conn.key] = (conn.peer, conn.connected_at, conn.last_data_at, time.time())
            if len(self._ended) > len(self._codes) + MAX_ISSUED_CODES:
                self._ended.popitem(last=False)
        if conn in self._connections:
            self._connections.discard(conn)
            self._per_address[conn.address] -= 1
            if self._per_address[conn.address] <= 0:
                del self._per_address[conn.address]
        self._waiting.pop(conn, None)

    def authenticated(self, conn: _Connection) -> None:
        self._waiting.pop(conn, None)
        assert conn.key is not None
        self._online[conn.key] = conn
        self._deliver(conn.key)
        self._save_commands()

    def terminals(self) -> dict[str, dict[str, Any]]:
        """Each terminal's connection by terminal key, for the console's devices view: connected now
        (authenticated, or not yet: registered or failing to authenticate), its address, since when and
        when it last sent anything, or when its last authenticated connection ended; and how many of its
        commands wait (queued, or sent and unanswered). Times are epoch seconds."""
        out: dict[str, dict[str, Any]] = {}
        for key, (peer, opened, last, ended) in self._ended.items():
            out[key] = {"connected": False, "authenticated": False, "address": peer, "connected_at": opened,
                        "last_message_at": last, "disconnected_at": ended}
        for conn in self._waiting:
            if conn.claimed is not None and conn.claimed not in self._online:
                out[conn.claimed] = {"connected": True, "authenticated": False, "address": conn.peer,
                                     "connected_at": conn.connected_at, "last_message_at": conn.last_data_at,
                                     "auth_failures": conn.auth_failures}
        for key, conn in self._online.items():
            out[key] = {"connected": True, "authenticated": True, "address": conn.peer,
                        "connected_at": conn.connected_at, "last_message_at": conn.last_data_at,
                        "protocol": "2019" if conn.version else "2011/2013"}
        for key, waiting in self.commands.pending().items():
            out.setdefault(key, {"connected": False, "authenticated": False})["pending_commands"] = waiting
        return out

    # -------------------------------------------------------------- platform commands

    def resolve(self, target: str) -> tuple[str, str]:
        """(terminal key, device id) of a vehicle id or terminal number; CommandRefused (404) when this
        server knows no such terminal."""
        key = self._key_by_vehicle.get(target)
        if key is not None:
            return key, target
        key = terminal_key(target)
        if key in self._codes or key in self._online or key in self._issued:
            return key, self.directory.device_id(target)
        raise CommandRefused(f"no vehicle or terminal {target!r}", 404)

    def command(self, target: str, kind: str, args: Mapping[str, Any] | None = None, *,
                origin: str = "api") -> Command:
        """Send a command to a vehicle now if its terminal is authenticated on a connection, else queue it
        for its next authentication. CommandRefused says why one is not taken."""
        try:
            key, vehicle = self.resolve(target)
        except CommandRefused:
            self.commands.counters["refused"] += 1
            raise
        now = time.time()
        self.commands.sweep(now)
        cmd = self.commands.add(key, vehicle, kind, args or {}, now, origin)
        self._deliver(key)
        self._save_commands()
        return cmd

    def commands_of(self, target: str) -> list[Command]:
        """A vehicle's commands, newest first."""
        _, vehicle = self.resolve(target)
        self.commands.sweep(time.time())
        self._save_commands()
        return self.commands.of(vehicle)

    def _deliver(self, key: str) -> None:
        conn = self._online.get(key)
        if conn is None:
            return
        due = self.commands.due(key, time.time())
        for i, cmd in enumerate(due):
            if conn.writer.transport.is_closing():  # it is going away: wait for the next authentication
                self.commands.requeue(due[i:])
                return
            conn.send_command(cmd)

    @staticmethod
    def _take(buckets: collections.OrderedDict[str, _TokenBucket], address: str, rate_per_min: float) -> bool:
        """One token from the address's bucket (the least recently seen addresses are forgotten first)."""
        now = time.monotonic()
        bucket = buckets.get(address)
        if bucket is None:
            if len(buckets) >= MAX_ADDRESSES:
                buckets.popitem(last=False)
            bucket = buckets[address] = _TokenBucket(rate_per_min, now)
        else:
            buckets.move_to_end(address)
        return bucket.take(rate_per_min, now)

    def registration_allowed(self, conn: _Connection) -> bool:
        """Whether this connection may register (anything) now: a terminal registers once, so a few
        tries per connection and a few a minute per address are plenty; more is someone guessing."""
        conn.register_tries += 1
        if conn.register_tries <= self.registrations_per_connection and self._take(
                self._register_buckets, conn.address, self.registrations_per_address_per_min):
            return True
        self.counters["registrations_rate_limited"] += 1
        self.counters["rejected"] += 1
        self.warn("register-limit", "JT/T 808 %s: registration refused and connection closed (over %d per "
                  "connection or %g per minute from one address)", conn.peer, self.registrations_per_connection,
                  self.registrations_per_address_per_min)
        return False

    def unknown_allowed(self, conn: _Connection, key: str) -> bool:
        """Whether a terminal not in the fleet may register from this connection now."""
        if key in conn.unknown or (len(conn.unknown) < self.unknown_per_connection and self._take(
                self._unknown_buckets, conn.address, self.unknown_per_address_per_min)):
            conn.unknown.add(key)
            return True
        self.counters["unknown_rate_limited"] += 1
        self.counters["rejected"] += 1
        self.warn("unknown-limit", "JT/T 808 %s: registration of unknown terminal %s refused (over %d per "
                  "connection or %g per minute from one address)", conn.peer, key,
                  self.unknown_per_connection, self.unknown_per_address_per_min)
        return False

    def register_fleet_terminal(self, conn: _Connection, key: str, fields: Mapping[str, Any]) -> tuple[int, str, str]:
        """(0x8100 result, auth code or "", why) for a registration of a fleet terminal."""
        now = time.time()
        entry = self.registrations.entry(key, now)
        if entry is not None and (entry.get("code_sha256") or now > (entry.get("reset_until") or 0.0)):
            return jt808.REGISTER_TERMINAL_TAKEN, "", "already registered (an operator's reset lets it register again)"
        facts = self._facts.get(key)
        why = facts.mismatch(fields, self._plates) if facts is not None else None
        if why is not None:
            return _REFUSAL[why], "", why.replace("_", " ")
        code = new_code()
        self.registrations.register(key, self._vehicle_by_key.get(key, key), code, conn.peer, fields, now)
        return jt808.REGISTER_OK, code, ""

    def issue_code(self, key: str) -> str:
        """An auth code for a terminal not in the fleet (remembered in memory only)."""
        code = self._issued[key] = secrets.token_hex(8)
        if len(self._issued) > MAX_ISSUED_CODES:
            self._issued.popitem(last=False)
        return code

    def code_matches(self, conn: _Connection, key: str, given: str) -> bool:
        """Whether `given` is the terminal's auth code: the one its registration here handed out, else
        (never registered here) the one configured for it, which then counts as its registration."""
        configured = self._codes.get(key)
        if configured is None:
            issued = self._issued.get(key)
            return issued is not None and secrets.compare_digest(given.encode(), issued.encode())
        now = time.time()
        entry = self.registrations.entry(key, now)
        if entry is not None:
            stored = entry.get("code_sha256")
            return stored is not None and secrets.compare_digest(digest(given).encode(), stored.encode())
        if not secrets.compare_digest(given.encode(), configured.encode()):
            return False
        self.registrations.authenticated(key, self._vehicle_by_key.get(key, key), given, conn.peer, now)
        return True

    def deregistered(self, key: str) -> None:
        """A fleet terminal deregistered itself (0x0003, authenticated): its code is revoked and it may
        register again for a while, as the standard has it."""
        if key in self._codes:
            now = time.time()
            self.registrations.reset(key, now + SELF_RESET_S, "the terminal (0x0003)", now)

    # -------------------------------------------------------------- callbacks and logging

    def warn(self, key: str, msg: str, *args: Any) -> None:
        self.throttle.log(log, logging.WARNING, key, msg, *args)

    async def _call(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a consumer bug must not cost the terminal its connection
            self.counters["callback_errors"] += 1
            if self.throttle.allow("callback")[0]:
                log.exception("JT/T 808 callback %r failed", getattr(callback, "__name__", callback))

    async def _event(self, kind: str, terminal: str, info: Mapping[str, Any]) -> None:
        await self._call(self.on_event, kind, terminal, info)


class _Connection:
    """State of one terminal connection: framing buffer, serial counter, identity, subpackages."""

    def __init__(
        self, server: Jt808Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.serial = 0
        self.garbage_frames = 0  # undecodable frames in a row
        self.garbage_bytes = 0  # bytes outside any frame since the last good frame
        self.packets: dict[tuple[str, int], dict[int, jt808.Message]] = {}
        self.packet_due: dict[tuple[str, int], list[float]] = {}  # same keys: [retransmit due (loop time), tries]
        self.packet_bytes = 0
        self.unknown: set[str] = set()  # keys of unknown terminals registered on this connection
        self.register_tries = 0  # registrations (0x0100) tried on this connection
        self.auth_failures = 0
        # the terminal this connection authenticated as: its number as sent, its key, and the device id
        # its positions carry (vehicle id, or the key of a terminal not in the fleet)
        self.terminal: str | None = None
        self.key: str | None = None
        self.device = ""
        self.version = 0  # header version of its authentication: commands are written in it
        self.claimed: str | None = None  # the terminal key it registered or tried to authenticate as
        self.connected_at = time.time()
        self.last_data_at: float | None = None  # wall clock of its last read: the console's "last message"

    async def run(self) -> None:
        stats = self.server.counters
        stats["connections"] += 1
        stats["open_connections"] += 1
        log.debug("JT/T 808 connection from %s", self.peer)
        reason = "closed by terminal"
        try:
            await self._serve()
        except _Drop as exc:
            reason = str(exc)
            stats["dropped_connections"] += 1
            self.server.warn("drop", "JT/T 808 dropping %s: %s", self.peer, reason)
        except TimeoutError:
            if self.key is None:
                reason = f"not authenticated within {self.server.auth_timeout_s:g} s"
                stats["auth_timeouts"] += 1
            else:
                reason = f"idle for {self.server.idle_timeout_s:g} s"
                stats["idle_timeouts"] += 1
            log.debug("JT/T 808 closing %s: %s", self.peer, reason)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            reason = f"connection error: {exc!r}"
            log.debug("JT/T 808 %s: %s", self.peer, reason)
        except asyncio.CancelledError:
            reason = "server stopping"
            raise
        except Exception:  # never let one connection's bug reach the others
            reason = "internal error"
            stats["dropped_connections"] += 1
            if self.server.throttle.allow("internal")[0]:
                log.exception("JT/T 808 dropping %s after an internal error", self.peer)
        finally:
            stats["open_connections"] -= 1
            if self.key is not None:
                stats["authenticated_connections"] -= 1
            self.packets.clear()
            self.packet_due.clear()
            self.writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await self.writer.wait_closed()
            log.debug("JT/T 808 connection %s ended: %s", self.peer, reason)

    async def _serve(self) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        auth_deadline = loop.time() + server.auth_timeout_s
        last_read = loop.time()
        buffer = b""
        while True:
            deadline = last_read + server.idle_timeout_s if self.key is not None else auth_deadline
            packets_due = min((due for due, _ in self.packet_due.values()), default=deadline)
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), max(0.0, min(deadline, packets_due) - loop.time()))
            except TimeoutError:
                if packets_due >= deadline:
                    raise
                self._ask_missing(loop.time())
                await self.writer.drain()
                continue
            last_read = loop.time()
            if not chunk:
                return
            self.last_data_at = time.time()
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
        server.counters["frames"] += 1
        try:
            msg = jt808.decode(frame)
        except jt808.DecodeError as exc:
            server.counters["decode_errors"] += 1
            self.garbage_frames += 1
            server.throttle.log(log, logging.INFO, "decode", "JT/T 808 undecodable frame from %s (%d in a row): %s",
                                self.peer, self.garbage_frames, exc)
            if self.garbage_frames >= server.max_garbage_frames:
                raise _Drop(f"{self.garbage_frames} undecodable frames in a row, last: {exc}") from None
            return
        self.garbage_frames = 0
        self.garbage_bytes = 0
        if msg.problems:
            server.counters["lenient_frames"] += 1
            server.throttle.log(log, logging.INFO, "lenient", "JT/T 808 frame %#06x from %s (terminal %s) "
                                "accepted despite: %s", msg.msg_id, self.peer, msg.terminal, "; ".join(msg.problems))
        if not msg.is_packet:
            await self._message(msg)
            return
        if not self._trusted(msg):
            self._refuse(msg)
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
            self.packet_bytes -= sum(len(p.body) for p in parts.values())
            parts.clear()  # a new message started before the old one completed
            self.packet_due.pop(key, None)
        due = self.packet_due.setdefault(key, [0.0, 0])
        due[0] = asyncio.get_running_loop().time() + self.server.packet_timeout_s  # still coming: wait again
        old = parts.get(part.packet_index)
        if old is not None:
            self.packet_bytes -= len(old.body)
        parts[part.packet_index] = part
        self.packet_bytes += len(part.body)
        if sum(len(p) for p in self.packets.values()) > MAX_PENDING_PACKETS:
            raise _Drop(f"more than {MAX_PENDING_PACKETS} subpackages pending")
        if self.packet_bytes > self.server.max_pending_packet_bytes:
            raise _Drop(f"subpackages pending hold over {self.server.max_pending_packet_bytes} bytes")
        if len(parts) < (part.packet_total or 0):
            return None
        del self.packets[key]
        self.packet_due.pop(key, None)
        self.packet_bytes -= sum(len(p.body) for p in parts.values())
        try:
            return jt808.join_packets(list(parts.values()))
        except jt808.DecodeError as exc:
            self.server.counters["decode_errors"] += 1
            self.server.throttle.log(log, logging.INFO, "join", "JT/T 808 subpackages from %s do not join: %s",
                                     self.peer, exc)
            return None

    def _ask_missing(self, now: float) -> None:
        """Ask again (0x8003) for the missing subpackages of each message overdue; give up after
        `packet_retries` requests."""
        server = self.server
        for key, due in list(self.packet_due.items()):
            if due[0] > now:
                continue
            parts = self.packets.get(key, {})
            if not parts or due[1] >= server.packet_retries:
                self.packet_due.pop(key, None)
                if self.packets.pop(key, None):
                    self.packet_bytes -= sum(len(p.body) for p in parts.values())
                    server.counters["incomplete_messages"] += 1
                    server.warn("incomplete", "JT/T 808 %s: message %#06x dropped, %d of %d subpackages after %d "
                                "retransmit requests", self.peer, key[1], len(parts),
                                next(iter(parts.values())).packet_total or 0, due[1])
                continue
            some = next(iter(parts.values()))
            total = some.packet_total or 0
            missing = [i for i in range(1, total + 1) if i not in parts]
            first_serial = (some.serial - ((some.packet_index or 1) - 1)) & 0xFFFF  # packets carry consecutive serials
            body = jt808.encode_retransmit_body(first_serial, missing[:255], self.version)
            self._send(jt808.encode(jt808.MSG_RETRANSMIT, self.terminal or key[0], self._next_serial(), body,
                                    self.version))
            server.counters["retransmit_requests"] += 1
            due[0], due[1] = now + server.packet_timeout_s, due[1] + 1

    def send_command(self, cmd: Command) -> None:
        serial = self._next_serial()
        assert self.terminal is not None
        self._send(jt808.encode(cmd.msg_id, self.terminal, serial, cmd.body(self.version), self.version))
        self.server.commands.sent(cmd, serial, time.time())

    # -------------------------------------------------------------- messages

    def _next_serial(self) -> int:
        serial = self.serial
        self.serial = (serial + 1) & 0xFFFF
        return serial

    def _send(self, data: bytes) -> None:
        self.server.counters["replies"] += 1
        self.writer.write(data)

    def _reply(self, msg: jt808.Message, result: int) -> None:
        self._send(
            jt808.encode_general_reply(
                msg.terminal, self._next_serial(), msg.serial, msg.msg_id, result, msg.version
            )
        )

    def _trusted(self, msg: jt808.Message) -> bool:
        """Whether this message comes from the terminal this connection authenticated as."""
        terminal = msg.terminal
        if terminal == self.terminal:
            return True
        return self.key is not None and terminal_key(terminal) == self.key

    def _refuse(self, msg: jt808.Message) -> None:
        stats = self.server.counters
        stats["refused_unauthenticated"] += 1
        stats["rejected"] += 1
        self.server.warn("unauthenticated", "JT/T 808 refused %#06x from %s (terminal %s): not authenticated "
                         "on this connection", msg.msg_id, self.peer, msg.terminal)
        if msg.msg_id != jt808.MSG_TERMINAL_REPLY:
            self._reply(msg, jt808.RESULT_FAIL)

    async def _message(self, msg: jt808.Message, acked: bool = False) -> None:
        """Handle one whole message; acked: its subpackages were already answered one by one."""
        server = self.server
        mid = msg.msg_id
        if mid == jt808.MSG_REGISTER:
            await self._register(msg)
            return
        if mid == jt808.MSG_AUTH:
            await self._authenticate(msg)
            return
        if not self._trusted(msg):
            self._refuse(msg)
            return

        def reply(result: int) -> None:
            if not acked:
                self._reply(msg, result)

        if mid in (jt808.MSG_LOCATION, jt808.MSG_LOCATION_BATCH):
            device = self.device
            for position in msg.positions:
                server.counters["positions"] += 1
                if position.device != device:
                    position = position._replace(device=device)
                await server._call(server.on_position, position)
            reply(jt808.RESULT_OK)
        elif mid == jt808.MSG_HEARTBEAT:
            reply(jt808.RESULT_OK)
        elif mid == jt808.MSG_UNREGISTER:
            reply(jt808.RESULT_OK)
            server.deregistered(self.key or "")
            await server._event("unregistered", msg.terminal, {"peer": self.peer})
        elif mid == jt808.MSG_TERMINAL_REPLY:  # the terminal answering one of our frames: nothing to answer
            f = msg.fields
            if f.get("reply_id") not in (jt808.MSG_PLATFORM_REPLY, jt808.MSG_REGISTER_REPLY, jt808.MSG_RETRANSMIT):
                server.commands.answered(self.key or "", f["reply_serial"], f["reply_id"], time.time(),
                                         result=f["result"])
                server._save_commands()
        elif mid == jt808.MSG_POSITION_REPLY:  # answer to a position query: a fix like any other
            for position in msg.positions:
                server.counters["positions"] += 1
                position = position._replace(device=self.device)
                server.commands.answered(self.key or "", msg.fields["reply_serial"], jt808.MSG_POSITION_QUERY,
                                         time.time(), position=position)
                server._save_commands()
                await server._call(server.on_position, position)
        else:
            reply(jt808.RESULT_UNSUPPORTED)

    def _register_reply(self, msg: jt808.Message, result: int, code: str = "") -> None:
        self._send(jt808.encode_register_reply(msg.terminal, self._next_serial(), msg.serial, result, code,
                                               msg.version))

    async def _register(self, msg: jt808.Message) -> None:
        server = self.server
        terminal = msg.terminal
        key = terminal_key(terminal)
        self.claimed = self.claimed or key
        if not server.registration_allowed(self):
            await self.writer.drain()
            raise _Drop("registrations over the limits")
        if key in server.registry:
            result, code, why = server.register_fleet_terminal(self, key, msg.fields)
            if result != jt808.REGISTER_OK:
                mismatch = result != jt808.REGISTER_TERMINAL_TAKEN
                server.counters["registrations_mismatched" if mismatch else "registrations_refused"] += 1
                server.counters["rejected"] += 1
                server.warn("register-refused", "JT/T 808 registration of fleet terminal %s from %s refused "
                            "(result %d): %s", terminal, self.peer, result, why)
                self._register_reply(msg, result)
                await server._event("registration_refused", terminal, {"peer": self.peer, "result": result,
                                                                       "why": why, **msg.fields})
                return
        elif key in server._issued:
            server.counters["registrations_refused"] += 1
            server.counters["rejected"] += 1
            self._register_reply(msg, jt808.REGISTER_TERMINAL_TAKEN)
            return
        elif server.accept_unknown and server.unknown_allowed(self, key):
            code = server.issue_code(key)
            server.counters["unknown_terminals"] += 1
            server.warn("unknown", "JT/T 808 unknown terminal %s registered from %s (flagged, not trusted)",
                        terminal, self.peer)
            await server._event("unknown_terminal", terminal, {"peer": self.peer, **msg.fields})
        else:
            if not server.accept_unknown:
                server.counters["rejected"] += 1
                server.warn("unknown", "JT/T 808 refused registration of unknown terminal %s from %s",
                            terminal, self.peer)
            self._register_reply(msg, jt808.REGISTER_NO_VEHICLE)
            return
        server.counters["registrations"] += 1
        self._register_reply(msg, jt808.REGISTER_OK, code)
        await server._event("registered", terminal, {"peer": self.peer, **msg.fields})

    async def _authenticate(self, msg: jt808.Message) -> None:
        server = self.server
        key = terminal_key(msg.terminal)
        self.claimed = self.claimed or key
        given = msg.fields.get("auth_code", "")
        # one connection speaks for one terminal: a second one's code does not switch it
        ok = self.key in (None, key) and server.code_matches(self, key, given)
        if not ok:
            self.auth_failures += 1
            server.counters["auth_failures"] += 1
            server.counters["rejected"] += 1
            server.warn("auth", "JT/T 808 auth failed for terminal %s from %s (%d on this connection)",
                        msg.terminal, self.peer, self.auth_failures)
            await server._event("auth_failed", msg.terminal, {"peer": self.peer})
            self._reply(msg, jt808.RESULT_FAIL)
            if self.auth_failures >= server.max_auth_failures:
                server.counters["closed_after_auth_failures"] += 1
                await self.writer.drain()
                raise _Drop(f"{self.auth_failures} failed authentications")
            return
        first = self.key is None
        self.terminal, self.key, self.version = msg.terminal, key, msg.version
        self.device = server.directory.device_id(msg.terminal)
        self._reply(msg, jt808.RESULT_OK)
        if first:
            server.counters["authenticated_connections"] += 1
            server.authenticated(self)  # after the reply: queued commands follow it
