"""Platform commands over real TCP with the independent terminal (tests/jt808_client.py): driver text,
position query and parameters round-trip to an acknowledged state with the terminal's result; an
offline terminal gets its queued command when it authenticates again, an expired one is never sent;
missing subpackages are asked for again (0x8003); a violation opening sends the rule's driver text,
and the JSON API and `citygate command` reach a terminal through a running gateway."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jt808_client as ref
import pytest
from jt808_client import Client, Parsed

from core.model import Position
from gateway.cli import main
from gateway.deployment import load_deployment
from gateway.runtime import Gateway
from gateway.sources.jt808_commands import CommandRefused
from gateway.sources.jt808_server import Jt808Server
from gateway.wiring import auth_code

PHONE, VEHICLE, CODE = "013800138000", "muck-01", "CODE-1"
PHONE_2019 = "00000000013800138001"
NOW = datetime.now(UTC).replace(microsecond=0)
WARNING = "您已驶入渣土车禁行区，请立即驶离"


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[Jt808Server, list[Position]]]:
    positions: list[Position] = []
    server = Jt808Server("127.0.0.1", 0, {PHONE: CODE, PHONE_2019: "CODE-2"}, positions.append,
                         vehicles={PHONE: VEHICLE, PHONE_2019: "muck-02"}, **options)
    await server.start()
    try:
        yield server, positions
    finally:
        await server.stop()


async def login(port: int, phone: str = PHONE, code: str = CODE, version: int | None = None) -> Client:
    c = await Client.connect(port)
    body = code.encode() if version is None else bytes([len(code)]) + code.encode() + b"860000000000001" + bytes(20)
    await c.send(ref.frame(0x0102, phone, 1, body, version=version))
    answer = await c.expect(0x8001)
    assert answer.words(0, 2) == [1, 0x0102] and answer.body[4] == 0, "authenticated"
    return c


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def location(lat: float = 39.9115, lon: float = 116.4030, k: int = 0) -> bytes:
    return ref.location_body(lat, lon, NOW + timedelta(seconds=k), speed_tenths=150)


async def test_text_query_and_params_round_trip_to_acknowledged_with_the_terminals_result():
    async with running() as (server, positions):
        c = await login(server.port)
        try:
            text = server.command(VEHICLE, "text", {"text": WARNING})
            got = await c.expect(0x8300)
            assert got.phone == PHONE and got.version is None
            assert got.body[0] == 0x0C, "display + read aloud"
            assert got.body[1:].decode("gbk") == WARNING, "2013 layout: flags, then the GBK text"
            assert server.commands.get(text.id).state == "sent"
            await c.send(ref.terminal_reply(PHONE, 2, got.serial, 0x8300, 0))

            query = server.command(VEHICLE, "query")
            asked = await c.expect(0x8201)
            assert asked.body == b""
            await c.send(ref.position_reply(PHONE, 3, asked.serial, location(39.95, 116.35)))

            params = server.command(VEHICLE, "params", {"params": {"default_report_interval_s": 10,
                                                                   "0x0027": 600}})
            setting = await c.expect(0x8103)
            body = setting.body
            assert body[0] == 2
            assert body[1:10] == bytes.fromhex("00000029") + bytes([4]) + (10).to_bytes(4, "big")
            assert body[10:] == bytes.fromhex("00000027") + bytes([4]) + (600).to_bytes(4, "big")
            await c.send(ref.terminal_reply(PHONE, 4, setting.serial, 0x8103, 3))  # "unsupported"

            await until(lambda: server.commands.get(params.id).state == "acknowledged")
            shown = {x["kind"]: x for x in (cmd.to_json() for cmd in server.commands_of(VEHICLE))}
            assert (shown["text"]["state"], shown["text"]["result_name"]) == ("acknowledged", "ok")
            assert shown["query"]["state"] == "acknowledged"
            assert (shown["query"]["position"]["lat"], shown["query"]["position"]["lon"]) == (39.95, 116.35)
            assert (shown["params"]["result"], shown["params"]["result_name"]) == (3, "unsupported")
            assert shown["params"]["args"] == {"params": {"default_report_interval_s": 10,
                                                          "sleep_report_interval_s": 600}}
            assert [(p.device, p.lat) for p in positions] == [(VEHICLE, 39.95)], "the answer is a fix too"
            assert query.serial == asked.serial
            stats = server.stats()["commands"]
            assert (stats["sent"], stats["acknowledged"], stats["awaiting_answer"]) == (3, 3, 0)
        finally:
            await c.close()


async def test_a_2019_terminal_gets_the_2019_text_layout_in_a_2019_header():
    async with running() as (server, _):
        c = await login(server.port, PHONE_2019, "CODE-2", version=1)
        try:
            server.command("muck-02", "text", {"text": "请减速", "emergency": True})
            got = await c.expect(0x8300)
            assert (got.version, got.phone) == (1, PHONE_2019)
            assert got.body[0] == 0x0D and got.body[1] == 1, "flags (emergency), then the type byte"
            assert got.body[2:].decode("gbk") == "请减速"
        finally:
            await c.close()


async def test_an_offline_terminal_gets_its_queued_command_when_it_authenticates_again():
    async with running() as (server, _):
        cmd = server.command(VEHICLE, "text", {"text": WARNING})
        assert cmd.state == "queued" and cmd.serial is None
        c = await Client.connect(server.port)
        try:
            await c.send(ref.frame(0x0200, PHONE, 1, location()))  # not authenticated: refused, nothing sent
            refused = await c.expect(0x8001)
            assert refused.body[4] == 1
            assert cmd.state == "queued"
            await c.send(ref.frame(0x0102, PHONE, 2, CODE.encode()))
            assert (await c.expect(0x8001)).body[4] == 0
            got = await c.expect(0x8300)
            assert got.body[1:].decode("gbk") == WARNING
            await c.send(ref.terminal_reply(PHONE, 3, got.serial, 0x8300, 0))
            await until(lambda: cmd.state == "acknowledged")
            assert cmd.result == 0
        finally:
            await c.close()


async def test_an_expired_command_is_never_sent_and_an_unanswered_one_fails():
    async with running(command_ttl_s=0.3, command_reply_timeout_s=0.3) as (server, _):
        stale = server.command(VEHICLE, "text", {"text": "过期的消息"})
        await asyncio.sleep(0.5)
        c = await login(server.port)
        try:
            await c.send(ref.frame(0x0002, PHONE, 2))  # heartbeat: its answer is the next frame, so nothing came before
            beat = await c.expect(0x8001)
            assert beat.words(0, 2) == [2, 0x0002]
            assert stale.state == "expired" and stale.serial is None
            unanswered = server.command(VEHICLE, "query")
            await c.expect(0x8201)
            await asyncio.sleep(0.5)
            server.stats()
            assert unanswered.state == "failed" and "no answer" in (unanswered.reason or "")
        finally:
            await c.close()


async def test_queued_commands_survive_a_restart_and_an_unanswered_one_is_failed(tmp_path):
    state = tmp_path / "jt808_commands.json"
    async with running(state_path=state) as (server, _):
        c = await login(server.port)
        try:
            unanswered = server.command(VEHICLE, "query")
            await c.expect(0x8201)
        finally:
            await c.close()
        await until(lambda: server.stats()["authenticated_connections"] == 0)
        waiting = server.command(VEHICLE, "text", {"text": WARNING})
        assert waiting.state == "queued"
    async with running(state_path=state) as (server, _):
        assert server.commands.get(unanswered.id).state == "failed"
        assert "restarted" in server.commands.get(unanswered.id).reason
        c = await login(server.port)
        try:
            got = await c.expect(0x8300)
            assert got.body[1:].decode("gbk") == WARNING
            await c.send(ref.terminal_reply(PHONE, 2, got.serial, 0x8300, 0))
            await until(lambda: server.commands.get(waiting.id).state == "acknowledged")
            fresh = server.command(VEHICLE, "query")
            assert fresh.id not in (unanswered.id, waiting.id)
        finally:
            await c.close()
    state.write_text("{not json", encoding="utf-8")
    async with running(state_path=state) as (server, _):  # a broken file is moved aside, not fatal
        assert server.commands.stats()["tracked"] == 0
    assert (tmp_path / "jt808_commands.json.bad").exists()


async def test_commands_that_cannot_be_taken_are_refused_with_a_reason():
    async with running(max_queued_commands=2) as (server, _):
        with pytest.raises(CommandRefused) as unknown:
            server.command("no-such-truck", "query")
        assert unknown.value.status == 404
        with pytest.raises(CommandRefused, match="unknown terminal parameter 'reporting'"):
            server.command(VEHICLE, "params", {"params": {"reporting": 5}})
        with pytest.raises(CommandRefused, match="must be 0 to 65535"):
            server.command(VEHICLE, "params", {"params": {"fence_radius_m": 70000}})
        with pytest.raises(CommandRefused, match="whole number"):
            server.command(VEHICLE, "params", {"params": {"default_report_interval_s": 2.5}})
        with pytest.raises(CommandRefused, match="non-empty 'text'"):
            server.command(VEHICLE, "text", {"text": " "})
        server.command(VEHICLE, "query")
        server.command(VEHICLE, "query")
        with pytest.raises(CommandRefused) as full:
            server.command(VEHICLE, "query")
        assert full.value.status == 429
        assert server.stats()["commands"]["refused"] == 6


async def test_missing_subpackages_are_asked_for_again_and_the_message_completes():
    async with running(packet_timeout_s=0.3) as (server, positions):
        c = await login(server.port)
        try:
            body = ref.batch_body([location(k=k) for k in range(3)], 0)
            parts = [body[:40], body[40:80], body[80:]]
            first = 10
            for index in (1, 3):  # packet 2 is lost on the way
                await c.send(ref.frame(0x0704, PHONE, first + index - 1, parts[index - 1], packet=(3, index)))
                assert (await c.expect(0x8001)).words(0, 2) == [first + index - 1, 0x0704]
            ask = await c.expect(0x8003, timeout=5)
            assert ask.words(0, 1) == [first], "the serial of the message's first packet"
            assert ask.body[2] == 1 and ask.words(3, 1) == [2], "one packet: number 2"
            assert positions == []
            await c.send(ref.frame(0x0704, PHONE, first + 1, parts[1], packet=(3, 2)))
            await c.expect(0x8001)
            await until(lambda: len(positions) == 3)
            assert server.stats()["retransmit_requests"] == 1
        finally:
            await c.close()


async def test_subpackages_that_never_come_are_dropped_after_the_retransmit_requests():
    async with running(packet_timeout_s=0.2, packet_retries=1) as (server, positions):
        c = await login(server.port)
        try:
            await c.send(ref.frame(0x0704, PHONE, 5, b"\x00\x03\x00", packet=(2, 1)))
            await c.expect(0x8001)
            await c.expect(0x8003)
            await until(lambda: server.stats()["incomplete_messages"] == 1)
            await c.send(ref.frame(0x0002, PHONE, 6))  # the connection still serves
            assert (await c.expect(0x8001)).words(0, 2) == [6, 0x0002]
        finally:
            await c.close()


# --------------------------------------------------------------- through a running gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = "op-token-0123456789abcdef"


def site(tmp_path: Path, jt_port: int, web_port: int) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: commands
        data_dir: data
        web: {{enabled: true, host: 127.0.0.1, port: {web_port},
               tokens: [{{name: ops, token: "{TOKEN}", role: operator}}]}}
        vehicles:
          jt808: {{enabled: true, host: 127.0.0.1, port: {jt_port}, accept_unknown: false}}
          fleet:
            vehicles: [{{id: {VEHICLE}, type: muck_truck, terminal: "{PHONE}"}}]
            zones: [{{id: centre, name: 市中心, polygon: [[116.395, 39.905], [116.410, 39.905], [116.410, 39.920],
                                                       [116.395, 39.920]]}}]
            rules:
              forbidden_zone: {{driver_text: "{WARNING}"}}
        """), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def gateway_at(tmp_path: Path) -> AsyncIterator[tuple[Gateway, int, int]]:
    jt_port, web_port = free_port(), free_port()
    gateway = Gateway(load_deployment(site(tmp_path, jt_port, web_port)))
    await gateway.start()
    try:
        yield gateway, jt_port, web_port
    finally:
        assert await gateway.shutdown()


