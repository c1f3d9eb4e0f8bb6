"""The platform-command messages of the codec (0x8300, 0x8201/0x0201, 0x8103, 0x8003, 0x0001): checked
against the independent encoder of tests/jt808_client.py and round-tripped with Hypothesis; any body
under these message ids decodes or raises DecodeError, nothing else."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import jt808_client as ref
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocols import jt808

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COMMAND_IDS = [jt808.MSG_TEXT, jt808.MSG_SET_PARAMS, jt808.MSG_RETRANSMIT, jt808.MSG_POSITION_REPLY,
               jt808.MSG_POSITION_QUERY, jt808.MSG_TERMINAL_REPLY]
_gbk_text = st.text(st.characters(codec="gbk", exclude_categories=("Cc", "Cs")), min_size=1, max_size=200).filter(
    lambda t: t.strip() and not t.endswith("\x00"))


def test_text_body_in_both_layouts():
    assert jt808.encode_text_body("请减速") == b"\x0c" + "请减速".encode("gbk")
    assert jt808.encode_text_body("请减速", version=1) == b"\x0c\x01" + "请减速".encode("gbk")
    with pytest.raises(ValueError, match="exceeds 1000"):
        jt808.encode_text_body("字" * 501)
    with pytest.raises(UnicodeEncodeError):
        jt808.encode_text_body("🚚")


def test_params_and_retransmit_bodies_match_the_independent_encoder():
    assert jt808.encode_params_body({0x0029: 10, 0x0083: "京A1"}) == (
        bytes([2]) + ref.dword(0x0029) + bytes([4]) + ref.dword(10)
        + ref.dword(0x0083) + bytes([len("京A1".encode("gbk"))]) + "京A1".encode("gbk"))
    assert jt808.encode_retransmit_body(7, [2, 5]) == ref.word(7) + bytes([2]) + ref.word(2) + ref.word(5)
    assert jt808.encode_retransmit_body(7, [2], version=1) == ref.word(7) + ref.word(1) + ref.word(2)
    assert jt808.parameter_id("default_report_interval_s") == jt808.parameter_id("0x0029") == 0x0029
    with pytest.raises(ValueError, match="unknown terminal parameter"):
        jt808.parameter_id("0x9999")


def test_terminal_answers_decode_from_the_independent_encoder():
    when = datetime(2026, 7, 1, 4, 0, 0, tzinfo=UTC)
    reply = jt808.decode(ref.terminal_reply("013800138000", 3, 17, 0x8300, 0))
    assert reply.fields == {"reply_serial": 17, "reply_id": 0x8300, "result": 0}
    answer = jt808.decode(ref.position_reply("013800138000", 4, 18, ref.location_body(39.9, 116.4, when)))
    assert answer.fields == {"reply_serial": 18}
    [p] = answer.positions
    assert (p.lat, p.lon, p.time) == (39.9, 116.4, when)


@FUZZ
@given(_gbk_text, st.integers(0, 255), st.sampled_from([0, 1]))
def test_text_round_trips(text, flags, version):
    msg = jt808.decode(jt808.encode(jt808.MSG_TEXT, "013800138000", 1, jt808.encode_text_body(text, flags, version),
                                    version))
    assert (msg.fields["flags"], msg.fields["text"]) == (flags, text.strip())
    assert msg.fields["type"] == (jt808.TEXT_TYPE_NOTIFICATION if version else None)


_param_values = st.sampled_from(sorted(jt808.PARAMETERS.values())).flatmap(
    lambda p: st.tuples(st.just(p[0]), st.text(st.characters(codec="gbk", exclude_categories=("Cc", "Cs")),
                                                max_size=40).map(str.strip) if p[1] == "s"
                        else st.integers(0, (1 << (8 * {"I": 4, "H": 2, "B": 1}[p[1]])) - 1)))


@FUZZ
@given(st.lists(_param_values, min_size=1, max_size=20, unique_by=lambda kv: kv[0]))
def test_params_round_trip(items):
    params = dict(items)
    msg = jt808.decode(jt808.encode(jt808.MSG_SET_PARAMS, "013800138000", 1, jt808.encode_params_body(params)))
    assert msg.fields["params"] == params


@FUZZ
@given(st.integers(0, 0xFFFF), st.lists(st.integers(1, 0xFFFF), min_size=1, max_size=255), st.sampled_from([0, 1]))
def test_retransmit_round_trips(serial, ids, version):
    body = jt808.encode_retransmit_body(serial, ids, version)
    msg = jt808.decode(jt808.encode(jt808.MSG_RETRANSMIT, "013800138000", 1, body, version))
    assert msg.fields == {"original_serial": serial, "packet_ids": ids}


@FUZZ
@given(st.sampled_from(COMMAND_IDS), st.binary(max_size=400), st.sampled_from([0, 1]))
def test_any_command_body_decodes_or_raises_decode_error_only(msg_id, body, version):
    with contextlib.suppress(jt808.DecodeError):
        jt808.decode(jt808.encode(msg_id, "013800138000", 1, body, version))
