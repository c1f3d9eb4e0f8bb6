"""Device health: online at first sight, then only the detectors' HealthChange events move it, and only
changes are published."""

from datetime import UTC, datetime, timedelta

from core.model import HealthChange
from detectors.sensor import SensorMonitor, SensorsConfig
from gateway.health import DeviceHealth

T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def test_changes_are_published_once_each():
    published = []
    health = DeviceHealth(lambda kind, dev, state: published.append((kind, dev, state)))
    for i in range(3):
        health.seen("vehicle", "muck-01", T0 + timedelta(seconds=i))
    health.change(HealthChange("vehicle", "muck-01", False, T0 + timedelta(minutes=15)))
    health.change(HealthChange("vehicle", "muck-01", False, T0 + timedelta(minutes=16)))  # a repeat changes nothing
    health.change(HealthChange("vehicle", "muck-01", True, T0 + timedelta(minutes=20)))
    assert published == [
        ("vehicle", "muck-01", {"online": True, "since": T0.isoformat()}),
        ("vehicle", "muck-01", {"online": False, "since": (T0 + timedelta(minutes=15)).isoformat()}),
        ("vehicle", "muck-01", {"online": True, "since": (T0 + timedelta(minutes=20)).isoformat()}),
    ]
    assert health.snapshot() == {"online": 1, "offline": 0}


def test_the_sensor_detector_emits_typed_health_changes_with_its_offline_alert():
    monitor = SensorMonitor(SensorsConfig.model_validate({
        "devices": [{"id": "wl-1", "kind": "water_level", "lon": 116.4, "lat": 39.9}], "health": {"offline_after_s": 600}}))
    assert monitor.tick(T0) == []
    went = monitor.tick(T0 + timedelta(seconds=601))
    assert [type(o).__name__ for o in went] == ["Alert", "HealthChange"]
    assert went[1] == HealthChange("sensor", "wl-1", False, T0 + timedelta(seconds=601))
    # a wall-clock tick that leaves the device out (its clock is a recording's) changes nothing
    monitor2 = SensorMonitor(SensorsConfig.model_validate({
        "devices": [{"id": "wl-1", "kind": "water_level", "lon": 116.4, "lat": 39.9}], "health": {"offline_after_s": 600}}))
    monitor2.tick(T0)
    assert monitor2.tick(T0 + timedelta(hours=5), exclude={"wl-1"}) == []