def code_for(gateway: Gateway) -> str:
    config = gateway.config
    return auth_code(config.id, PHONE, config.vehicles.jt808.auth_secret)


async def test_a_violation_opening_sends_the_rules_driver_text(tmp_path):
    async with gateway_at(tmp_path) as (gateway, jt_port, _):
        c = await login(jt_port, code=code_for(gateway))
        try:
            now = datetime.now(UTC).replace(microsecond=0)
            for k in range(3):  # inside the forbidden zone
                body = ref.location_body(39.9115, 116.4030 + k * 1e-5, now + timedelta(seconds=k), speed_tenths=150)
                await c.send(ref.frame(0x0200, PHONE, 2 + k, body))
            frames = []
            async with asyncio.timeout(15):
                while not any(f.msg_id == 0x8300 for f in frames):
                    frames.append(Parsed(await c.reply(timeout=15)))
            text = next(f for f in frames if f.msg_id == 0x8300)
            assert text.body[1:].decode("gbk") == WARNING
            await c.send(ref.terminal_reply(PHONE, 9, text.serial, 0x8300, 0))
            server = gateway.component("jt808")
            await until(lambda: any(cmd.state == "acknowledged" for cmd in server.commands_of(VEHICLE)))
            [cmd] = server.commands_of(VEHICLE)
            assert cmd.origin == "rule:forbidden_zone"
        finally:
            await c.close()


