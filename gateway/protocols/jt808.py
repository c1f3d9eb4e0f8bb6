"""JT/T 808 (2011 / 2013 / 2019) frame codec: bytes in, `Message` out, and platform replies back.

Pure: no I/O. `decode` takes one wire frame with its 0x7e delimiters; `split_frames` cuts a TCP
byte stream into such frames. Every malformed input raises `DecodeError` and nothing else, because
the server feeds it bytes from untrusted terminals.

Liberal in what it accepts, as the public decoders are, because a gateway that refuses a vendor's
frames loses that vendor's fleet: a terminal number that is not BCD is kept as hex; a body-length
field that disagrees with the body, or a checksum that does not match, is accepted when the other of
the two checks holds; additional items that run past the body keep the basic position; a short
register body and a 2019 auth body in the 2013 layout are read as far as they go. Each such
leniency is named in `Message.problems` (and, for a location's extras, in `extras["malformed"]`).

Platform commands: `encode_text_body` (0x8300; the 2019 layout adds a type byte), 0x8201 position query
(empty body; the terminal answers 0x0201 = reply serial + location body), `encode_params_body` (0x8103,
typed by `PARAMETERS`), `encode_retransmit_body` (0x8003: the first packet's serial and the missing
packet numbers; the count is a BYTE in 2013, a WORD in 2019). `decode` parses these too, and the
terminal's 0x0001 answer into reply serial, reply id and result.

Wire layout (after unescaping 0x7d 0x02 -> 0x7e and 0x7d 0x01 -> 0x7d):

    msg_id WORD | attr WORD | [version BYTE] | terminal BCD[6 or 10] | serial WORD
    | [packet_total WORD | packet_index WORD] | body | xor checksum BYTE

attr: bits 0-9 body length, 10-12 encryption, 13 subpackage, 14 version flag (2019 header).
Local times on the wire are GMT+8; they become timezone-aware datetimes here, once.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import reduce
from typing import Any

from core.model import Position

# Terminal -> platform
MSG_TERMINAL_REPLY = 0x0001
MSG_HEARTBEAT = 0x0002
MSG_UNREGISTER = 0x0003
MSG_REGISTER = 0x0100
MSG_AUTH = 0x0102
MSG_LOCATION = 0x0200
MSG_POSITION_REPLY = 0x0201
MSG_LOCATION_BATCH = 0x0704
# Platform -> terminal
MSG_PLATFORM_REPLY = 0x8001
MSG_RETRANSMIT = 0x8003
MSG_REGISTER_REPLY = 0x8100
MSG_SET_PARAMS = 0x8103
MSG_POSITION_QUERY = 0x8201
MSG_TEXT = 0x8300

# 0x8001 / 0x0001 result codes
RESULT_OK = 0
RESULT_FAIL = 1
RESULT_BAD_MESSAGE = 2
RESULT_UNSUPPORTED = 3
RESULT_ALARM_ACK = 4
# 0x8100 result codes
REGISTER_OK = 0
REGISTER_VEHICLE_TAKEN = 1
REGISTER_NO_VEHICLE = 2
REGISTER_TERMINAL_TAKEN = 3
REGISTER_NO_TERMINAL = 4

# 0x8300 text flags. 2013: bit 0 emergency, 2 display, 3 read aloud (TTS), 4 advertising screen,
# 5 CAN fault code. 2019: bits 0-1 1 service / 2 emergency / 3 notification, 2 display, 3 TTS; the
# 2019 body adds a type byte (1 notification, 2 service) after the flags.
TEXT_EMERGENCY = 1 << 0
TEXT_DISPLAY = 1 << 2
TEXT_TTS = 1 << 3
TEXT_TYPE_NOTIFICATION = 1
TEXT_TYPE_SERVICE = 2
MAX_TEXT_BYTES = 1000  # GBK bytes of one 0x8300 text: its body must fit one frame (1023) with flags

# Status bits of a 0x0200 body
STATUS_FIX = 1 << 1
STATUS_SOUTH = 1 << 2
STATUS_WEST = 1 << 3

ATTR_SUBPACKAGE = 1 << 13
ATTR_VERSION = 1 << 14
MAX_BODY = 0x3FF

CST = timezone(timedelta(hours=8), "UTC+08:00")  # the protocol's local time

_HEAD = struct.Struct(">HH")
_HEAD_2013 = struct.Struct(">HH6sH")
_HEAD_2019 = struct.Struct(">HHB10sH")
_PACKET = struct.Struct(">HH")
_LOCATION = struct.Struct(">IIIIHHH6s")  # alarm, status, lat, lon, altitude, speed, course, time
_REPLY = struct.Struct(">HHB")  # reply serial, reply msg id, result
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_BATCH_HEAD = struct.Struct(">HB")
_REGISTER_2011 = struct.Struct(">HH5s8s7sB")
_REGISTER_2013 = struct.Struct(">HH5s20s7sB")
_REGISTER_2019 = struct.Struct(">HH11s30s30sB")
_REGISTER_REPLY = struct.Struct(">HB")
_AREA = struct.Struct(">BI")
_ZONE = struct.Struct(">BIB")
_ROUTE_TIME = struct.Struct(">IHB")


class DecodeError(ValueError):
    """A frame that is not valid JT/T 808; the message says why."""


@dataclass(slots=True)
class Message:
    """One decoded JT/T 808 message."""

    msg_id: int
    terminal: str  # BCD digits as encoded: 12 (2011/2013) or 20 (2019), leading zeros kept; hex if not BCD
    serial: int
    version: int = 0  # 0 for 2011/2013 headers, the protocol version byte (1) for 2019
    body: bytes = b""
    positions: list[Position] = field(default_factory=list)
    packet_total: int | None = None
    packet_index: int | None = None  # 1-based
    encrypted: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # deviations from the standard that were accepted, see the module doc

    @property
    def is_packet(self) -> bool:
        """True for one subpackage of a longer message: body and fields wait for `join_packets`."""
        return self.packet_total is not None


# ---------------------------------------------------------------- framing and escaping


_XOR_WORDS: dict[int, struct.Struct] = {}  # padded length -> "<nQ" layout
_ZERO_PAD = tuple(bytes(k) for k in range(8))


def _xor(data: bytes) -> int:
    """XOR of all bytes. Runs for every frame, so no per-byte Python loop: pad with zero bytes (they
    change no XOR) to whole 64-bit words, unpack those in C, XOR them, and fold the last word."""
    data += _ZERO_PAD[-len(data) & 7]
    words = _XOR_WORDS.get(len(data))
    if words is None:
        words = _XOR_WORDS[len(data)] = struct.Struct(f"<{len(data) >> 3}Q")
    x = reduce(operator.xor, words.unpack(data), 0)
    x ^= x >> 32
    x ^= x >> 16
    x ^= x >> 8
    return x & 0xFF


def unescape(data: bytes) -> bytes:
    """0x7d 0x02 -> 0x7e, 0x7d 0x01 -> 0x7d; any other byte after 0x7d is an error."""
    if b"\x7d" not in data:
        return data
    parts = data.split(b"\x7d")
    out = [parts[0]]
    for part in parts[1:]:
        if not part:
            raise DecodeError("0x7d escape byte without a following 0x01/0x02")
        code = part[0]
        if code == 0x02:
            out.append(b"\x7e")
        elif code == 0x01:
            out.append(b"\x7d")
        else:
            raise DecodeError(f"invalid escape sequence 7d{code:02x}")
        out.append(part[1:])
    return b"".join(out)


def escape(data: bytes) -> bytes:
    """Inverse of `unescape` (0x7d first, so the 0x7d of a 0x7e escape is not escaped again)."""
    return data.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02")


def split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Cut complete 0x7e ... 0x7e frames out of a TCP byte stream.

    Returns (frames, remainder): the remainder is the start of an unfinished frame (to be prefixed
    to the next read), or b"" when the buffer held no frame start. Bytes outside frames are
    dropped; an empty "7e7e" pair means an end delimiter followed by a start delimiter.
    """
    frames: list[bytes] = []
    find = buffer.find
    start = find(0x7E)
    while start >= 0:
        end = find(0x7E, start + 1)
        if end < 0:
            return frames, buffer[start:]
        if end == start + 1:  # "7e7e": the first one closed something we never saw
            start = end
            continue
        frames.append(buffer[start : end + 1])
        start = find(0x7E, end + 1)
    return frames, b""


