"""Fleet config: defaults that work, and errors that name the field in a plain sentence."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from detectors.vehicle.config import FleetConfig
from detectors.vehicle.identity import terminal_key
from detectors.vehicle.monitor import FleetMonitor
from detectors.vehicle.timewin import parse_window


def test_empty_config_is_valid_and_runs():
    cfg = FleetConfig()
    assert cfg.rules.forbidden_zone.category == "muck_truck_forbidden_zone"
    assert cfg.rules.offline.category is None and cfg.timezone == "Asia/Shanghai"
    assert FleetMonitor(cfg).zone_layer is not None


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"zones": [{"id": "z", "polygon": [[116.4, 39.9], [116.5, 39.9]]}]}, "zones.0.polygon", "at least 3 points"),
    ({"routes": [{"id": "r", "line": [[116.4, 39.9]]}]}, "routes.0.line", "at least 2 points"),
    ({"vehicles": [{"id": "v", "terminal": "1", "working_hours": ["6-22"]}]}, "vehicles.0.working_hours",
     "HH:MM-HH:MM"),
    ({"zones": [{"id": "z", "polygon": [[39.9, 116.4], [39.9, 116.5], [40, 116.5]]}]}, "zones.0.polygon",
     "longitude first"),
    ({"zones": [{"id": "z", "crs": "bd09", "polygon": [[1, 1], [2, 1], [2, 2]]}]}, "zones.0.crs", "wgs84"),
    ({"vehicles": [{"id": "v", "terminal": "1", "colour": "red"}]}, "vehicles.0.colour", "Extra inputs"),
    ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
])
def test_errors_name_the_field(data, field, words):
    with pytest.raises(ValidationError) as e:
        FleetConfig.model_validate(data)
    err = e.value.errors()[0]
    assert ".".join(str(p) for p in err["loc"]) == field
    assert words in str(e.value)


def test_cross_references_are_checked():
    with pytest.raises(ValidationError, match="names route 'nope'"):
        FleetConfig.model_validate({"vehicles": [{"id": "v", "terminal": "1", "route": "nope"}]})
    with pytest.raises(ValidationError, match="repeated: 1"):
        FleetConfig.model_validate({"vehicles": [{"id": "a", "terminal": "1"}, {"id": "b", "terminal": "1"}]})


def test_windows():
    w = parse_window("22:00-06:00")
    assert w.crosses_midnight and w.contains(23 * 60) and w.contains(5 * 60) and not w.contains(12 * 60)
    assert parse_window("00:00-24:00").contains(0) and parse_window("00:00-24:00").minutes == 1440
    for bad in ("25:00-01:00", "08:00-08:00", "08:60-09:00"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_terminal_numbers_match_with_or_without_leading_zeros():
    assert terminal_key("013912345678") == terminal_key("13912345678")
    assert terminal_key("tracker-7") == "tracker-7"
