"""The sensor rule state an old gateway left behind (version 1, `data_dir/sensor_rules.json`), for the
upgrade test (tests/test_rule_state.py).

`tests/fixtures/sensor_rules_v1.json` is what the last gateway that wrote that file (commit a9ab37f^, the
parent of the SQLite store) exported after SENSORS saw `readings()`; made with that commit's code:

    git archive a9ab37f^ core detectors | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tests/legacy_state.py > tests/fixtures/sensor_rules_v1.json

Only core/ and detectors/ are used, so the same module runs against the old code and the new.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from core.model import Reading

CST = timezone(timedelta(hours=8))
START = datetime(2026, 7, 20, 8, 0, tzinfo=CST)
SENSORS = {
    "devices": [
        {"id": "wl-1", "kind": "water_level", "lon": 116.401, "lat": 39.911},
        {"id": "wl-2", "kind": "water_level", "lon": 116.402, "lat": 39.912},
        {"id": "rain-1", "kind": "rain_gauge", "lon": 116.400, "lat": 39.910},
    ],
    "level_rules": [{"name": "underpass", "category": "road_flooding", "case_from": "deep", "min_duration_s": 120,
                     "levels": [{"name": "shallow", "at": 15, "severity": "info"},
                                {"name": "deep", "at": 27, "severity": "warning"}]}],
    "rain_rules": [{"name": "rainstorm"}],
    "health": {"offline_after_s": 86400},
}


def readings() -> list[Reading]:
    """Two hours: wl-1 floods to deep (an open episode that filed a case), wl-2 stays at 4 cm (stuck,
    flat while it rains, battery low), rain-1 measures 54 mm in 90 min (the orange signal open), and a
    spike on wl-1 waits for the next reading to confirm it."""
    out = []
    for minute in range(120):
        t = START + timedelta(minutes=minute, seconds=30)
        level = 3.0 + min(minute, 60) * 0.5  # 33 cm after an hour
        out.append(Reading("wl-1", t, {"level_cm": level}, units={"level_cm": "cm"}))
        out.append(Reading("wl-2", t, {"level_cm": 4.0, "battery_v": 3.1}, units={"level_cm": "cm"}))
        out.append(Reading("rain-1", t, {"rain_mm": 0.6 if minute < 90 else 0.0}, units={"rain_mm": "mm"}))
    out.append(Reading("wl-1", START + timedelta(minutes=120, seconds=30), {"level_cm": 90.0}))  # a spike, held
    return out


if __name__ == "__main__":
    from detectors.sensor import SensorMonitor, SensorsConfig

    monitor = SensorMonitor(SensorsConfig.model_validate(SENSORS))
    for reading in readings():
        monitor.process(reading)
    print(json.dumps(monitor.export_state(), separators=(",", ":")))  # as the old store wrote it