# ---------------------------------------------------------------- decoding


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_TERMINAL_CACHE: dict[bytes, str] = {}  # a server hears the same terminals all day: convert each once


def _terminal_number(raw: bytes) -> str:
    """BCD digits; a number that is not BCD (some vendors write hex) is kept as its hex digits."""
    terminal = _TERMINAL_CACHE.get(raw)
    if terminal is None:
        terminal = raw.hex()
        if len(_TERMINAL_CACHE) >= 100_000:
            _TERMINAL_CACHE.clear()
        _TERMINAL_CACHE[raw] = terminal
    return terminal


_TIME_CACHE: dict[bytes, datetime] = {}  # many terminals report the same second: parse it once


def _bcd_time(raw: bytes) -> datetime:
    cached = _TIME_CACHE.get(raw)
    if cached is not None:
        return cached
    digits = raw.hex()
    if not digits.isdigit():
        raise DecodeError(f"location time: invalid BCD {digits}")
    try:
        when = datetime(
            2000 + int(digits[0:2]),
            int(digits[2:4]),
            int(digits[4:6]),
            int(digits[6:8]),
            int(digits[8:10]),
            int(digits[10:12]),
            tzinfo=CST,
        )
    except ValueError as exc:
        raise DecodeError(f"location time {digits}: {exc}") from None
    if len(_TIME_CACHE) >= 4096:
        _TIME_CACHE.clear()
    _TIME_CACHE[raw] = when
    return when


