"""Modbus TCP poller against pymodbus' own TCP server on loopback, with a dead device beside a live one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import pytest
from conftest import REPO
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer
from services import free_port
from test_mqtt_source import WAIT, until

from gateway.profiles import DeviceProfile, load_profiles
from gateway.sources.ingest_config import ModbusDeviceConfig, check_ingest
from gateway.sources.modbus import ModbusSource

PROFILES = load_profiles(REPO / "device_profiles")
RADAR = "radar-level-modbus-tcp"


def f32_words(value: float, word_order: str = "big") -> list[int]:
    words = list(struct.unpack(">2H", struct.pack(">f", value)))
    return words if word_order == "big" else words[::-1]


@contextlib.asynccontextmanager
async def modbus_server(units: dict[int, list[int]], input_registers: list[int] | None = None):
    """pymodbus' TCP server on a free loopback port; registers from address 0 (the block starts at 1:
    pymodbus' data blocks are 1-based)."""
    port = free_port()
    devices = {unit: ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, regs),
                                         ir=ModbusSequentialDataBlock(1, input_registers or [0] * 8))
               for unit, regs in units.items()}
    server = ModbusTcpServer(ModbusServerContext(devices=devices, single=False), address=("127.0.0.1", port))
    task = asyncio.create_task(server.serve_forever())
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            await asyncio.sleep(0.02)
        yield port
    finally:
        await server.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def silent_listener():
    """A TCP port that accepts connections and never answers: the worst dead device (no refusal)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader, writer):
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def polling(source: ModbusSource):
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def test_radar_gauge_is_polled_and_decoded_with_units():
    regs = f32_words(1.375) + f32_words(4.25) + [523, 0]  # 1.375 m level, 4.25 m air gap, 52.3 dB, echo ok
    readings = []
    async with modbus_server({7: regs}) as port:
        device = ModbusDeviceConfig(id="radar-01", host="127.0.0.1", port=port, unit_id=7, interval_s=0.1)
        source = ModbusSource([device], PROFILES, readings.append)
        async with polling(source):
            await until(lambda: len(readings) >= 2, what="two polls")
    first = readings[0]
    assert first.device == "radar-01" and first.profile == RADAR
    assert first.values == {"level_cm": 137.5, "air_gap_m": 4.25, "echo_db": 52.3, "echo_lost": 0.0}
    assert first.units["level_cm"] == "cm"
    assert source.stats()["devices"]["radar-01"]["failed"] == 0


async def test_a_dead_device_does_not_stall_a_live_one():
    readings = []
    async with modbus_server({1: f32_words(0.5) + f32_words(2.0) + [400, 0]}) as port, \
            silent_listener() as silent:
        live = ModbusDeviceConfig(id="live", host="127.0.0.1", port=port, interval_s=0.1, timeout_s=1)
        silent_dev = ModbusDeviceConfig(id="silent", host="127.0.0.1", port=silent, interval_s=0.1, timeout_s=0.5)
        refused = ModbusDeviceConfig(id="refused", host="127.0.0.1", port=free_port(), interval_s=0.1, timeout_s=0.5)
        wrong_unit = ModbusDeviceConfig(id="no-unit", host="127.0.0.1", port=port, unit_id=9, interval_s=0.1)
        # two slots for four devices, three of them failing: the live one must still be served
        source = ModbusSource([silent_dev, refused, wrong_unit, live], PROFILES, readings.append, max_concurrent=2)
        async with polling(source):
            await until(lambda: source.stats()["devices"]["silent"]["timeouts"] >= 2, what="silent device timeouts")
            await until(lambda: len(readings) >= 5, what="five live readings")
    stats = source.stats()["devices"]
    assert {r.device for r in readings} == {"live"} and readings[-1].values["level_cm"] == 50.0
    assert stats["live"]["failed"] == 0 and stats["live"]["timeouts"] == 0
    assert stats["refused"]["failed"] >= 1 and "cannot connect" in stats["refused"]["last_error"]
    assert stats["no-unit"]["failed"] >= 1 and "exception response" in stats["no-unit"]["last_error"]
    assert stats["silent"]["consecutive_failures"] >= 2


async def test_word_order_input_registers_and_bad_values():
    profile = DeviceProfile.model_validate({
        "name": "cdab", "kind": "sensor", "transport": "modbus", "payload": "registers",
        "fields": {"level_cm": {"address": 2, "table": "input", "type": "f32", "word_order": "little",
                                "scale": 100, "unit": "cm", "range": [0, 1000]},
                   "temp_c": {"address": 4, "table": "input", "type": "i16", "scale": 0.1, "unit": "°C"},
                   "flow": {"address": 0, "table": "holding", "type": "u32", "optional": True}}})
    readings = []
    inputs = [0, 0] + f32_words(2.5, "little") + [0xFFF6]  # 2.5 m with CDAB word order, -1.0 °C
    async with modbus_server({1: [1, 2]}, input_registers=inputs) as port:
        source = ModbusSource([ModbusDeviceConfig(id="m", host="127.0.0.1", port=port, profile="cdab",
                                                  interval_s=0.1)], {"cdab": profile}, readings.append)
        async with polling(source):
            await until(lambda: readings, what="a reading")
    assert readings[0].values == {"level_cm": 250.0, "temp_c": -1.0, "flow": 65538.0}
    assert profile.register_blocks() == [("holding", 0, 2), ("input", 2, 3)]


def test_nan_and_out_of_range_registers_are_left_out():
    profile = PROFILES[RADAR]
    regs = {("holding", i): w for i, w in enumerate(f32_words(float("nan")) + f32_words(99.0) + [10, 1])}
    from datetime import UTC, datetime

    result = profile.decode_registers("r", regs, received=datetime.now(UTC))
    assert result.observation.values == {"echo_db": 1.0, "echo_lost": 1.0}
    assert any("not a finite number" in p for p in result.problems)
    assert any("air_gap_m" in p and "out of range" in p for p in result.problems)


def test_config_checks():
    devices = [ModbusDeviceConfig(id="a", host="h"), ModbusDeviceConfig(id="a", host="h", profile="generic-water-level-json")]
    problems = check_ingest(devices, {"a": "generic-rain-gauge-json"}, PROFILES)
    assert "sensors.modbus[1].id: device id 'a' is used more than once" in problems
    assert "sensors.modbus[1].profile: profile 'generic-water-level-json' is a mqtt profile, not modbus" in problems
    assert "sensors.modbus[0].profile: device 'a' has profile 'generic-rain-gauge-json' in sensors.devices" in problems
    with pytest.raises(ValueError, match="not a Modbus device profile"):
        ModbusSource(devices[1:], PROFILES, print)
