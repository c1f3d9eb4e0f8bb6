"""JT/T 808 codec: real device frames, frames from the independent encoder, and fuzzing."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import jt808_client as ref
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.model import Position
from gateway.protocols import jt808

CST = timedelta(hours=8)
T0 = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)  # 15:08:09 in Beijing


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


# Frames captured from real terminals, as published in the Traccar project's Huabao (JT/T 808)
# decoder tests, and 2019 frames from the xtream-codec project's samples. Checksums are real.
REAL_HEARTBEAT = "7e0002000004304832546500b7ca7e"
REAL_REGISTER = (
    "7E0100002D013511221122000500000000373031303748422D5230334742440000000000000000000000"
    "3233363631303402CBD5424136383630387E"
)
REAL_AUTH = "7E0102000E013511221122000661757468656E7469636174696F6E3F7E"
REAL_LOCATION = (
    "7e0200002c00160128561400020000000000040001005de1f7065c6cef00000000000017011710044201040000"
    "a9002a02000030011b3101030c7e"
)
REAL_LOCATION_SW = (
    "7e020000220014012499170007000000000000400e012af16f02cbd2ba000000000000150101194257010400000077a97e"
)
REAL_BLIND_BATCH = (
    "7E070400F30303000002450064000401003A000000000000000301618AC606C31F20000000000029180514202847"
    "010400000000EB16000C00B28986061708003732585700060089FFFFFFFE003A000000000000000301618AE806C3"
    "1EB800000000009F180514202917010400000000EB16000C00B28986061708003732585700060089FFFFFFFE003A"
    "000000000000000301618AE806C31EB800000000009F180514202947010400000000EB16000C00B2898606170800"
    "3732585700060089FFFFFFFE003A000001000000080301618AE806C31EB800000000009F18051420300601040000"
    "0000EB16000C00B28986061708003732585700060089FFFFFFFED77E"
)
REAL_2019_LOCATION = (
    "7e02004026010000000001391234432900000000006f0000001601dc9a0707456246007b004200032501292233"
    "440202006401040000000c417e"
)
REAL_2019_BATCH = (
    "7e0704403f01000000000139123443290000000200001c000000010000000101d907f2073d336c029a00210059"
    "241029213903001c000000010000000101d907f3073d336d03090043005a241029213903f87e"
)
REAL_2019_REGISTER_REPLY = "7e8100400d01000000000139123443290000006f006f6b2e2e6f6b2e2e6f6bd27e"
REAL_2019_GENERAL_REPLY = "7e8001400501000000000139123443290000006f020000dc7e"


# ------------------------------------------------------------------ real frames


def test_real_heartbeat() -> None:
    msg = jt808.decode(hx(REAL_HEARTBEAT))
    assert (msg.msg_id, msg.terminal, msg.serial, msg.version) == (
        jt808.MSG_HEARTBEAT,
        "043048325465",
        0xB7,
        0,
    )
    assert msg.body == b"" and msg.positions == [] and msg.packet_total is None and not msg.encrypted


def test_real_register() -> None:
    msg = jt808.decode(hx(REAL_REGISTER))
    assert msg.msg_id == jt808.MSG_REGISTER and msg.terminal == "013511221122" and msg.serial == 5
    assert msg.fields == {
        "province": 0,
        "city": 0,
        "maker": "70107",
        "model": "HB-R03GBD",
        "terminal_id": "2366104",
        "plate_color": 2,
        "plate": "苏BA6860",
    }


def test_real_auth() -> None:
    msg = jt808.decode(hx(REAL_AUTH))
    assert msg.msg_id == jt808.MSG_AUTH and msg.fields == {"auth_code": "authentication"}


def test_real_location_with_extras() -> None:
    msg = jt808.decode(hx(REAL_LOCATION))
    [pos] = msg.positions
    assert pos.device == msg.terminal == "001601285614"
    assert pos.lat == pytest.approx(0x005DE1F7 / 1e6) and pos.lon == pytest.approx(0x065C6CEF / 1e6)
    assert pos.time == datetime(2017, 1, 17, 2, 4, 42, tzinfo=UTC)
    assert pos.time.utcoffset() == CST and pos.time.isoformat() == "2017-01-17T10:04:42+08:00"
    assert pos.status == 0x00040001 and not pos.valid  # bit 1 clear: no fix
    assert pos.extras == {"mileage_km": 4326.4, "io_status": 0, "signal": 27, "satellites": 3}


def test_real_location_south_west() -> None:
    [pos] = jt808.decode(hx(REAL_LOCATION_SW)).positions
    assert pos.status & 0b1100 == 0b1100
    assert pos.lat == pytest.approx(-19.591535) and pos.lon == pytest.approx(-46.912186)
    assert pos.valid and pos.extras == {"mileage_km": 11.9}


def test_real_blind_area_batch_is_history() -> None:
    msg = jt808.decode(hx(REAL_BLIND_BATCH))
    assert msg.msg_id == jt808.MSG_LOCATION_BATCH and msg.fields == {"count": 4, "type": 1}
    assert len(msg.positions) == 4 and all(p.history for p in msg.positions)
    first = msg.positions[0]
    assert (first.lat, first.lon, first.course) == (pytest.approx(23.169734), pytest.approx(113.450784), 41.0)
    assert first.time.isoformat() == "2018-05-14T20:28:47+08:00"
    # the vendor item 0xeb is kept raw, as hex
    assert first.extras["raw"]["0xeb"] == "000c00b28986061708003732585700060089fffffffe"
    assert msg.positions[3].alarm == 0x100


def test_real_2019_location_and_batch() -> None:
    msg = jt808.decode(hx(REAL_2019_LOCATION))
    assert msg.version == 1 and msg.terminal == "00000000013912344329"
    [pos] = msg.positions
    assert pos.alarm == 111 and pos.status == 22
    assert pos.lat == pytest.approx(-31.234567)  # status bit 2: south
    assert pos.lon == pytest.approx(121.987654)
    assert (pos.altitude_m, pos.speed_kmh, pos.course) == (123.0, 6.6, 3.0)
    assert pos.time.isoformat() == "2025-01-29T22:33:44+08:00"
    assert pos.extras == {"fuel_l": 10.0, "mileage_km": 1.2}

    batch = jt808.decode(hx(REAL_2019_BATCH))
    assert batch.fields == {"count": 2, "type": 0}
    assert [p.altitude_m for p in batch.positions] == [666.0, 777.0]
    assert not any(p.history for p in batch.positions)


def test_real_2019_platform_replies_decode_and_encode_identically() -> None:
    reply = jt808.decode(hx(REAL_2019_REGISTER_REPLY))
    assert reply.fields == {"reply_serial": 111, "result": 0, "auth_code": "ok..ok..ok"}
    ours = jt808.encode_register_reply("00000000013912344329", 0, 111, 0, "ok..ok..ok", version=1)
    assert ours == hx(REAL_2019_REGISTER_REPLY)

    general = jt808.decode(hx(REAL_2019_GENERAL_REPLY))
    assert general.fields == {"reply_serial": 111, "reply_id": 0x0200, "result": 0}
    assert jt808.encode_general_reply("13912344329", 0, 111, 0x0200, 0, version=1) == hx(
        REAL_2019_GENERAL_REPLY
    )


# ------------------------------------------------- frames from the independent encoder


def test_location_with_every_standard_extra() -> None:
    items = [
        (0x01, ref.dword(123456)),
        (0x02, ref.word(455)),
        (0x03, ref.word(601)),
        (0x04, ref.word(9)),
        (0x11, bytes([1]) + ref.dword(77)),
        (0x12, bytes([2]) + ref.dword(88) + bytes([1])),
        (0x13, ref.dword(5) + ref.word(300) + bytes([0])),
        (0x25, ref.dword(0x11)),
        (0x2A, ref.word(0x3)),
        (0x2B, ref.dword(0x00020001)),
        (0x30, bytes([25])),
        (0x31, bytes([11])),
        (0xE1, b"\x01\x02"),
    ]
    body = ref.location_body(
        39.9087, 116.3975, T0, alarm=0x2, altitude=44, speed_tenths=405, course=271, items=items
    )
    msg = jt808.decode(ref.frame(0x0200, "13800138000", 42, body))
    assert msg.terminal == "013800138000" and msg.serial == 42
    [pos] = msg.positions
    assert (pos.lat, pos.lon) == (pytest.approx(39.9087), pytest.approx(116.3975))
    assert (pos.altitude_m, pos.speed_kmh, pos.course, pos.alarm, pos.valid) == (44.0, 40.5, 271.0, 2, True)
    assert pos.time == T0 and pos.time.utcoffset() == CST and pos.time.hour == 15
    assert pos.extras == {
        "mileage_km": 12345.6,
        "fuel_l": 45.5,
        "speed_record_kmh": 60.1,
        "alarm_event_id": 9,
        "overspeed_alarm": {"position_type": 1, "area_id": 77},
        "zone_route_alarm": {"position_type": 2, "area_id": 88, "direction": "out"},
        "route_time_alarm": {"route_id": 5, "drive_time_s": 300, "result": "too_short"},
        "ext_status": 0x11,
        "io_status": 3,
        "analog": 0x00020001,
        "signal": 25,
        "satellites": 11,
        "raw": {"0xe1": "0102"},
    }


def test_overspeed_without_area_and_south_west_signs() -> None:
    body = ref.location_body(-33.8688, -70.6693, T0, items=[(0x11, b"\x00")])
    [pos] = jt808.decode(ref.frame(0x0200, "1", 1, body)).positions
    assert (pos.lat, pos.lon) == (pytest.approx(-33.8688), pytest.approx(-70.6693))
    assert pos.extras == {"overspeed_alarm": {"position_type": 0, "area_id": None}}
    assert pos.device == "000000000001"


def test_body_and_checksum_with_escapes() -> None:
    # lat/lon/alarm chosen so the body contains 0x7e, 0x7d and the tricky 0x7d 0x01 0x02 run
    body = ref.location_body(0x7E7D01 / 1e6, 0x027D7E / 1e6, T0, alarm=0x7D01027E)
    wire = ref.frame(0x0200, "13800138000", 0x7E7D, body)
    assert wire.count(b"\x7e") == 2 and b"\x7d\x02" in wire and b"\x7d\x01" in wire
    msg = jt808.decode(wire)
    assert msg.serial == 0x7E7D and msg.body == body
    [pos] = msg.positions
    assert pos.alarm == 0x7D01027E and pos.lat == pytest.approx(0x7E7D01 / 1e6)
    assert jt808.unescape(b"\x7d\x01\x02") == b"\x7d\x02"
    assert jt808.unescape(jt808.escape(b"\x7d\x02\x7e\x7d\x01")) == b"\x7d\x02\x7e\x7d\x01"


def test_2019_header_register_and_auth() -> None:
    body = ref.word(44) + ref.word(300) + b"MAKER".ljust(11, b"\0") + b"MODEL-X".ljust(30, b"\0")
    body += b"ID123".ljust(30, b"\0") + bytes([1]) + "粤B12345".encode("gbk")
    msg = jt808.decode(ref.frame(0x0100, "12345678901234567890", 3, body, version=1))
    assert (msg.version, msg.terminal, msg.serial) == (1, "12345678901234567890", 3)
    assert msg.fields == {
        "province": 44,
        "city": 300,
        "maker": "MAKER",
        "model": "MODEL-X",
        "terminal_id": "ID123",
        "plate_color": 1,
        "plate": "粤B12345",
    }
    auth = bytes([6]) + b"secret" + b"860000000000001" + b"V1.2.3".ljust(20, b"\0")
    msg = jt808.decode(ref.frame(0x0102, "00000000013912344329", 4, auth, version=1))
    assert msg.fields == {"auth_code": "secret", "imei": "860000000000001", "software_version": "V1.2.3"}


def test_terminal_reply_heartbeat_unregister() -> None:
    reply = jt808.decode(ref.frame(0x0001, "013912344323", 9, ref.word(7) + ref.word(0x8103) + b"\x00"))
    assert reply.fields == {"reply_serial": 7, "reply_id": 0x8103, "result": 0}
    assert jt808.decode(ref.frame(0x0002, "013912344323", 10)).msg_id == jt808.MSG_HEARTBEAT
    bye = jt808.decode(ref.frame(0x0003, "013912344323", 11))
    assert (bye.msg_id, bye.body, bye.fields) == (jt808.MSG_UNREGISTER, b"", {})


def test_subpackages_join_in_any_order() -> None:
    items = [ref.location_body(30 + i / 100, 120 + i / 100, T0 + timedelta(seconds=i)) for i in range(40)]
    body = ref.batch_body(items, kind=1)
    chunks = [body[i : i + 500] for i in range(0, len(body), 500)]
    frames = [
        ref.frame(0x0704, "013912344323", 100 + i, chunk, packet=(len(chunks), i + 1))
        for i, chunk in enumerate(chunks)
    ]
    parts = [jt808.decode(f) for f in frames]
    assert [(p.packet_total, p.packet_index) for p in parts] == [
        (len(chunks), i + 1) for i in range(len(chunks))
    ]
    assert all(p.is_packet and p.positions == [] for p in parts)
    joined = jt808.join_packets(list(reversed(parts)))
    assert joined.packet_total is None and joined.body == body and len(joined.positions) == 40
    assert all(p.history for p in joined.positions)
    assert joined.positions[39].time == T0 + timedelta(seconds=39)
    with pytest.raises(jt808.DecodeError):
        jt808.join_packets(parts[:-1])


def test_2019_subpackage_header() -> None:
    msg = jt808.decode(ref.frame(0x0704, "1", 5, b"\x00\x01", version=1, packet=(3, 2)))
    assert (msg.version, msg.packet_total, msg.packet_index, msg.body) == (1, 3, 2, b"\x00\x01")


def test_encrypted_body_is_not_parsed() -> None:
    msg = jt808.decode(ref.frame(0x0200, "1", 5, b"\x01" * 28, encryption=1))
    assert msg.encrypted and msg.positions == [] and msg.body == b"\x01" * 28


# ------------------------------------------------------------------ encoders


@pytest.mark.parametrize("version", [0, 1])
def test_platform_encoders_match_independent_encoder(version: int) -> None:
    kw = {"version": version} if version else {}
    assert jt808.encode_general_reply(
        "13800138000", 0x7E, 0x7D, 0x0200, 0, version=version
    ) == ref.general_reply("13800138000", 0x7E, 0x7D, 0x0200, 0, **kw)
    assert jt808.encode_register_reply(
        "13800138000", 1, 2, 0, "AUTH~}", version=version
    ) == ref.register_reply("13800138000", 1, 2, 0, "AUTH~}", **kw)
    # no auth code unless the registration succeeded
    assert jt808.encode_register_reply(
        "13800138000", 1, 2, 2, "ignored", version=version
    ) == ref.register_reply("13800138000", 1, 2, 2, **kw)
    assert jt808.encode(0x8104, "1", 3, b"", version=version, packet=(2, 1)) == ref.frame(
        0x8104, "1", 3, b"", packet=(2, 1), **kw
    )


def test_terminal_side_encoders_round_trip() -> None:
    pos = Position(
        lat=-22.906847,
        lon=-43.172896,
        time=T0,
        speed_kmh=55.5,
        course=90,
        altitude_m=12,
        alarm=0x4,
        device="013800138000",
        extras={"mileage_km": 1000.5, "fuel_l": 30.2, "signal": 20, "satellites": 9},
    )
    body = jt808.encode_location_body(pos)
    assert body == ref.location_body(
        -22.906847,
        -43.172896,
        T0,
        alarm=4,
        altitude=12,
        speed_tenths=555,
        course=90,
        items=[(0x01, ref.dword(10005)), (0x02, ref.word(302)), (0x30, b"\x14"), (0x31, b"\x09")],
    )
    [back] = jt808.decode(jt808.encode(jt808.MSG_LOCATION, "13800138000", 1, body)).positions
    assert back == pos._replace(status=0b1110)  # fix, south and west bits set by the encoder

    reg = jt808.encode_register_body(31, 1, "ACME", "T1", "0000001", 1, "沪A12345")
    assert reg == ref.register_body(31, 1, "ACME", "T1", "0000001", 1, "沪A12345")
    assert jt808.encode_auth_body("abc") == b"abc"
    assert jt808.decode(
        jt808.encode(jt808.MSG_AUTH, "1", 1, jt808.encode_auth_body("abc", "1" * 15, "v9", 1), 1)
    ).fields == {
        "auth_code": "abc",
        "imei": "1" * 15,
        "software_version": "v9",
    }
    batch = jt808.decode(
        jt808.encode(jt808.MSG_LOCATION_BATCH, "1", 1, jt808.encode_batch_body([pos, pos], history=True))
    )
    assert batch.fields == {"count": 2, "type": 1} and all(p.history for p in batch.positions)


# ------------------------------------------------------------------ errors


GOOD = ref.frame(0x0200, "013800138000", 1, ref.location_body(31.2, 121.5, T0, items=[(0x30, b"\x10")]))


def _reframe(inner: bytes | bytearray) -> bytes:
    return b"\x7e" + ref.escape(bytes(inner)) + b"\x7e"


def _bad_length_and_checksum(wire: bytes) -> bytes:
    raw = bytearray(jt808.unescape(wire[1:-1]))
    raw[3] -= 1
    raw[-1] ^= 0x55
    return _reframe(raw)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "start and end"),
        (b"\x7e", "start and end"),
        (GOOD[:-1], "start and end"),
        (_bad_length_and_checksum(GOOD), "body length .* and checksum mismatch"),
        (b"\x7e\x7d\x03" + GOOD[1:], "escape"),
        (b"\x7e" + b"\x00" * 5 + b"\x7e", "too short"),
        (ref.frame(0x0200, "1", 1, b"\x00" * 20), "location body too short"),
        (
            ref.frame(0x0200, "1", 1, ref.location_body(1, 1, T0)[:-6] + bytes.fromhex("241301000000")),
            "location time",
        ),
        (ref.frame(0x0200, "1", 1, ref.location_body(1, 1, T0)[:-6] + bytes.fromhex("2401ab000000")), "BCD"),
        (ref.frame(0x0704, "1", 1, ref.word(3) + b"\x00" + ref.word(2) + b"ab"), "location body too short"),
        (ref.frame(0x0704, "1", 1, ref.word(2) + b"\x00"), "missing"),
        (ref.frame(0x0704, "1", 1, ref.word(1) + b"\x00" + ref.word(40) + b"ab"), "past the body end"),
        (ref.frame(0x0001, "1", 1, b"\x00"), "0x0001"),
    ],
)
def test_invalid_frames_raise_decode_error(wire: bytes, reason: str) -> None:
    with pytest.raises(jt808.DecodeError, match=reason):
        jt808.decode(wire)


def test_length_field_or_checksum_alone_may_disagree() -> None:
    """Liberal like the public decoders: the frame's delimiters say where it ends, so one failed
    integrity check is accepted and named; both failing is a DecodeError (see the error table)."""
    raw = bytearray(jt808.unescape(GOOD[1:-1]))
    raw[3] -= 1  # header claims one byte less than the body has
    raw[-1] = ref.checksum(bytes(raw[:-1]))
    msg = jt808.decode(_reframe(raw))
    assert msg.problems == ("body length 31 differs from header's 30",)
    assert msg.positions[0].lat == pytest.approx(31.2) and msg.positions[0].extras == {"signal": 16}
    raw = bytearray(jt808.unescape(GOOD[1:-1]))
    raw[-1] ^= 1
    msg = jt808.decode(_reframe(raw))
    assert msg.problems[0].startswith("checksum mismatch") and msg.positions[0].lon == pytest.approx(121.5)
    assert jt808.decode(GOOD).problems == ()


def test_non_bcd_terminal_number_is_kept_as_hex_and_echoed() -> None:
    raw = bytearray(jt808.unescape(GOOD[1:-1]))
    raw[4] = 0xAB
    raw[-1] = ref.checksum(bytes(raw[:-1]))
    msg = jt808.decode(_reframe(raw))
    assert msg.terminal == "ab3800138000" and msg.positions[0].device == "ab3800138000"
    reply = jt808.decode(jt808.encode_general_reply(msg.terminal, 1, msg.serial, msg.msg_id, 0))
    assert reply.terminal == "ab3800138000"  # the reply carries the very bytes the terminal sent


def test_extras_past_the_body_keep_the_basic_position() -> None:
    body = ref.location_body(1.5, 2.5, T0, items=[(0x30, b"\x10")]) + b"\x01\x04\x00"
    [pos] = jt808.decode(ref.frame(0x0200, "1", 1, body)).positions
    assert (pos.lat, pos.lon, pos.time, pos.extras["signal"]) == (1.5, 2.5, T0, 16)
    assert pos.extras["malformed"].startswith("additional item 0x01 length 4 past the body end at byte 31")
    [pos] = jt808.decode(ref.frame(0x0200, "1", 1, ref.location_body(1, 1, T0) + b"\x01")).positions
    assert pos.extras["malformed"].startswith("additional item header truncated at byte 28")


def test_batch_keeps_whole_items_before_a_truncated_one() -> None:
    good = ref.location_body(3, 4, T0)
    body = ref.word(3) + b"\x01" + ref.word(len(good)) + good + ref.word(len(good)) + good[:10]
    msg = jt808.decode(ref.frame(0x0704, "1", 1, body))
    assert [(p.lat, p.lon, p.history) for p in msg.positions] == [(3, 4, True)]
    assert msg.problems == ("0x0704 batch: item 2 length 28 past the body end",)


def test_short_register_body_and_2019_auth_in_2013_layout() -> None:
    msg = jt808.decode(ref.frame(0x0100, "013800138000", 1, ref.word(31) + ref.word(100) + b"ACME"))
    assert msg.fields["province"] == 31 and msg.fields["maker"] == "ACME" and msg.fields["plate"] == ""
    assert msg.problems and "shorter" in msg.problems[0]
    msg = jt808.decode(ref.frame(0x0102, "013800138000", 2, b"CODE-42", version=1))
    assert msg.fields == {"auth_code": "CODE-42"} and msg.problems


# Frames from the public test suite of Traccar's JT/T 808 ("Huabao") decoder, each as the devices
# sent it: terminal number, and the (lat, lon) of the first position (None: no position message).
TRACCAR_FRAMES = [
    ("7E02000053200002604323004800000000000C00000158B91406CB7007006B00000000220512101138010400000F2803020000"
     "250400000000300114310100E30100D50E0100026043232795980277530030E50400000000E7020FC8E8020E83AB7E",
     "200002604323", (22.591764, 113.995783)),
    # a vendor message (0x0900) from a terminal whose number is not BCD
    ("7E0900005A4E5DE66FBA2200C4F02204280610090002010D052B0150052C0400129009052D016B052E014F05300231BA0535"
     "02000005360203B8053802000005390200AD053D0201EA05440150054604009899D90545040000001E000C00030160A85C06D1"
     "C1389C7E", "4e5de66fba22", None),
    # the last additional item claims 120 bytes where 8 remain
    ("7e0200002e202000129707001c0000000000001c0601a2f0a8091f0bf00000000000ed2011030317330000000000000000"
     "00780000000018000000267e", "202000129707", (-27.455656, 153.029616)),
    ("7e0200007c0191718447540dcd000000008000000b029eabc204ba78510004000000042111182321120104000017f6cc1438"
     "3933303237323037303339333033383732373130011d800134810204718202008283010e84017b85021ae986012f870201"
     "788901038b114a4e31424a314352364b573333363533358c040008dcb68d02018c8e013da000c07e",
     "019171844754", (43.95309, -79.329361)),
    ("7e02000054086031592715006e0000000000000002015a3c1a06c8733800000000000019103022183633362a4d30302c3435"
     "2c31313338363030526f79314f70656e26303030303030303030303030263132333435363738393031323334353623ff7e",
     "086031592715", (22.690842, 113.799992)),
    ("7E0704014301356777777707F5000801002600000000000000030159741206CBFD5001720000000116052709062401040000"
     "001D03020000002600000000000000030159746606CBFD50016B0000000116052709065301040000001D03020000002600"
     "00000000000003015975E406CBFE58013F0000000116052709072701040000001D0302000000260000000000000003015976"
     "DE06CBFF10012E0000000116052709075601040000001D0302000000260000000000000003015976BC06CBFED0012D000000"
     "0116052709083001040000001D0302000000260000000000000003015976FE06CBFEC001080000000116052709090001040000"
     "001D0302000000260000000000000003015976FE06CBFE7800FC0000000116052709093301040000001D03020000002600"
     "00000000000003015977A606CBFF3001080000000116052709100201040000001D030200001F7E",
     "013567777777", (22.639634, 114.031952)),
    ("7E0100002D013511221122000500000000373031303748422D52303347424400000000000000000000003233363631303402"
     "CBD5424136383630387E", "013511221122", None),
    ("7E010200100940278494700084323031313131303831313333323139369F7E", "094027849470", None),
]


@pytest.mark.parametrize(("wire", "terminal", "first"), TRACCAR_FRAMES)
def test_public_decoder_frames_come_through(wire: str, terminal: str, first: tuple[float, float] | None) -> None:
    msg = jt808.decode(hx(wire))
    assert msg.terminal == terminal
    if first is not None:
        assert (msg.positions[0].lat, msg.positions[0].lon) == pytest.approx(first)


def test_public_decoder_frames_this_codec_refuses() -> None:
    """Two frames from the same suite fail both integrity checks or carry an unescaped 0x7e: on a TCP
    stream the second would be cut in two at that byte by any JT/T 808 framer."""
    both_bad = ("7E02000032013511221122000700000000000C000301578CC006CA3A5C0047000000001407231720150104000000"
                "0030011631010BD07E")
    with pytest.raises(jt808.DecodeError, match="body length 40 differs from header's 50 and checksum"):
        jt808.decode(hx(both_bad))
    raw_7e = ("7e0200008e01917159043700b300000000800000030158990606ca0fd7000400000000211129111705010400000000cc"
              "1438393836303742383130323039303136323936383001" "0d8001aa81021388820200858301148401aa850218"
              "9b8601338702007e8801338901148a0200998b1131323334353637383941424344454647488c04000200a88d0200"
              "828e0114a00b50353338662c5530323966037e")
    with pytest.raises(jt808.DecodeError, match="0x7e inside a frame"):
        jt808.decode(hx(raw_7e))


# ------------------------------------------------------------------ fuzzing

SEEDS = [
    hx(REAL_REGISTER),
    hx(REAL_LOCATION),
    hx(REAL_BLIND_BATCH),
    hx(REAL_2019_LOCATION),
    GOOD,
    ref.frame(0x0704, "1", 2, ref.batch_body([ref.location_body(1, 2, T0)] * 2, 1), packet=(2, 1)),
]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_reject(wire: bytes) -> None:
    with contextlib.suppress(jt808.DecodeError):
        jt808.decode(wire)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    _decode_or_reject(data)
    _decode_or_reject(b"\x7e" + data + b"\x7e")
    _decode_or_reject(b"\x7e" + jt808.escape(data) + b"\x7e")


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_frames_only_raise_decode_error(seed: bytes, data: st.DataObject) -> None:
    inner = bytearray(jt808.unescape(seed[1:-1]))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(inner) - 1, 0)))
        if action == "flip" and inner:
            inner[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            del inner[pos:]
        elif action == "insert":
            inner[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif inner:
            del inner[pos]
    # fix the checksum half of the time so that mutations reach the body parsers
    if inner and data.draw(st.booleans()):
        inner[-1] = ref.checksum(bytes(inner[:-1]))
    _decode_or_reject(b"\x7e" + jt808.escape(bytes(inner)) + b"\x7e")


_garbage = st.binary(max_size=20).map(lambda b: b.replace(b"\x7e", b""))


@FUZZ
@given(st.lists(st.tuples(_garbage, st.sampled_from(SEEDS)), max_size=6), _garbage, st.integers(1, 64))
def test_split_frames_recovers_frames_between_garbage(pairs, tail: bytes, chunk: int) -> None:
    stream = b"".join(g + f for g, f in pairs) + tail
    expected = [f for _, f in pairs]
    # whole buffer at once
    frames, rest = jt808.split_frames(stream)
    assert frames == expected and rest == b""
    # and as a TCP stream arriving in arbitrary small reads
    got: list[bytes] = []
    buffer = b""
    for i in range(0, len(stream), chunk):
        frames, buffer = jt808.split_frames(buffer + stream[i : i + chunk])
        got += frames
    assert got == expected and buffer == b""


def test_split_frames_edge_cases() -> None:
    assert jt808.split_frames(b"") == ([], b"")
    assert jt808.split_frames(b"junk") == ([], b"")
    assert jt808.split_frames(b"junk\x7e\x01\x02") == ([], b"\x7e\x01\x02")
    # back to back, and an orphan end delimiter before a frame ("7e7e")
    assert jt808.split_frames(b"\x7ea\x7e\x7eb\x7e") == ([b"\x7ea\x7e", b"\x7eb\x7e"], b"")
    assert jt808.split_frames(b"\x7e\x7eb\x7e\x7e") == ([b"\x7eb\x7e"], b"\x7e")


def _raw_frame(msg_id: int, phone: bytes, serial: int, body: bytes) -> bytes:
    """A 2013 frame with the terminal number given as raw bytes (any bytes, BCD or not)."""
    raw = ref.word(msg_id) + ref.word(len(body)) + phone + ref.word(serial) + body
    return b"\x7e" + ref.escape(raw + bytes([ref.checksum(raw)])) + b"\x7e"


_items = st.lists(st.tuples(st.integers(0x40, 0xDF), st.binary(max_size=12)), max_size=4)


@FUZZ
@given(
    phone=st.binary(min_size=6, max_size=6),
    lat=st.floats(-89.9, 89.9),
    lon=st.floats(-179.9, 179.9),
    items=_items,
    overlong=st.tuples(st.integers(0, 255), st.integers(1, 255), st.binary(max_size=40)),
)
def test_non_bcd_terminals_and_overlong_extras_still_yield_the_basic_position(
    phone: bytes, lat: float, lon: float, items: list[tuple[int, bytes]], overlong: tuple[int, int, bytes]
) -> None:
    item, claimed, value = overlong
    value = value[: claimed - 1]  # fewer bytes than the item claims: it runs past the body
    body = ref.location_body(lat, lon, T0, items=items) + bytes([item, claimed]) + value
    msg = jt808.decode(_raw_frame(0x0200, phone, 7, body))
    [pos] = msg.positions
    assert msg.terminal == phone.hex() and pos.device == phone.hex()
    assert (pos.lat, pos.lon, pos.time) == (pytest.approx(lat, abs=1e-6), pytest.approx(lon, abs=1e-6), T0)
    assert "past the body end" in pos.extras["malformed"]
    assert len(pos.extras.get("raw", {})) == len({i for i, _ in items})  # the whole items before it are kept