def decode(frame: bytes) -> Message:
    """Decode one frame (with delimiters and escaping); raise DecodeError if it is not valid."""
    if len(frame) < 2 or frame[0] != 0x7E or frame[-1] != 0x7E:
        raise DecodeError("frame must start and end with 0x7e")
    data = frame[1:-1]
    if b"\x7e" in data:
        raise DecodeError("0x7e inside a frame")
    if b"\x7d" in data:
        data = unescape(data)
    if len(data) < 13:
        raise DecodeError(f"frame too short: {len(data)} bytes unescaped")
    checksum_ok = not _xor(data)  # the XOR of the data and its checksum byte is 0 exactly when it matches

    msg_id, attr, phone, serial = _HEAD_2013.unpack_from(data)
    if attr & ATTR_VERSION:
        if len(data) < 18:
            raise DecodeError(f"2019 frame too short: {len(data)} bytes unescaped")
        _, _, version, phone, serial = _HEAD_2019.unpack_from(data)
        offset = 17
    else:
        version = 0
        offset = 12
    terminal = _TERMINAL_CACHE.get(phone) or _terminal_number(phone)
    packet_total = packet_index = None
    if attr & ATTR_SUBPACKAGE:
        if len(data) < offset + 5:
            raise DecodeError("frame too short for its subpackage header")
        packet_total, packet_index = _PACKET.unpack_from(data, offset)
        if not 1 <= packet_index <= packet_total:
            raise DecodeError(f"subpackage index {packet_index} outside 1..{packet_total}")
        offset += 4
    body_len = attr & MAX_BODY
    problems: tuple[str, ...] = ()
    if len(data) - 1 - offset != body_len or not checksum_ok:
        problems = _frame_problems(data, offset, body_len, checksum_ok)
    encrypted = bool(attr & 0x1C00)
    body = data[offset:-1]
    if msg_id == MSG_LOCATION and packet_total is None and not encrypted:
        # the bulk of the traffic: parse it here, without the generic dispatch of _parse_body
        try:
            positions = [parse_location(body, terminal)]
        except DecodeError:
            raise
        except (struct.error, IndexError, ValueError, UnicodeError) as exc:
            raise DecodeError(f"body of {msg_id:#06x}: {exc}") from None
        return Message(msg_id, terminal, serial, version, body, positions, None, None, False, {}, problems)
    msg = Message(msg_id, terminal, serial, version, body, [], packet_total, packet_index, encrypted, {}, problems)
    if packet_total is None and not encrypted:
        _parse_body(msg)
    return msg


def _frame_problems(data: bytes, offset: int, body_len: int, checksum_ok: bool) -> tuple[str, ...]:
    """A frame fails the length check or the checksum: accepted when the other one holds (the frame's
    delimiters then say where it ends), refused when both fail."""
    actual = len(data) - 1 - offset
    if actual < 0:
        raise DecodeError(f"frame too short: no body after a {offset}-byte header")
    length = f"body length {actual} differs from header's {body_len}"
    checksum = f"checksum mismatch: computed {_xor(data[:-1]):02x}, frame has {data[-1]:02x}"
    if actual != body_len and not checksum_ok:
        raise DecodeError(f"{length} and {checksum}")
    return (length,) if actual != body_len else (checksum,)


def join_packets(packets: Sequence[Message]) -> Message:
    """Reassemble the subpackages of one message (any order) and parse the joined body.

    The result carries the serial of packet 1 and no packet fields.
    """
    if not packets:
        raise DecodeError("no subpackages to join")
    ordered = sorted(packets, key=lambda m: m.packet_index or 0)
    first = ordered[0]
    total = first.packet_total
    if any((m.msg_id, m.terminal, m.packet_total) != (first.msg_id, first.terminal, total) for m in ordered):
        raise DecodeError("subpackages belong to different messages")
    if total is None or [m.packet_index for m in ordered] != list(range(1, total + 1)):
        raise DecodeError(f"subpackages of {first.msg_id:#06x} incomplete or repeated")
    msg = Message(
        first.msg_id,
        first.terminal,
        first.serial,
        first.version,
        b"".join(m.body for m in ordered),
        encrypted=first.encrypted,
    )
    if not msg.encrypted:
        _parse_body(msg)
    return msg


