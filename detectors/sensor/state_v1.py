"""The sensor rules' state as gateways before per-device saves wrote it (version 1: one document of
rule-wide lists, `data_dir/sensor_rules.json`), converted to the current per-device form (version 2,
`SensorMonitor.restore_state`). Pure: a dict in, a dict out. Times were epoch seconds in both; an
episode, a rain window and a minute series are written the same way in both.

Version 1 kept no counts of cumulative counters (they were not saved yet): after the upgrade a counter
gauge's first report only primes its counter, as after any start without a saved count.
"""

from __future__ import annotations

from typing import Any

CONDITIONS = ("stuck", "flat", "bad_range", "low_battery")


def upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 state as version 2. Raises ValueError (or KeyError, TypeError) when it is not one."""
    if state.get("version") != 1:
        raise ValueError(f"sensor rule state version {state.get('version')!r}, expected 1")
    devices: dict[str, dict[str, Any]] = {}

    def entry(device: str) -> dict[str, Any]:
        return devices.setdefault(str(device), {})

    for key in ("last_time", "offline"):
        for device, t in state.get(key, {}).items():
            if t is not None:
                entry(device)[key] = t
    for device, name, value, t in state.get("same", []):
        entry(device).setdefault("same", {})[name] = [value, t]
    for condition in CONDITIONS:
        for device, name in state.get("conditions", {}).get(condition, []):
            entry(device).setdefault("conditions", {}).setdefault(condition, []).append(name)
    for device, name, accepted, pending in state.get("spikes", []):
        entry(device).setdefault("spikes", {})[name] = [accepted, pending]
    for device, name, points in state.get("series", []):
        entry(device).setdefault("series", {})[name] = points
    for kind, fields in (("level", ("since", "open")), ("rise", ("history", "open")),
                         ("rain", ("sums", "last_counter", "open"))):
        for item in state.get(kind, []):
            rules = entry(item["device"]).setdefault(kind, {})
            rules[item["rule"]] = {name: item.get(name) for name in fields}
    return {"version": 2, "epoch": state.get("epoch"), "devices": devices}