async def test_the_api_and_the_cli_send_commands_and_show_their_results(tmp_path, monkeypatch):
    async with gateway_at(tmp_path) as (gateway, jt_port, web_port):
        base = f"http://127.0.0.1:{web_port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            # offline: queued, with its expiry
            async with http.post(f"{base}/api/vehicles/{VEHICLE}/commands", json={"kind": "text", "text": WARNING}) as r:
                assert r.status == 202
                queued = await r.json()
            assert queued["state"] == "queued" and queued["expires_at"]
            async with http.post(f"{base}/api/vehicles/nobody/commands", json={"kind": "query"}) as r:
                assert r.status == 404
            async with http.post(f"{base}/api/vehicles/{VEHICLE}/commands", json={"kind": "reboot"}) as r:
                assert r.status == 400 and "unknown command kind" in (await r.json())["error"]

            c = await login(jt_port, code=code_for(gateway))
            try:
                got = await c.expect(0x8300)
                await c.send(ref.terminal_reply(PHONE, 2, got.serial, 0x8300, 0))

                async def terminal() -> None:  # answers the parameter command the CLI sends
                    setting = await c.expect(0x8103, timeout=20)
                    await c.send(ref.terminal_reply(PHONE, 3, setting.serial, 0x8103, 0))

                answering = asyncio.create_task(terminal())
                monkeypatch.setenv("CITYGATE_TOKEN", TOKEN)
                config = str(tmp_path / "site.yaml")
                code = await asyncio.to_thread(main, ["command", "--config", config, "--wait", "10", VEHICLE,
                                                      "params", "default_report_interval_s=10"])
                await answering
                assert code == 0

                async with http.get(f"{base}/api/vehicles/{VEHICLE}/commands") as r:
                    assert r.status == 200
                    shown = (await r.json())["commands"]
                assert [(x["kind"], x["state"], x["result_name"]) for x in shown] == [
                    ("params", "acknowledged", "ok"), ("text", "acknowledged", "ok")]
                assert shown[1]["id"] == queued["id"] and shown[0]["origin"] == "api:ops"
                async with http.get(f"{base}/api/status") as r:
                    assert (await r.json())["jt808"]["commands"]["acknowledged"] == 2
            finally:
                await c.close()
        # without a token the CLI says what it needs
        monkeypatch.delenv("CITYGATE_TOKEN")
        assert await asyncio.to_thread(main, ["command", "--config", config, VEHICLE, "query"]) == 2