def _parse_body(msg: Message) -> None:
    parser = _BODY_PARSERS.get(msg.msg_id)
    if parser is None:
        return
    try:
        parser(msg)
    except DecodeError:
        raise
    except (struct.error, IndexError, ValueError, UnicodeError) as exc:
        raise DecodeError(f"body of {msg.msg_id:#06x}: {exc}") from None


def _parse_location_msg(msg: Message) -> None:
    msg.positions = [parse_location(msg.body, msg.terminal)]


def _parse_batch(msg: Message) -> None:
    body = msg.body
    count, kind = _BATCH_HEAD.unpack_from(body)
    msg.fields = {"count": count, "type": kind}
    history = kind == 1
    positions = []
    offset = 3
    for i in range(count):
        problem = None
        if offset + 2 > len(body):
            problem = f"0x0704 batch: item {i + 1} of {count} missing"
        else:
            (size,) = _U16.unpack_from(body, offset)
            offset += 2
            if offset + size > len(body):
                problem = f"0x0704 batch: item {i + 1} length {size} past the body end"
        if problem is not None:
            if not positions:
                raise DecodeError(problem)
            msg.problems += (problem,)  # keep the items that came whole
            break
        positions.append(parse_location(body[offset : offset + size], msg.terminal, history))
        offset += size
    msg.positions = positions


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00").decode("gbk", errors="replace").strip()


def _parse_register(msg: Message) -> None:
    body = msg.body
    if msg.version >= 1:
        layout = _REGISTER_2019
    elif len(body) < _REGISTER_2013.size:
        layout = _REGISTER_2011
    else:
        layout = _REGISTER_2013
    if len(body) < layout.size:  # some terminals send a shorter body: read what is there
        msg.problems += (f"register body of {len(body)} bytes, shorter than the {layout.size} of its layout",)
        body = body.ljust(layout.size, b"\x00")
    province, city, maker, model, terminal_id, color = layout.unpack_from(body)
    msg.fields = {
        "province": province,
        "city": city,
        "maker": _text(maker),
        "model": _text(model),
        "terminal_id": _text(terminal_id),
        "plate_color": color,
        "plate": _text(body[layout.size :]),
    }


def _parse_auth(msg: Message) -> None:
    body = msg.body
    if msg.version >= 1 and body and len(body) >= 1 + body[0] + 35:
        size = body[0]
        msg.fields = {
            "auth_code": _text(body[1 : 1 + size]),
            "imei": _text(body[1 + size : 16 + size]),
            "software_version": _text(body[16 + size : 36 + size]),
        }
    else:  # 2011/2013; also a 2019 terminal that sends the bare code
        if msg.version >= 1:
            msg.problems += ("2019 auth body in the 2013 layout (the bare code)",)
        msg.fields = {"auth_code": _text(body)}


def _parse_reply(msg: Message) -> None:
    reply_serial, reply_id, result = _REPLY.unpack_from(msg.body)
    msg.fields = {"reply_serial": reply_serial, "reply_id": reply_id, "result": result}


def _parse_register_reply(msg: Message) -> None:
    reply_serial, result = _REGISTER_REPLY.unpack_from(msg.body)
    msg.fields = {
        "reply_serial": reply_serial,
        "result": result,
        "auth_code": _text(msg.body[_REGISTER_REPLY.size :]),
    }


def _parse_position_reply(msg: Message) -> None:
    (reply_serial,) = _U16.unpack_from(msg.body)
    msg.fields = {"reply_serial": reply_serial}
    msg.positions = [parse_location(msg.body[2:], msg.terminal)]


def _parse_text(msg: Message) -> None:
    body = msg.body
    if msg.version >= 1:  # 2019: flags, type, text
        msg.fields = {"flags": body[0], "type": body[1], "text": _text(body[2:])}
    else:
        msg.fields = {"flags": body[0], "type": None, "text": _text(body[1:])}


def _parse_set_params(msg: Message) -> None:
    body = msg.body
    count = body[0]
    params: dict[int, int | str] = {}
    offset = 1
    for i in range(count):
        if offset + 5 > len(body):
            raise DecodeError(f"0x8103: parameter {i + 1} of {count} missing")
        param, size = _PARAM_HEAD.unpack_from(body, offset)
        offset += 5
        value = body[offset : offset + size]
        if len(value) != size:
            raise DecodeError(f"0x8103: parameter {param:#06x} length {size} past the body end")
        offset += size
        params[param] = _param_value(param, value)
    if offset != len(body):
        raise DecodeError(f"0x8103: {len(body) - offset} bytes after its {count} parameters")
    msg.fields = {"params": params}


