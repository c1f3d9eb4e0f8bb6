"""Sensor health and input hygiene (detectors/sensor): spikes, readings dated in the future, offline
after k report intervals, flat-line against neighbours, low battery; level ladders' config."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from core.model import Alert, HealthChange, Reading
from detectors.sensor import SensorMonitor, SensorsConfig

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 7, 15, 14, 0, tzinfo=CST)
OFF = {"offline_after_s": None, "stuck_after_s": None, "flatline_after_s": None}
DEVICES = [
    {"id": "wl-1", "kind": "water_level", "lon": 116.4000, "lat": 39.9100, "ranges": {"level_cm": [0, 300]}},
    {"id": "wl-2", "kind": "water_level", "lon": 116.4050, "lat": 39.9100},  # ~430 m east
    {"id": "wl-far", "kind": "water_level", "lon": 116.5000, "lat": 39.9100, "group": "east"},  # ~8.5 km
    {"id": "rain-1", "kind": "rain_gauge", "lon": 116.4010, "lat": 39.9110},
]
LEVEL = {"name": "underpass", "warn_at": 20, "critical_at": 35, "min_duration_s": 0}


def monitor(health: dict | None = None, devices: list[dict] = DEVICES, **sections) -> SensorMonitor:
    return SensorMonitor(SensorsConfig.model_validate({"devices": devices, "health": {**OFF, **(health or {})},
                                                       **sections}))


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def send(m: SensorMonitor, s: float, device: str = "wl-1", **values: float) -> list[Alert]:
    return [o for o in m.process(Reading(device, at(s), values)) if isinstance(o, Alert)]


def series(m: SensorMonitor, points: list[tuple[float, float]], device: str = "wl-1",
           field: str = "level_cm") -> list[Alert]:
    return [a for s, v in points for a in send(m, s, device, **{field: v})]


def brief(alerts: list[Alert]) -> list[tuple]:
    return [(a.rule, a.place, a.state, a.time) for a in alerts]


# -- spikes --------------------------------------------------------------------------------


def test_a_single_sample_spike_neither_opens_nor_closes():
    m = monitor(level_rules=[LEVEL])
    assert series(m, [(0, 3), (60, 180), (120, 3), (180, 3)]) == []  # would open critical at 60
    assert m.stats["spike_dropped"] == 1
    opened = series(m, [(240, 25), (300, 26)])
    assert brief(opened) == [("underpass", "underpass", "open", at(240))]
    assert series(m, [(360, 34), (420, 0), (480, 34)]) == []  # a spike down does not clear it
    assert m.stats["spike_dropped"] == 2


def test_a_real_jump_is_confirmed_by_the_next_reading_one_interval_late():
    m = monitor(level_rules=[LEVEL])
    assert series(m, [(0, 3), (60, 50)]) == []  # held: could be a spike
    alerts = series(m, [(120, 52)])
    assert [(a.state, a.severity, a.time, a.facts["value"]) for a in alerts] == [("open", "critical", at(120), 52)]
    assert m.stats["spike_dropped"] == 0


# -- readings dated in the future ------------------------------------------------------------


def test_a_reading_from_the_future_is_dropped_live_and_does_not_silence_the_sensor():
    m = monitor(level_rules=[LEVEL])
    m.tick(at(0))
    assert series(m, [(10, 5)]) == []
    assert series(m, [(10 + 8 * 3600, 30)]) == []  # a clock 8 h ahead (a time-zone bug)
    assert m.stats["future"] == 1
    m.tick(at(60))
    assert brief(series(m, [(70, 25)])) == [("underpass", "underpass", "open", at(70))]  # not "out of order"
    assert m.stats["out_of_order"] == 0


def test_without_a_clock_a_far_jump_waits_for_the_next_reading():
    m = monitor(level_rules=[LEVEL])
    series(m, [(0, 5)])
    assert series(m, [(86400 * 365, 25)]) == []  # a year ahead: held
    assert brief(series(m, [(60, 25)])) == [("underpass", "underpass", "open", at(60))]  # back: it was bogus
    assert m.stats["future"] == 1
    # a real gap (a recording with a 2 h hole) is taken once the next reading follows it
    assert series(m, [(7260, 4)]) == []
    alerts = series(m, [(7320, 4)])
    assert [(a.state, a.time) for a in alerts] == [("closed", at(7260))]
    assert m.stats["future"] == 1


# -- offline after k report intervals ----------------------------------------------------------


def test_offline_after_k_intervals_of_the_device_or_its_profile_else_offline_after_s():
    devices = [{**DEVICES[0], "report_interval_s": 60},
               {**DEVICES[1], "profile": "nb-level"},
               {**DEVICES[3]}]
    m = monitor({"offline_after_s": 1000, "offline_after_intervals": 3, "report_intervals": {"nb-level": 300}},
                devices)
    for dev in ("wl-1", "wl-2", "rain-1"):
        send(m, 0, dev, level_cm=5)
    went = lambda s: sorted(a.subject_id for a in m.tick(at(s)) if isinstance(a, Alert))  # noqa: E731
    assert went(179) == []
    assert went(180) == ["wl-1"]  # 3 x 60 s
    assert went(899) == []
    assert went(900) == ["wl-2"]  # 3 x 300 s
    assert went(1000) == ["rain-1"]  # offline_after_s


def test_going_offline_closes_the_open_flood_episode():
    m = monitor({"offline_after_s": 600}, level_rules=[LEVEL])
    assert [a.state for a in series(m, [(0, 25)])] == ["open"]
    out = m.tick(at(600))
    alerts = [o for o in out if isinstance(o, Alert) and o.subject_id == "wl-1"]
    assert [(a.rule, a.place, a.state) for a in alerts] == [("sensor-health", "offline", "open"),
                                                            ("underpass", "underpass", "closed")]
    assert alerts[1].facts["reason"] == "offline" and alerts[1].category == "road_flooding"
    assert HealthChange("sensor", "wl-1", False, at(600)) in out
    back = series(m, [(700, 26)])  # still flooded when it comes back: a new episode
    assert [(a.rule, a.state) for a in back] == [("sensor-health", "closed"), ("underpass", "open")]


# -- flat-line ------------------------------------------------------------------------------


def test_flat_line_while_a_neighbouring_gauge_measures_rain():
    m = monitor({"flatline_after_s": 1800, "flatline_rain_mm": 10}, rain_rules=[{"name": "rain"}])
    alerts = []
    for i in range(0, 40):
        s = 60 * i
        alerts += send(m, s, "rain-1", rain_mm=0.5)
        alerts += send(m, s + 1, "wl-1", level_cm=0.0)  # zero while 20 mm fall 150 m away
    flat = [a for a in alerts if a.place == "flatline:level_cm"]
    assert [(a.state, a.time) for a in flat] == [("open", at(1801))]
    assert flat[0].facts["neighbour"] == "rain-1" and flat[0].facts["neighbour_rain_mm"] >= 10
    assert [a.state for a in send(m, 2500, "wl-1", level_cm=4.0) if a.place == "flatline:level_cm"] == ["closed"]


def test_flat_line_while_a_neighbour_rises_and_not_when_all_is_dry():
    m = monitor({"flatline_after_s": 1800})
    alerts = []
    for i in range(0, 40):
        alerts += send(m, 60 * i, "wl-2", level_cm=2.0 + 0.5 * i)  # neighbour rises 20 cm
        alerts += send(m, 60 * i + 1, "wl-1", level_cm=3.0)
        alerts += send(m, 60 * i + 2, "wl-far", level_cm=3.0)  # 8.5 km away, alone in its group: no neighbour
    assert [(a.subject_id, a.place, a.state) for a in alerts] == [("wl-1", "flatline:level_cm", "open")]
    assert alerts[0].facts["neighbour"] == "wl-2"


def test_a_group_makes_distant_devices_neighbours():
    devices = [{**DEVICES[0], "group": "east"}, DEVICES[2]]
    m = monitor({"flatline_after_s": 600, "flatline_rise_cm": 5}, devices)
    alerts = []
    for i in range(0, 15):
        alerts += send(m, 60 * i, "wl-far", level_cm=2.0 + i)
        alerts += send(m, 60 * i + 1, "wl-1", level_cm=3.0)
    assert [(a.subject_id, a.place) for a in alerts] == [("wl-1", "flatline:level_cm")]


# -- battery ----------------------------------------------------------------------------------


def test_low_battery_opens_once_and_clears_with_hysteresis():
    m = monitor({"low_battery": {"battery_v": 3.3}})
    alerts = series(m, [(0, 3.4), (60, 3.25), (120, 3.2), (180, 3.35), (240, 3.3), (300, 3.47)], field="battery_v")
    assert [(a.place, a.state, a.time) for a in alerts] == [("battery:battery_v", "open", at(60)),
                                                           ("battery:battery_v", "closed", at(300))]


# -- level ladder config ----------------------------------------------------------------------


def test_levels_list_and_legacy_thresholds_are_the_same_ladder():
    legacy = SensorsConfig.model_validate({"level_rules": [LEVEL]}).level_rules[0].ladder
    listed = SensorsConfig.model_validate({"level_rules": [{"name": "u", "min_duration_s": 0, "levels": [
        {"name": "warning", "at": 20}, {"name": "critical", "at": 35, "severity": "critical"}]}]}).level_rules[0].ladder
    assert legacy == listed
    assert [(lv.name, lv.at, lv.clear_at) for lv in legacy] == [("warning", 20, 15), ("critical", 35, 30)]


def test_each_level_has_its_own_clear_point_and_duration():
    rule = {"name": "u", "levels": [{"name": "a", "at": 15, "severity": "info", "clear_at": 14, "min_duration_s": 0},
                                    {"name": "b", "at": 27, "min_duration_s": 120}]}
    m = monitor(level_rules=[rule])
    alerts = series(m, [(0, 16), (60, 28), (120, 29), (180, 29), (240, 14.5), (300, 13.9)])
    assert [(a.facts["level"], a.facts["change"], a.time) for a in alerts] == [
        ("a", "opened", at(0)), ("b", "escalated", at(180)), ("a", "deescalated", at(240)), ("a", "cleared", at(300))]


@pytest.mark.parametrize(("rule", "message"), [
    ({"levels": [{"name": "a", "at": 30}, {"name": "b", "at": 20}]}, "must be above 'a'"),
    ({"levels": [{"name": "a", "at": 10}, {"name": "a", "at": 20}]}, "repeated: a"),
    ({"levels": [{"name": "a", "at": 10}], "warn_at": 5}, "either levels or warn_at"),
    ({"levels": [{"name": "a", "at": 10, "clear_at": 12}]}, "clears at 12, above"),
    ({"levels": [{"name": "a", "at": 10, "severity": "critical"}, {"name": "b", "at": 20, "severity": "info"}]},
     "lower severity"),
    ({"levels": [{"name": "a", "at": 10}], "case_from": "z"}, "case_from 'z' is not one of its levels"),
])
def test_ladder_config_errors_name_the_problem(rule, message):
    with pytest.raises(ValidationError, match=message):
        SensorsConfig.model_validate({"level_rules": [{"name": "u", **rule}]})