async def test_the_simulator_answers_commands_queued_while_it_was_offline(tmp_path):
    """`citygate simulate` as the terminal: the driver text of an overspeed and the commands queued
    before it connected are printed and answered; the track is still acknowledged in full."""
    from gateway.simulator import load_track, simulate

    port = free_port()
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: sim
        data_dir: data
        web: {{enabled: false}}
        vehicles:
          jt808: {{enabled: true, host: 127.0.0.1, port: {port}, accept_unknown: false}}
          fleet:
            vehicles: [{{id: mixer-01, type: mixer, terminal: "013912340002", speed_limit_kmh: 50}}]
            rules:
              overspeed: {{driver_text: 请减速行驶}}
        """), encoding="utf-8")
    gateway = Gateway(load_deployment(path))
    await gateway.start()
    try:
        server = gateway.component("jt808")
        server.command("mixer-01", "params", {"params": {"default_report_interval_s": 5}})
        server.command("mixer-01", "text", {"text": "早上好"})
        track = load_track(Path(__file__).resolve().parent.parent / "configs" / "data" / "tracks" / "mixer-01.csv")
        said: list[str] = []
        assert await simulate("127.0.0.1", port, track, speed=0, say=said.append) == len(track)
        assert "platform sets parameters: default_report_interval_s=5" in said
        assert "platform text for the driver: 早上好" in said
        # the overspeed opens while the track is sent; its text reaches the terminal if it is still
        # connected, else it waits for the next authentication
        await until(lambda: any(c.origin == "rule:overspeed" for c in server.commands_of("mixer-01")), timeout=30)
        commands = server.commands_of("mixer-01")
        assert [(c.kind, c.state) for c in commands if c.origin == "api"] == [
            ("text", "acknowledged"), ("params", "acknowledged")]
        [rule] = [c for c in commands if c.origin == "rule:overspeed"]
        assert rule.args["text"] == "请减速行驶"
        assert rule.state == "queued" or "platform text for the driver: 请减速行驶" in said
    finally:
        assert await gateway.shutdown()