def _parse_retransmit(msg: Message) -> None:
    body = msg.body
    (original,) = _U16.unpack_from(body)
    if msg.version >= 1:  # 2019 widened the count to a WORD
        (count,) = _U16.unpack_from(body, 2)
        offset = 4
    else:
        count, offset = body[2], 3
    if len(body) != offset + 2 * count:
        raise DecodeError(f"0x8003: {count} packet ids need {offset + 2 * count} bytes, body has {len(body)}")
    ids = [_U16.unpack_from(body, offset + 2 * k)[0] for k in range(count)]
    msg.fields = {"original_serial": original, "packet_ids": ids}


_BODY_PARSERS = {
    MSG_LOCATION: _parse_location_msg,
    MSG_POSITION_REPLY: _parse_position_reply,
    MSG_TEXT: _parse_text,
    MSG_SET_PARAMS: _parse_set_params,
    MSG_RETRANSMIT: _parse_retransmit,
    MSG_LOCATION_BATCH: _parse_batch,
    MSG_REGISTER: _parse_register,
    MSG_AUTH: _parse_auth,
    MSG_TERMINAL_REPLY: _parse_reply,
    MSG_PLATFORM_REPLY: _parse_reply,
    MSG_REGISTER_REPLY: _parse_register_reply,
}


# ------------------------------------------------------------- location body and extras


def _area(value: bytes) -> dict[str, Any]:
    if len(value) == 1:
        return {"position_type": value[0], "area_id": None}
    kind, area = _AREA.unpack(value)
    return {"position_type": kind, "area_id": area}


def _zone(value: bytes) -> dict[str, Any]:
    kind, area, direction = _ZONE.unpack(value)
    return {"position_type": kind, "area_id": area, "direction": "out" if direction else "in"}


def _route_time(value: bytes) -> dict[str, Any]:
    route, seconds, result = _ROUTE_TIME.unpack(value)
    return {"route_id": route, "drive_time_s": seconds, "result": "too_long" if result else "too_short"}


def _u32(value: bytes) -> int:
    return _U32.unpack(value)[0]


def _u16(value: bytes) -> int:
    return _U16.unpack(value)[0]


# id -> (name, expected length or None for variable, converter)
_EXTRAS: dict[int, tuple[str, int | None, Any]] = {
    0x01: ("mileage_km", 4, lambda v: _u32(v) / 10),
    0x02: ("fuel_l", 2, lambda v: _u16(v) / 10),
    0x03: ("speed_record_kmh", 2, lambda v: _u16(v) / 10),
    0x04: ("alarm_event_id", 2, _u16),
    0x11: ("overspeed_alarm", None, _area),
    0x12: ("zone_route_alarm", 6, _zone),
    0x13: ("route_time_alarm", 7, _route_time),
    0x25: ("ext_status", 4, _u32),
    0x2A: ("io_status", 2, _u16),
    0x2B: ("analog", 4, _u32),  # bits 0-15 AD0, 16-31 AD1
    0x30: ("signal", 1, lambda v: v[0]),
    0x31: ("satellites", 1, lambda v: v[0]),
}


def _parse_extras(body: bytes, offset: int) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    end = len(body)
    while offset < end:
        if offset + 2 > end or offset + 2 + body[offset + 1] > end:
            # the basic position is whole: keep it and the items before, flag the rest
            extras["malformed"] = _malformed_extras(body, offset)
            break
        item, size = body[offset], body[offset + 1]
        offset += 2
        value = body[offset : offset + size]
        offset += size
        known = _EXTRAS.get(item)
        if known is not None and (known[1] is None or known[1] == size) and (item != 0x11 or size in (1, 5)):
            extras[known[0]] = known[2](value)
        else:  # unknown id, or a known id with a length the standard does not give it
            extras.setdefault("raw", {})[f"0x{item:02x}"] = value.hex()
    return extras


def _malformed_extras(body: bytes, offset: int) -> str:
    rest = body[offset:]
    if len(rest) < 2:
        why = "additional item header truncated"
    else:
        why = f"additional item {rest[0]:#04x} length {rest[1]} past the body end"
    return f"{why} at byte {offset}; {len(rest)} bytes kept as raw: {rest[:64].hex()}"


_new_tuple = tuple.__new__
# parse_location fills Position's tuple by position: fail at import, not with swapped fields, if they change
if Position._fields != ("lat", "lon", "time", "speed_kmh", "course", "altitude_m", "alarm", "status", "device",
                        "valid", "extras", "history"):
    raise ImportError("jt808.parse_location no longer matches the fields of core.model.Position")


