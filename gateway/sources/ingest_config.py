"""Config of the sensor transports beside MQTT: Modbus TCP polling and HTTP push (NB-IoT platforms).

Kept apart from the sources themselves so that `citygate check` needs neither pymodbus nor a socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from core.schema import StrictModel


class ModbusDeviceConfig(StrictModel):
    id: str = Field(description="Device id its readings carry (list it in sensors.devices too, for the rules).")
    host: str = Field(description="Modbus TCP address of the device or of its RS-485 gateway.")
    port: int = Field(502, ge=1, le=65535, description="Modbus TCP port.")
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit (slave) id behind that address.")
    profile: str = Field("radar-level-modbus-tcp", description="Device profile with the register map "
                         "(transport: modbus).")
    interval_s: float = Field(60.0, ge=0.1, description="Seconds between polls.")
    timeout_s: float = Field(3.0, gt=0, description="A poll (connect + reads) that takes longer fails; the "
                             "other devices are polled meanwhile regardless.")


class HttpIngestConfig(StrictModel):
    enabled: bool = Field(False, description="Accept uplinks pushed by IoT platforms on POST /ingest/<profile>.")
    host: str = Field("0.0.0.0", description="Address of the push listener.")
    port: int = Field(8090, ge=0, le=65535, description="Port of the push listener.")
    token: str | None = Field(None, description="Bearer token the platform must send (e.g. ${CITYGATE_INGEST_TOKEN}); "
                              "required when enabled.")
    max_body_bytes: int = Field(65_536, ge=256, le=16 * 1024 * 1024, description="Larger requests are refused "
                                "with 413.")

    @model_validator(mode="after")
    def _token(self) -> HttpIngestConfig:
        if self.enabled and not self.token:
            raise ValueError("http_ingest needs a token when enabled (anyone could push readings otherwise)")
        return self


def check_ingest(modbus: list[ModbusDeviceConfig], device_profiles: Mapping[str, str], profiles: Mapping[str, Any],
                 where: str = "sensors") -> list[str]:
    """Cross-checks: each Modbus device's profile exists and is a Modbus one, ids are unique, and a device
    also listed in sensors.devices names the same profile there (the sources enforce it)."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, device in enumerate(modbus):
        at = f"{where}.modbus[{i}]"
        if device.id in seen:
            problems.append(f"{at}.id: device id {device.id!r} is used more than once")
        seen.add(device.id)
        profile = profiles.get(device.profile)
        if profile is None:
            problems.append(f"{at}.profile: no device profile named {device.profile!r}")
        elif profile.transport != "modbus":
            problems.append(f"{at}.profile: profile {device.profile!r} is a {profile.transport} profile, not modbus")
        configured = device_profiles.get(device.id)
        if configured and configured != device.profile:
            problems.append(f"{at}.profile: device {device.id!r} has profile {configured!r} in {where}.devices")
    return problems
