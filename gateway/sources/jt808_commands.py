"""Platform commands to JT/T 808 terminals: what was asked, of whom, and what became of it.

A command (text to the driver's display 0x8300, position query 0x8201, terminal parameters 0x8103)
is asked of a vehicle; it waits in that terminal's queue until the terminal is connected and
authenticated, or until `ttl_s` passes (then it is `expired` and never sent). Once written to the
terminal it is `sent` under the serial of that frame, and the terminal's answer with that serial
(0x0001 general response, or 0x0201 for a position query) makes it `acknowledged` with the result;
no answer within `reply_timeout_s` makes it `failed`. States: queued -> sent -> acknowledged | failed,
or queued -> expired.

`CommandBook` only keeps this state (bounded: a few queued per terminal, a fixed number in all, the
oldest finished forgotten first); the JT/T 808 server does the sending, and saves `export()` to the
data directory after each change, so queued commands survive a restart (one sent but unanswered when
the gateway stopped is marked failed on restore: its answer can no longer be matched). Times are epoch seconds passed
in by the caller. `DriverTexts` turns an opening vehicle alert whose rule has a `driver_text` into a
text command: the rule config holds only the text, the rules stay pure.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from core.model import Alert, Position
from gateway.protocols import jt808
from gateway.throttle import LogThrottle

log = logging.getLogger(__name__)

CommandKind = Literal["text", "query", "params"]
CommandState = Literal["queued", "sent", "acknowledged", "failed", "expired"]
KINDS: tuple[str, ...] = ("text", "query", "params")
RESULTS = {jt808.RESULT_OK: "ok", jt808.RESULT_FAIL: "failed", jt808.RESULT_BAD_MESSAGE: "bad_message",
           jt808.RESULT_UNSUPPORTED: "unsupported", jt808.RESULT_ALARM_ACK: "alarm_acknowledged"}
_MSG_IDS = {"text": jt808.MSG_TEXT, "query": jt808.MSG_POSITION_QUERY, "params": jt808.MSG_SET_PARAMS}


class CommandRefused(Exception):
    """The command cannot be taken (bad arguments, unknown vehicle, queue full); the message says why.
    `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


@dataclass(slots=True)
class Command:
    id: str
    vehicle: str  # the device id positions carry: the fleet vehicle's id, or an unknown terminal's key
    key: str  # the terminal's canonical key (detectors.vehicle.identity.terminal_key)
    kind: CommandKind
    msg_id: int
    args: dict[str, Any]
    origin: str  # who asked: "api:<user>", "cli", "rule:<rule name>"
    created_at: float
    expires_at: float
    state: CommandState = "queued"
    serial: int | None = None
    sent_at: float | None = None
    done_at: float | None = None
    result: int | None = None
    reason: str | None = None  # why failed or expired
    position: dict[str, Any] | None = None  # a position query's answer
    params: dict[int, int | str] = field(default_factory=dict)  # params: id -> value, checked

    def body(self, version: int) -> bytes:
        """The message body for a terminal speaking `version` (the 2019 text layout differs)."""
        if self.kind == "text":
            return jt808.encode_text_body(self.args["text"], self.args.get("flags", jt808.TEXT_DISPLAY | jt808.TEXT_TTS),
                                          version)
        if self.kind == "params":
            return jt808.encode_params_body(self.params)
        return b""

    @property
    def finished(self) -> bool:
        return self.state in ("acknowledged", "failed", "expired")

    def to_state(self) -> dict[str, Any]:
        """Everything needed to restore it (`Command.from_state`)."""
        return {"id": self.id, "vehicle": self.vehicle, "key": self.key, "kind": self.kind, "args": self.args,
                "origin": self.origin, "created_at": self.created_at, "expires_at": self.expires_at,
                "state": self.state, "serial": self.serial, "sent_at": self.sent_at, "done_at": self.done_at,
                "result": self.result, "reason": self.reason, "position": self.position,
                "params": [[k, v] for k, v in self.params.items()]}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> Command:
        kind = d["kind"]
        if kind not in _MSG_IDS:
            raise ValueError(f"unknown command kind {kind!r}")
        return cls(id=str(d["id"]), vehicle=str(d["vehicle"]), key=str(d["key"]), kind=kind, msg_id=_MSG_IDS[kind],
                   args=dict(d["args"]), origin=str(d["origin"]), created_at=float(d["created_at"]),
                   expires_at=float(d["expires_at"]), state=d["state"], serial=d.get("serial"),
                   sent_at=d.get("sent_at"), done_at=d.get("done_at"), result=d.get("result"),
                   reason=d.get("reason"), position=d.get("position"),
                   params={int(k): v for k, v in d.get("params", [])})

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "vehicle": self.vehicle, "terminal": self.key, "kind": self.kind,
                "msg_id": f"0x{self.msg_id:04x}", "args": self.args, "origin": self.origin, "state": self.state,
                "serial": self.serial, "result": self.result,
                "result_name": RESULTS.get(self.result, str(self.result)) if self.result is not None else None,
                "reason": self.reason, "position": self.position, "created_at": _iso(self.created_at),
                "expires_at": _iso(self.expires_at), "sent_at": _iso(self.sent_at), "done_at": _iso(self.done_at)}


def command_args(kind: str, args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[int, int | str]]:
    """Checked arguments of a command (CommandRefused with the reason), and the parameters by id."""
    if kind == "text":
        text = args.get("text")
        if not isinstance(text, str) or not text.strip():
            raise CommandRefused("a text command needs a non-empty 'text'")
        emergency = bool(args.get("emergency", False))
        flags = jt808.TEXT_DISPLAY | jt808.TEXT_TTS | (jt808.TEXT_EMERGENCY if emergency else 0)
        try:
            jt808.encode_text_body(text, flags)
        except ValueError as exc:
            raise CommandRefused(f"text: {exc}") from None
        return {"text": text, "flags": flags}, {}
    if kind == "query":
        return {}, {}
    if kind == "params":
        given = args.get("params")
        if not isinstance(given, Mapping) or not given:
            raise CommandRefused("a params command needs 'params': {name or 0xID: value, ...}")
        try:
            params = {jt808.parameter_id(str(k)): v for k, v in given.items()}
            jt808.encode_params_body(params)
        except ValueError as exc:
            raise CommandRefused(f"params: {exc}") from None
        return {"params": {jt808.parameter_name(p): v for p, v in params.items()}}, params
    raise CommandRefused(f"unknown command kind {kind!r}; one of: {', '.join(KINDS)}")


class CommandBook:
    """Every command's state, keyed by id and, once sent, by (terminal key, serial)."""

    def __init__(self, *, ttl_s: float = 3600.0, reply_timeout_s: float = 60.0, max_commands: int = 10_000,
                 max_queued_per_terminal: int = 32) -> None:
        self.ttl_s = ttl_s
        self.reply_timeout_s = reply_timeout_s
        self.max_commands = max_commands
        self.max_queued_per_terminal = max_queued_per_terminal
        self._commands: collections.OrderedDict[str, Command] = collections.OrderedDict()  # oldest first
        self._queued: dict[str, collections.deque[Command]] = {}
        self._sent: dict[tuple[str, int], Command] = {}
        self._ids = itertools.count(1)
        self.version = 0  # bumped by every change: the server saves when it moved
        self.counters = collections.Counter({k: 0 for k in (
            "submitted", "refused", "sent", "acknowledged", "failed", "expired", "unmatched_replies")})

    def add(self, key: str, vehicle: str, kind: str, args: Mapping[str, Any], now: float, origin: str) -> Command:
        """Queue a command for terminal `key` (CommandRefused when its arguments are bad or it cannot be
        held)."""
        try:
            checked, params = command_args(kind, args)
            queue = self._queued.get(key)
            if queue is not None and len(queue) >= self.max_queued_per_terminal:
                raise CommandRefused(f"{vehicle} already has {len(queue)} commands waiting", 429)
            if len(self._commands) >= self.max_commands and not self._forget_finished():
                raise CommandRefused(f"{len(self._commands)} commands are waiting; none can be forgotten", 429)
        except CommandRefused:
            self.counters["refused"] += 1
            raise
        cmd = Command(id=f"c{next(self._ids)}", vehicle=vehicle, key=key, kind=kind,  # type: ignore[arg-type]
                      msg_id=_MSG_IDS[kind], args=checked, origin=origin, created_at=now,
                      expires_at=now + self.ttl_s, params=params)
        self._commands[cmd.id] = cmd
        self._queued.setdefault(key, collections.deque()).append(cmd)
        self.counters["submitted"] += 1
        self.version += 1
        return cmd

    def _forget_finished(self) -> bool:
        victim = next((c for c in self._commands.values() if c.finished), None)
        if victim is None:
            return False
        del self._commands[victim.id]
        return True

    def due(self, key: str, now: float) -> list[Command]:
        """The queued commands of terminal `key` to send now, oldest first (expired ones are marked)."""
        queue = self._queued.pop(key, None)
        if not queue:
            return []
        self.version += 1
        live = []
        for cmd in queue:
            if now >= cmd.expires_at:
                self._finish(cmd, "expired", now, reason=f"not delivered within {self.ttl_s:g} s")
            else:
                live.append(cmd)
        return live

    def requeue(self, cmds: list[Command]) -> None:
        """Commands that could not be written (the connection was closing) wait again, first in line."""
        for cmd in reversed(cmds):
            self._queued.setdefault(cmd.key, collections.deque()).appendleft(cmd)
        self.version += 1

    def sent(self, cmd: Command, serial: int, now: float) -> None:
        old = self._sent.pop((cmd.key, serial), None)
        if old is not None and old.state == "sent":  # a new connection's serials reached an unanswered one
            self._finish(old, "failed", now, reason="no answer before its serial was used again")
        cmd.state, cmd.serial, cmd.sent_at = "sent", serial, now
        self._sent[(cmd.key, serial)] = cmd
        self.counters["sent"] += 1
        self.version += 1

    def answered(self, key: str, serial: int, msg_id: int, now: float, *, result: int = jt808.RESULT_OK,
                 position: Position | None = None) -> Command | None:
        """The terminal answered the frame with `serial`: a 0x0001 for `msg_id`, or a 0x0201 (position)."""
        cmd = self._sent.get((key, serial))
        if cmd is None or cmd.msg_id != msg_id or cmd.state != "sent":
            self.counters["unmatched_replies"] += 1
            return None
        del self._sent[(key, serial)]
        cmd.result = result
        if position is not None:
            cmd.position = {"lat": position.lat, "lon": position.lon, "time": position.time.isoformat(),
                            "speed_kmh": position.speed_kmh, "course": position.course, "valid": position.valid}
        self._finish(cmd, "acknowledged", now)
        return cmd

    def sweep(self, now: float) -> None:
        """Expire queued commands past their expiry and fail sent ones unanswered for too long."""
        for key in [k for k, q in self._queued.items() if q and now >= q[0].expires_at]:
            queue = self._queued.pop(key)
            keep = collections.deque(c for c in queue if now < c.expires_at)
            for cmd in queue:
                if now >= cmd.expires_at:
                    self._finish(cmd, "expired", now, reason=f"not delivered within {self.ttl_s:g} s")
            if keep:
                self._queued[key] = keep
        for where, cmd in list(self._sent.items()):
            if cmd.sent_at is not None and now - cmd.sent_at >= self.reply_timeout_s:
                del self._sent[where]
                self._finish(cmd, "failed", now, reason=f"no answer within {self.reply_timeout_s:g} s")

    def _finish(self, cmd: Command, state: CommandState, now: float, reason: str | None = None) -> None:
        cmd.state, cmd.done_at, cmd.reason = state, now, reason
        self.counters[state] += 1
        self.version += 1

    def export(self, finished: int = 200) -> list[dict[str, Any]]:
        """The commands to save, oldest first: every pending one and the newest `finished` others."""
        done = [c for c in self._commands.values() if c.finished][-finished:] if finished else []
        keep = {c.id for c in done}
        return [c.to_state() for c in self._commands.values() if not c.finished or c.id in keep]

    def restore(self, saved: list[Mapping[str, Any]], now: float) -> None:
        """Take back `export()`ed commands (ValueError/KeyError/TypeError on a malformed entry). A command
        that was sent but not answered is failed: the serial its answer would carry is gone."""
        for d in saved:
            cmd = Command.from_state(d)
            if cmd.state == "sent":
                cmd.state, cmd.done_at, cmd.reason = "failed", now, "the gateway restarted before the terminal answered"
            elif cmd.state == "queued":
                self._queued.setdefault(cmd.key, collections.deque()).append(cmd)
            self._commands[cmd.id] = cmd
        numbers = [int(c.removeprefix("c")) for c in self._commands if c.removeprefix("c").isdigit()]
        self._ids = itertools.count(max(numbers, default=0) + 1)
        self.version += 1

    def get(self, command_id: str) -> Command | None:
        return self._commands.get(command_id)

    def of(self, vehicle: str) -> list[Command]:
        """A vehicle's commands, newest first."""
        return [c for c in reversed(self._commands.values()) if c.vehicle == vehicle]

    def pending(self) -> dict[str, int]:
        """Commands waiting per terminal key: queued, or sent and not yet answered."""
        out = {key: len(queue) for key, queue in self._queued.items() if queue}
        for key, _ in self._sent:
            out[key] = out.get(key, 0) + 1
        return out

    def stats(self) -> dict[str, int]:
        return {**self.counters, "tracked": len(self._commands),
                "queued": sum(len(q) for q in self._queued.values()), "awaiting_answer": len(self._sent)}


class DriverTexts:
    """An alert listener: when a vehicle rule with a `driver_text` opens, that text goes to the
    vehicle's display. `send(vehicle, kind, args, origin)` is the JT/T 808 server's `command`."""

    def __init__(self, texts: Mapping[str, str], send: Callable[..., Command]) -> None:
        self.texts = dict(texts)  # rule name (Alert.rule) -> text
        self.send = send
        self.counters = collections.Counter(sent=0, refused=0)
        self.throttle = LogThrottle(60.0)  # a full queue refuses every alert of that vehicle: log it once a minute

    @classmethod
    def from_rules(cls, rules: Any, send: Callable[..., Command]) -> DriverTexts:
        """From a fleet's `VehicleRulesConfig`: every rule that has a driver_text."""
        texts = {}
        for name in type(rules).model_fields:
            rule = getattr(rules, name)
            text = getattr(rule, "driver_text", None)
            if text and rule.enabled:
                texts[rule.name] = text
        return cls(texts, send)

    def after_alert(self, alert: Alert, outcome: object = None) -> None:
        if alert.state != "open" or alert.source != "vehicle" or alert.subject_kind != "vehicle":
            return
        text = self.texts.get(alert.rule)
        if text is None:
            return
        try:
            self.send(alert.subject_id, "text", {"text": text}, origin=f"rule:{alert.rule}")
            self.counters["sent"] += 1
        except CommandRefused as exc:
            self.counters["refused"] += 1
            self.throttle.log(log, logging.WARNING, "refused", "driver text for %s (%s) not queued: %s",
                              alert.subject_id, alert.rule, exc)