def parse_location(body: bytes, device: str = "", history: bool = False) -> Position:
    """Parse a 0x0200 location body (also the items of 0x0704) into a Position."""
    if len(body) < 28:
        raise DecodeError(f"location body too short: {len(body)} bytes, need 28")
    alarm, status, lat, lon, altitude, speed, course, when = _LOCATION.unpack_from(body)
    # This runs for every fix, so the Position tuple is built directly, fields in Position's order:
    # Position(...) would only add its time-zone check, and _bcd_time's times are always CST-aware.
    return _new_tuple(Position, (
        -lat / 1e6 if status & STATUS_SOUTH else lat / 1e6,  # lat
        -lon / 1e6 if status & STATUS_WEST else lon / 1e6,  # lon
        _TIME_CACHE.get(when) or _bcd_time(when),  # time
        speed / 10,  # speed_kmh
        float(course),  # course
        float(altitude),  # altitude_m
        alarm,
        status,
        device,
        status & STATUS_FIX != 0,  # valid
        _parse_extras(body, 28) if len(body) > 28 else {},  # extras
        history,
    ))


# ---------------------------------------------------------------- encoding


def _bcd_terminal(terminal: str, version: int) -> bytes:
    """BCD digits, or the hex a terminal with a non-BCD number sent (replies echo it as it came)."""
    width = 20 if version >= 1 else 12
    if len(terminal) > width or not _HEX_DIGITS.issuperset(terminal):
        raise ValueError(f"terminal number {terminal!r} must be at most {width} decimal (or hex) digits")
    return bytes.fromhex(terminal.rjust(width, "0"))


def encode(
    msg_id: int,
    terminal: str,
    serial: int,
    body: bytes = b"",
    version: int = 0,
    packet: tuple[int, int] | None = None,
) -> bytes:
    """Build one wire frame: header, body, checksum, escaping and 0x7e delimiters.

    version >= 1 writes the 2019 header (version flag, version byte, 10-byte BCD terminal);
    packet=(total, index) sets the subpackage flag and fields.
    """
    if len(body) > MAX_BODY:
        raise ValueError(f"body of {len(body)} bytes exceeds {MAX_BODY}; split it into packets")
    attr = len(body) | (ATTR_SUBPACKAGE if packet else 0)
    if version >= 1:
        head = _HEAD.pack(msg_id, attr | ATTR_VERSION) + bytes((version,))
    else:
        head = _HEAD.pack(msg_id, attr)
    parts = [head, _bcd_terminal(terminal, version), _U16.pack(serial & 0xFFFF)]
    if packet:
        parts.append(_PACKET.pack(*packet))
    parts.append(body)
    data = b"".join(parts)
    return b"\x7e" + escape(data + bytes((_xor(data),))) + b"\x7e"


def encode_general_reply(
    terminal: str, serial: int, reply_serial: int, reply_id: int, result: int, version: int = 0
) -> bytes:
    """0x8001 platform general reply."""
    body = _REPLY.pack(reply_serial & 0xFFFF, reply_id, result)
    return encode(MSG_PLATFORM_REPLY, terminal, serial, body, version)


def encode_register_reply(
    terminal: str, serial: int, reply_serial: int, result: int, auth_code: str, version: int = 0
) -> bytes:
    """0x8100 register reply; the auth code is only sent when result is 0 (success)."""
    body = _REGISTER_REPLY.pack(reply_serial & 0xFFFF, result)
    if result == REGISTER_OK:
        body += auth_code.encode("gbk")
    return encode(MSG_REGISTER_REPLY, terminal, serial, body, version)


def _to_cst_bcd(when: datetime) -> bytes:
    local = when.astimezone(CST)
    return bytes.fromhex(local.strftime("%y%m%d%H%M%S"))


def encode_location_body(position: Position) -> bytes:
    """A 0x0200 body for `position` (terminal side: benches, simulators, tests)."""
    status = position.status & ~(STATUS_FIX | STATUS_SOUTH | STATUS_WEST) & 0xFFFFFFFF
    if position.valid:
        status |= STATUS_FIX
    if position.lat < 0:
        status |= STATUS_SOUTH
    if position.lon < 0:
        status |= STATUS_WEST
    body = _LOCATION.pack(
        position.alarm & 0xFFFFFFFF,
        status,
        round(abs(position.lat) * 1e6),
        round(abs(position.lon) * 1e6),
        min(max(round(position.altitude_m), 0), 0xFFFF),
        min(max(round(position.speed_kmh * 10), 0), 0xFFFF),
        round(position.course) % 360,
        _to_cst_bcd(position.time),
    )
    return body + encode_extras(position.extras)


