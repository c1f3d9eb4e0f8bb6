"""Modbus TCP poller: reads each device's register map at its interval and hands on Readings.

Every device has its own task, its own connection and its own timeout (connect + reads together),
so a device that is off, unreachable or silent only costs its own slot: the others keep their
rhythm. At most `max_concurrent` polls run at once (an edge box must not open hundreds of
sockets in one burst). A failed poll closes the connection and is retried at the next interval.
Decoding goes through the same `Intake` as MQTT: counted, rate-limited logs, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.aio import wait_or_stop
from gateway.profiles import DeviceProfile
from gateway.sources.ingest_config import ModbusDeviceConfig
from gateway.sources.intake import Intake, OnObservation

__all__ = ["ModbusSource"]

log = logging.getLogger(__name__)


class PollError(Exception):
    """A poll failed (connection, exception response, short answer); the message says which."""


class _Device:
    def __init__(self, config: ModbusDeviceConfig, profile: DeviceProfile) -> None:
        self.config, self.profile = config, profile
        self.client: AsyncModbusTcpClient | None = None
        self.counts = {"polls": 0, "ok": 0, "failed": 0, "timeouts": 0, "consecutive_failures": 0}
        self.last_error = ""


class ModbusSource:
    name = "modbus"

    def __init__(self, devices: Iterable[ModbusDeviceConfig], profiles: Mapping[str, DeviceProfile],
                 on_observation: OnObservation, *, known_devices: Mapping[str, str | None] | None = None,
                 max_concurrent: int = 16, log_interval_s: float = 60.0) -> None:
        self.devices: list[_Device] = []
        for config in devices:
            profile = profiles.get(config.profile)
            if profile is None or profile.transport != "modbus":
                raise ValueError(f"Modbus device {config.id!r}: {config.profile!r} is not a Modbus device profile")
            self.devices.append(_Device(config, profile))
        self.intake = Intake(on_observation, known_devices=known_devices, log_interval_s=log_interval_s, logger=log)
        self._slots = asyncio.Semaphore(max_concurrent)

    def stats(self) -> dict[str, Any]:
        return {**self.intake.stats,
                "devices": {d.config.id: {**d.counts, "last_error": d.last_error} for d in self.devices}}

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every device until `stop` is set."""
        try:
            await asyncio.gather(*(self._device_loop(d, stop) for d in self.devices))
        finally:
            for device in self.devices:
                self._close(device)

    async def _device_loop(self, device: _Device, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            async with self._slots:
                await self.poll_once(device)
            if await wait_or_stop(stop, max(0.0, device.config.interval_s - (loop.time() - started))):
                return

    async def poll_once(self, device: _Device) -> None:
        """One poll of one device; every failure is counted and logged (rate-limited), never raised."""
        cfg = device.config
        device.counts["polls"] += 1
        try:
            registers = await asyncio.wait_for(self._read(device), cfg.timeout_s)
        except (TimeoutError, PollError, ModbusException, OSError) as exc:
            timeout = isinstance(exc, TimeoutError)
            device.counts["timeouts" if timeout else "failed"] += 1
            device.counts["consecutive_failures"] += 1
            device.last_error = f"no answer within {cfg.timeout_s:g} s" if timeout else str(exc)[:200]
            self.intake.problem(cfg.id)
            self.intake.warn(cfg.id, "Modbus device %r (%s:%d unit %d): poll failed: %s (%d in a row)", cfg.id,
                             cfg.host, cfg.port, cfg.unit_id, device.last_error, device.counts["consecutive_failures"])
            self._close(device)  # a half-open connection must not carry a stale answer into the next poll
            return
        device.counts["ok"] += 1
        device.counts["consecutive_failures"] = 0
        received = datetime.now(UTC)
        observations, _ = self.intake.decode(
            device.profile, lambda: [device.profile.decode_registers(cfg.id, registers, received=received)],
            device=cfg.id)
        for obs in observations:
            await self.intake.deliver(obs)

    async def _read(self, device: _Device) -> dict[tuple[str, int], int]:
        cfg = device.config
        if device.client is None or not device.client.connected:
            self._close(device)
            # reconnect_delay=0: no background reconnects; the next poll reconnects, at the device's interval
            device.client = AsyncModbusTcpClient(cfg.host, port=cfg.port, timeout=cfg.timeout_s, retries=0,
                                                 reconnect_delay=0)
            if not await device.client.connect():
                raise PollError(f"cannot connect to {cfg.host}:{cfg.port}")
        client = device.client
        registers: dict[tuple[str, int], int] = {}
        for table, first, count in device.profile.register_blocks():
            read = client.read_holding_registers if table == "holding" else client.read_input_registers
            answer = await read(first, count=count, device_id=cfg.unit_id)
            if answer.isError():
                raise PollError(f"{table} registers {first}..{first + count - 1}: exception response {answer}")
            if len(answer.registers) < count:
                raise PollError(f"{table} registers {first}..{first + count - 1}: {len(answer.registers)} returned")
            registers.update({(table, first + i): value for i, value in enumerate(answer.registers)})
        return registers

    @staticmethod
    def _close(device: _Device) -> None:
        if device.client is not None:
            device.client.close()
            device.client = None