def encode_extras(extras: Mapping[str, Any]) -> bytes:
    """Additional items for the simple numeric extras (mileage, fuel, signal, satellites, ...)."""
    out = []
    scaled = {
        "mileage_km": (0x01, _U32, 10),
        "fuel_l": (0x02, _U16, 10),
        "speed_record_kmh": (0x03, _U16, 10),
    }
    plain = {
        "alarm_event_id": (0x04, _U16),
        "ext_status": (0x25, _U32),
        "io_status": (0x2A, _U16),
        "analog": (0x2B, _U32),
    }
    for name, value in extras.items():
        if name in scaled:
            item, layout, factor = scaled[name]
            out.append(bytes((item, layout.size)) + layout.pack(round(value * factor)))
        elif name in plain:
            item, layout = plain[name]
            out.append(bytes((item, layout.size)) + layout.pack(int(value)))
        elif name == "signal":
            out.append(bytes((0x30, 1, int(value))))
        elif name == "satellites":
            out.append(bytes((0x31, 1, int(value))))
    return b"".join(out)


def encode_batch_body(positions: Iterable[Position], history: bool = False) -> bytes:
    """A 0x0704 body: type 1 (blind-area supplement) when history is true."""
    items = [encode_location_body(p) for p in positions]
    head = _BATCH_HEAD.pack(len(items), 1 if history else 0)
    return head + b"".join(_U16.pack(len(item)) + item for item in items)


def _fixed(text: str, size: int) -> bytes:
    raw = text.encode("gbk")
    if len(raw) > size:
        raise ValueError(f"{text!r} is longer than {size} bytes")
    return raw.ljust(size, b"\x00")


def encode_register_body(
    province: int = 0,
    city: int = 0,
    maker: str = "",
    model: str = "",
    terminal_id: str = "",
    plate_color: int = 0,
    plate: str = "",
    version: int = 0,
) -> bytes:
    """A 0x0100 body in the 2013 layout (2019 layout when version >= 1)."""
    sizes = (11, 30, 30) if version >= 1 else (5, 20, 7)
    return (
        _U16.pack(province)
        + _U16.pack(city)
        + _fixed(maker, sizes[0])
        + _fixed(model, sizes[1])
        + _fixed(terminal_id, sizes[2])
        + bytes((plate_color,))
        + plate.encode("gbk")
    )


def encode_auth_body(auth_code: str, imei: str = "", software_version: str = "", version: int = 0) -> bytes:
    """A 0x0102 body: the bare code (2013), or length + code + IMEI[15] + version[20] (2019)."""
    code = auth_code.encode("gbk")
    if version < 1:
        return code
    return bytes((len(code),)) + code + _fixed(imei, 15) + _fixed(software_version, 20)


# ---------------------------------------------------------------- platform commands


def encode_text_body(
    text: str, flags: int = TEXT_DISPLAY | TEXT_TTS, version: int = 0, text_type: int = TEXT_TYPE_NOTIFICATION
) -> bytes:
    """A 0x8300 body: flags and GBK text; the 2019 layout (version >= 1) has a type byte between them."""
    raw = text.encode("gbk")  # UnicodeEncodeError (a ValueError) names the character
    if not raw:
        raise ValueError("a driver text must not be empty")
    if len(raw) > MAX_TEXT_BYTES:
        raise ValueError(f"text of {len(raw)} GBK bytes exceeds {MAX_TEXT_BYTES}")
    head = bytes((flags & 0xFF, text_type & 0xFF)) if version >= 1 else bytes((flags & 0xFF,))
    return head + raw


# 0x8103 terminal parameters: name -> (id, kind); kind is a struct layout, or "s" for a GBK string
PARAMETERS: dict[str, tuple[int, str]] = {
    "heartbeat_interval_s": (0x0001, "I"),
    "tcp_reply_timeout_s": (0x0002, "I"),
    "tcp_retransmissions": (0x0003, "I"),
    "apn": (0x0010, "s"),
    "server_address": (0x0013, "s"),
    "server_tcp_port": (0x0018, "I"),
    "report_strategy": (0x0020, "I"),  # 0 timed, 1 by distance, 2 both
    "report_scheme": (0x0021, "I"),  # 0 by ACC state, 1 by login and ACC
    "no_driver_report_interval_s": (0x0022, "I"),
    "sleep_report_interval_s": (0x0027, "I"),
    "emergency_report_interval_s": (0x0028, "I"),
    "default_report_interval_s": (0x0029, "I"),
    "default_report_distance_m": (0x002C, "I"),
    "sleep_report_distance_m": (0x002E, "I"),
    "corner_angle_deg": (0x0030, "I"),
    "fence_radius_m": (0x0031, "H"),
    "max_speed_kmh": (0x0055, "I"),
    "overspeed_duration_s": (0x0056, "I"),
    "continuous_driving_limit_s": (0x0057, "I"),
    "daily_driving_limit_s": (0x0058, "I"),
    "min_rest_s": (0x0059, "I"),
    "max_parking_s": (0x005A, "I"),
    "odometer_hm": (0x0080, "I"),  # 1/10 km
    "province_id": (0x0081, "H"),
    "city_id": (0x0082, "H"),
    "plate": (0x0083, "s"),
    "plate_color": (0x0084, "B"),
}
_PARAM_KIND = {pid: kind for pid, kind in PARAMETERS.values()}
_PARAM_NAME = {pid: name for name, (pid, _) in PARAMETERS.items()}
_PARAM_HEAD = struct.Struct(">IB")
_PARAM_SIZE = {"I": 4, "H": 2, "B": 1}


def parameter_id(key: str) -> int:
    """A parameter's id from its name in PARAMETERS or its hex id ("0x0029"); ValueError if unknown."""
    if key in PARAMETERS:
        return PARAMETERS[key][0]
    try:
        pid = int(key, 16) if key.lower().startswith("0x") else None
    except ValueError:
        pid = None
    if pid is None or pid not in _PARAM_KIND:
        raise ValueError(f"unknown terminal parameter {key!r}; known: {', '.join(PARAMETERS)}")
    return pid


def parameter_name(pid: int) -> str:
    return _PARAM_NAME.get(pid, f"0x{pid:04x}")


def _param_value(pid: int, value: bytes) -> int | str:
    kind = _PARAM_KIND.get(pid)
    if kind == "s":
        return _text(value)
    if kind is not None and _PARAM_SIZE[kind] == len(value):
        return int.from_bytes(value, "big")
    return value.hex()  # an id we do not know, or a length its type does not have


def encode_params_body(params: Mapping[int, int | str]) -> bytes:
    """A 0x8103 body: the count, then (id DWORD, length BYTE, value) per parameter. Values are checked
    against each parameter's type (ValueError names the parameter)."""
    if not params:
        raise ValueError("no parameters to set")
    if len(params) > 255:
        raise ValueError(f"{len(params)} parameters exceed the 255 one message can carry")
    items = []
    for pid, value in params.items():
        kind = _PARAM_KIND.get(pid)
        name = parameter_name(pid)
        if kind is None:
            raise ValueError(f"unknown terminal parameter {name}")
        if kind == "s":
            raw = str(value).encode("gbk")
            if len(raw) > 255:
                raise ValueError(f"{name}: {len(raw)} bytes exceed 255")
        else:
            size = _PARAM_SIZE[kind]
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a whole number, got {value!r}") from None
            if not 0 <= number < 1 << (8 * size):
                raise ValueError(f"{name} must be 0 to {(1 << (8 * size)) - 1}, got {number}")
            raw = number.to_bytes(size, "big")
        items.append(_PARAM_HEAD.pack(pid, len(raw)) + raw)
    body = bytes((len(items),)) + b"".join(items)
    if len(body) > MAX_BODY:
        raise ValueError(f"parameters take {len(body)} bytes, over the {MAX_BODY} of one message")
    return body


def encode_retransmit_body(original_serial: int, packet_ids: Sequence[int], version: int = 0) -> bytes:
    """A 0x8003 body: the serial of the message's first packet and the 1-based indices to send again
    (count BYTE in 2013, WORD in 2019)."""
    limit = 0xFFFF if version >= 1 else 0xFF
    if not 0 < len(packet_ids) <= min(limit, (MAX_BODY - 4) // 2):
        raise ValueError(f"{len(packet_ids)} packet ids: need 1 to {min(limit, (MAX_BODY - 4) // 2)}")
    count = _U16.pack(len(packet_ids)) if version >= 1 else bytes((len(packet_ids),))
    return _U16.pack(original_serial & 0xFFFF) + count + b"".join(_U16.pack(i) for i in packet_ids)


def encode_terminal_reply_body(reply_serial: int, reply_id: int, result: int) -> bytes:
    """A 0x0001 body (terminal side: simulators, benches)."""
    return _REPLY.pack(reply_serial & 0xFFFF, reply_id, result)


__all__ = [
    "CST",
    "DecodeError",
    "Message",
    "decode",
    "encode",
    "encode_auth_body",
    "encode_batch_body",
    "encode_general_reply",
    "encode_location_body",
    "encode_params_body",
    "encode_retransmit_body",
    "encode_terminal_reply_body",
    "encode_text_body",
    "encode_register_body",
    "encode_register_reply",
    "escape",
    "join_packets",
    "parameter_id",
    "parameter_name",
    "parse_location",
    "split_frames",
    "unescape",
]
