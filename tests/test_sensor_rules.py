"""Water and rain sensing rules (detectors/sensor): thresholds, rise, rain, health, CSV replay."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.model import Alert, HealthChange, Reading
from detectors.sensor import SensorMonitor, SensorsConfig
from gateway.protocols.readings_csv import SensorCsvError, parse_readings_csv, schedule

REPO = Path(__file__).resolve().parent.parent
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 7, 15, 14, 0, tzinfo=CST)

DEVICES = [
    {"id": "wl-1", "name": "Underpass A", "kind": "water_level", "lon": 116.397, "lat": 39.908,
     "address": "Renmin Rd underpass", "ranges": {"level_cm": [0, 300]}},
    {"id": "wl-2", "kind": "water_level", "lon": 116.40, "lat": 39.91},
    {"id": "rain-1", "kind": "rain_gauge", "lon": 116.398, "lat": 39.909},
]
LEVEL = {"name": "underpass", "warn_at": 20, "critical_at": 35, "clear_below_margin": 5, "min_duration_s": 60}


def monitor(devices: list[dict] = DEVICES, **sections) -> SensorMonitor:
    health = sections.pop("health", {"offline_after_s": None, "stuck_after_s": None})
    return SensorMonitor(SensorsConfig.model_validate({"devices": devices, "health": health, **sections}))


def reading(s: float, device: str = "wl-1", **values: float) -> Reading:
    return Reading(device=device, time=T0 + timedelta(seconds=s), values=values or {"level_cm": 0.0})


def feed(m: SensorMonitor, series: list[tuple[float, float]], device: str = "wl-1",
         field: str = "level_cm") -> list[Alert]:
    alerts: list[Alert] = []
    for s, v in series:
        alerts += verdicts(m.process(reading(s, device, **{field: v})))
    return alerts


def verdicts(outputs: list) -> list[Alert]:
    """The alerts among a detector's outputs (health changes are checked where they matter)."""
    return [o for o in outputs if isinstance(o, Alert)]


def summary(alerts: list[Alert]) -> list[tuple[str, str, str]]:
    return [(a.rule, a.state, a.severity) for a in alerts]


# -- level thresholds ------------------------------------------------------------------------


def test_level_opens_only_after_min_duration_with_location_and_facts():
    m = monitor(level_rules=[LEVEL])
    assert feed(m, [(0, 5), (30, 22), (60, 23)]) == []  # above for 30 s only
    alerts = feed(m, [(90, 24)])  # above since t=30: 60 s
    assert summary(alerts) == [("underpass", "open", "warning")]
    a = alerts[0]
    assert (a.source, a.subject_kind, a.subject_id, a.place) == ("sensor", "sensor", "wl-1", "underpass")
    assert (a.lon, a.lat, a.category) == (116.397, 39.908, "road_flooding")
    assert a.facts["value"] == 24 and a.facts["threshold"] == 20 and a.facts["duration_s"] == 60
    assert a.facts["address"] == "Renmin Rd underpass" and a.facts["unit"] == "cm"
    assert a.time == T0 + timedelta(seconds=90)


def test_short_spike_does_not_open():
    m = monitor(level_rules=[LEVEL])
    # a passing bus's wave: 50 s above both thresholds, then back down
    assert feed(m, [(0, 5), (10, 40), (30, 41), (60, 38), (70, 6), (100, 5), (200, 5)]) == []


def test_hysteresis_oscillation_around_threshold_does_not_flap():
    m = monitor(level_rules=[LEVEL])
    series = [(0, 21), (30, 21), (60, 21)]  # opens at 60
    # oscillates 17..23 around warn_at=20 for 10 minutes: never below 15 (= 20 - 5)
    series += [(60 + 30 * i, 23 if i % 2 else 17) for i in range(1, 21)]
    series += [(800, 14), (830, 13)]  # clears once, at 800
    alerts = feed(m, series)
    assert summary(alerts) == [("underpass", "open", "warning"), ("underpass", "closed", "warning")]
    assert alerts[1].time == T0 + timedelta(seconds=800)
    assert alerts[1].facts["peak"] == 23 and alerts[1].facts["duration_s"] == 740


def test_escalation_deescalation_and_one_close_on_the_same_key():
    m = monitor(level_rules=[LEVEL])
    series = [(0, 22), (60, 26), (120, 36), (150, 38), (180, 40), (240, 31), (300, 28), (360, 12)]
    alerts = feed(m, series)
    assert summary(alerts) == [("underpass", "open", "warning"), ("underpass", "open", "critical"),
                               ("underpass", "open", "warning"), ("underpass", "closed", "warning")]
    warning, critical, eased, closed = alerts
    assert warning.key == critical.key == eased.key == closed.key  # one episode: the desk updates its case
    assert critical.time == T0 + timedelta(seconds=180)  # >= 35 since 120, held 60 s
    assert critical.facts["escalated_from"] == "warning" and critical.facts["threshold"] == 35
    assert critical.facts["change"] == "escalated" and warning.facts["change"] == "opened"
    assert eased.time == T0 + timedelta(seconds=300)  # 31 holds critical (clears below 30), 28 does not
    assert eased.facts["change"] == "deescalated" and eased.facts["deescalated_from"] == "critical"
    assert closed.facts["peak"] == 40 and closed.facts["change"] == "cleared"


def test_renewed_rise_after_step_down_escalates_again():
    m = monitor(level_rules=[LEVEL])
    series = [(0, 36), (60, 37)]  # straight to critical
    series += [(120, 25), (180, 25)]  # below 30 (35 - 5): steps down silently
    series += [(240, 38), (300, 39)]  # critical again
    alerts = feed(m, series)
    assert summary(alerts) == [("underpass", "open", "critical"), ("underpass", "open", "warning"),
                               ("underpass", "open", "critical")]
    assert "escalated_from" not in alerts[0].facts and alerts[2].facts["escalated_from"] == "warning"
    assert alerts[1].time == T0 + timedelta(seconds=120)


# -- rate of rise --------------------------------------------------------------------------


RISE = {"name": "rising", "rise_cm": 10, "window_s": 600}


def test_rise_fires_on_fast_rise_and_clears_when_level_steadies():
    m = monitor(rise_rules=[RISE])
    fast = [(60 * i, 5 + 1.5 * i) for i in range(0, 9)]  # 1.5 cm/min: 10.5 cm after 7 min
    alerts = feed(m, fast)
    assert summary(alerts) == [("rising", "open", "warning")]
    a = alerts[0]
    assert a.time == T0 + timedelta(seconds=420) and a.category is None
    assert a.facts["rise"] == 10.5 and a.facts["rate_per_h"] == 90.0
    steady = [(600 + 60 * i, 17) for i in range(0, 12)]
    closed = feed(m, steady)
    assert summary(closed) == [("rising", "closed", "warning")]


def test_rise_does_not_fire_on_slow_rise():
    m = monitor(rise_rules=[RISE])
    slow = [(60 * i, 5 + 0.5 * i) for i in range(0, 61)]  # 30 cm in an hour, 5 cm per 10 min
    assert feed(m, slow) == []


# -- rain accumulation ----------------------------------------------------------------------


RAIN = {"name": "rain", "thresholds": [{"window_s": 3600, "mm": 16},
                                       {"window_s": 10800, "mm": 50, "severity": "critical"}]}


def test_rain_sliding_window_opens_escalates_and_clears_by_tick():
    m = monitor(rain_rules=[RAIN])
    # 2 mm every 5 min: 1 h holds 12 reports = 24 mm; 16 mm is reached with the 8th report
    alerts = feed(m, [(300 * i, 2.0) for i in range(1, 9)], device="rain-1", field="rain_mm")
    assert summary(alerts) == [("rain", "open", "warning")]
    assert alerts[0].facts["window_totals"] == {"1h": 16.0, "3h": 16.0, "6h": 16.0, "12h": 16.0, "24h": 16.0}
    # keep raining to 50 mm in total: the 3 h threshold escalates
    alerts = feed(m, [(300 * i, 2.0) for i in range(9, 26)], device="rain-1", field="rain_mm")
    assert summary(alerts) == [("rain", "open", "critical")]
    assert alerts[0].facts["window_totals"]["3h"] == 50.0 and alerts[0].facts["escalated_from"] == "warning"
    # the rain stops and the gauge goes quiet: the windows drain on ticks alone
    last = T0 + timedelta(seconds=300 * 25)
    assert verdicts(m.tick(last + timedelta(hours=1))) == []  # 3 h still holds 50 mm - 1 h of rain
    closed = verdicts(m.tick(last + timedelta(hours=3)))
    assert summary(closed) == [("rain", "closed", "critical")]
    assert closed[0].facts["window_totals"] == {"1h": 0.0, "3h": 0.0, "6h": 50.0, "12h": 50.0, "24h": 50.0}


def test_rain_window_excludes_old_rain():
    m = monitor(rain_rules=[{"name": "rain", "thresholds": [{"window_s": 3600, "mm": 16}]}])
    # 15 mm, a dry hour, then 15 mm: never 16 mm within one hour
    series = [(0, 15.0)] + [(600 * i, 0.0) for i in range(1, 7)] + [(3700, 15.0)]
    assert feed(m, series, device="rain-1", field="rain_mm") == []


def test_rain_cumulative_counter_with_reset():
    rule = {"name": "rain", "mode": "cumulative", "thresholds": [{"window_s": 3600, "mm": 16}]}
    m = monitor(rain_rules=[rule])
    # counter at 1200.0 (the baseline, not rain); +8 mm, then the logger restarts (counter back to 0)
    # and reports 9 mm since the restart: 17 mm within the hour
    series = [(0, 1200.0), (600, 1208.0), (1200, 9.0)]
    alerts = feed(m, series, device="rain-1", field="rain_total_mm")
    assert summary(alerts) == [("rain", "open", "warning")]
    assert alerts[0].facts["window_totals"]["1h"] == 17.0
    assert m.stats["counter_reset"] == 1


# -- sensor health -------------------------------------------------------------------------


def test_offline_after_silence_and_back_online_closes():
    m = monitor(health={"offline_after_s": 900, "stuck_after_s": None})
    assert feed(m, [(0, 5)]) + feed(m, [(0, 4)], device="wl-2") + feed(m, [(0, 0)], "rain-1", "rain_mm") == []
    assert verdicts(m.tick(T0 + timedelta(seconds=600))) == []
    feed(m, [(800, 5)], device="wl-2")
    feed(m, [(800, 0)], "rain-1", "rain_mm")
    alerts = verdicts(m.tick(T0 + timedelta(seconds=900)))
    assert [(a.subject_id, a.place, a.state) for a in alerts] == [("wl-1", "offline", "open")]
    assert alerts[0].rule == "sensor-health" and alerts[0].facts["silent_s"] == 900
    assert verdicts(m.tick(T0 + timedelta(seconds=1000))) == []  # still offline: no repeat
    outputs = m.process(reading(1200, "wl-1", level_cm=5))
    assert HealthChange("sensor", "wl-1", True, T0 + timedelta(seconds=1200)) in outputs
    back = verdicts(outputs)
    assert [(a.subject_id, a.place, a.state) for a in back] == [("wl-1", "offline", "closed")]
    assert back[0].facts["offline_s"] == 300


def test_device_that_never_reports_goes_offline():
    m = monitor(health={"offline_after_s": 900, "stuck_after_s": None})
    feed(m, [(0, 5), (600, 5)])
    feed(m, [(0, 5), (600, 5)], device="wl-2")
    alerts = verdicts(m.tick(T0 + timedelta(seconds=900)))
    assert [(a.subject_id, a.place) for a in alerts] == [("rain-1", "offline")]
    assert alerts[0].facts["last_seen"] is None


def test_stuck_sensor_opens_and_clears_zero_is_not_stuck():
    m = monitor(health={"offline_after_s": None, "stuck_after_s": 3600})
    assert feed(m, [(600 * i, 0.0) for i in range(0, 8)], device="wl-2") == []  # dry road reads 0 for long
    alerts = feed(m, [(600 * i, 12.3) for i in range(0, 7)])
    assert [(a.place, a.state) for a in alerts] == [("stuck:level_cm", "open")]
    assert alerts[0].time == T0 + timedelta(seconds=3600) and alerts[0].facts["unchanged_s"] == 3600
    alerts = feed(m, [(4200, 12.4)])
    assert [(a.place, a.state) for a in alerts] == [("stuck:level_cm", "closed")]


def test_out_of_range_value_kept_out_of_rules_and_alerted():
    m = monitor(level_rules=[{**LEVEL, "min_duration_s": 0}])
    alerts = feed(m, [(0, 999.0)])  # beyond the device's [0, 300]: a fault, not a flood
    assert [(a.rule, a.place, a.state) for a in alerts] == [("sensor-health", "range:level_cm", "open")]
    alerts = feed(m, [(30, 6.0)])
    assert [(a.rule, a.place, a.state) for a in alerts] == [("sensor-health", "range:level_cm", "closed")]
    assert m.stats["out_of_range"] == 1


# -- input hygiene -------------------------------------------------------------------------


def test_out_of_order_and_duplicate_readings_are_ignored_and_counted():
    m = monitor(level_rules=[LEVEL])
    feed(m, [(0, 22), (60, 22)])  # opens at 60
    assert feed(m, [(30, 2), (60, 2)]) == []  # older, then same time: would have closed it
    assert m.stats["out_of_order"] == 1 and m.stats["duplicate"] == 1
    assert summary(feed(m, [(90, 2)])) == [("underpass", "closed", "warning")]


def test_unknown_device_and_missing_field():
    m = monitor(level_rules=[LEVEL])
    assert m.process(reading(0, "nobody", level_cm=99)) == []
    assert m.stats["unknown_device"] == 1
    assert m.process(reading(0, "wl-1", battery_v=3.6)) == []
    assert m.stats["missing_field"] == 1


def test_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="critical_at"):
        SensorsConfig.model_validate({"level_rules": [{"warn_at": 30, "critical_at": 20}]})
    with pytest.raises(ValidationError, match="not in devices"):
        SensorsConfig.model_validate({"devices": DEVICES, "level_rules": [{"devices": ["wl-9"]}]})
    with pytest.raises(ValidationError, match="repeated: wl-1"):
        SensorsConfig.model_validate({"devices": [DEVICES[0], DEVICES[0]]})
    with pytest.raises(ValidationError, match="warn_ta"):
        SensorsConfig.model_validate({"level_rules": [{"warn_ta": 30}]})


# -- CSV replay ----------------------------------------------------------------------------


def test_csv_parses_values_units_and_empty_cells():
    text = ("# comment\n"
            "time,device,level_cm,rain_mm\n"
            "2026-07-15T14:00:00+08:00,wl-1,5.5,\n"
            "\n"
            "2026-07-15T14:00:30+08:00,rain-1,,0.4\n")
    rs = parse_readings_csv(text, profile="demo")
    assert [(r.device, dict(r.values), dict(r.units)) for r in rs] == [
        ("wl-1", {"level_cm": 5.5}, {"level_cm": "cm"}), ("rain-1", {"rain_mm": 0.4}, {"rain_mm": "mm"})]
    assert rs[0].time == T0 and rs[0].profile == "demo"
    assert [delay for delay, _ in schedule(rs, speed=30)] == [0.0, 1.0]


@pytest.mark.parametrize(("bad_line", "message"), [
    ("2026-07-15T14:00:30,wl-1,5", "line 4: time '2026-07-15T14:00:30' has no UTC offset"),
    ("yesterday,wl-1,5", "line 4: time 'yesterday' is not ISO 8601"),
    ("2026-07-15T14:00:30+08:00,wl-1,deep", "line 4: column 'level_cm' is 'deep', not a number"),
    ("2026-07-15T14:00:30+08:00,wl-1", "line 4: 2 cells, the header has 3"),
    ("2026-07-15T14:00:30+08:00,,5", "line 4: empty device"),
    ("2026-07-15T14:00:30+08:00,wl-1,nan", "line 4: column 'level_cm' is 'nan', not a finite number"),
])
def test_csv_errors_name_the_line(bad_line, message):
    text = f"time,device,level_cm\n2026-07-15T14:00:00+08:00,wl-1,5\n\n{bad_line}\n"
    with pytest.raises(SensorCsvError) as err:
        parse_readings_csv(text)
    assert message in str(err.value)


def test_csv_bad_header():
    with pytest.raises(SensorCsvError, match="line 2: header must be 'time,device,<field>,...'"):
        parse_readings_csv("# demo\ndevice,time,level_cm\n")


def test_demo_episode_warns_escalates_and_clears():
    """The shipped demo series with the thresholds recommended for configs/demo.yaml."""
    text = (REPO / "configs/data/sensors/flood-episode-2026-07-15.csv").read_text(encoding="utf-8")
    demo_devices = [{**DEVICES[0], "id": "wl-underpass-01"}, {**DEVICES[1], "id": "wl-street-02"},
                    {**DEVICES[2], "id": "rain-01"}]
    m = monitor(demo_devices, level_rules=[LEVEL], rise_rules=[RISE], rain_rules=[
        {"name": "rain", "thresholds": [{"window_s": 3600, "mm": 16},
                                        {"window_s": 3600, "mm": 40, "severity": "critical"}]}],
        health={})
    alerts = []
    for r in parse_readings_csv(text):
        alerts += verdicts(m.tick(r.time) + m.process(r))
    assert [(a.rule, a.subject_id, a.state, a.severity) for a in alerts] == [
        ("rain", "rain-01", "open", "warning"),
        ("rising", "wl-underpass-01", "open", "warning"),
        ("underpass", "wl-underpass-01", "open", "warning"),
        ("underpass", "wl-underpass-01", "open", "critical"),
        ("rain", "rain-01", "open", "critical"),
        ("rising", "wl-underpass-01", "closed", "warning"),
        ("underpass", "wl-underpass-01", "open", "warning"),  # de-escalated
        ("underpass", "wl-underpass-01", "closed", "warning"),
        ("rain", "rain-01", "open", "warning"),  # de-escalated
        ("rain", "rain-01", "closed", "warning"),
    ]
    assert m.stats["readings"] == 602 and m.stats["unknown_device"] == 0


def test_rain_steps_down_then_escalates_again():
    rule = {"name": "rain", "thresholds": [{"window_s": 3600, "mm": 16},
                                           {"window_s": 3600, "mm": 30, "severity": "critical"}]}
    m = monitor(rain_rules=[rule])
    alerts = feed(m, [(0, 16.0), (60, 14.0)], device="rain-1", field="rain_mm")  # 30 mm within 1 h
    assert summary(alerts) == [("rain", "open", "warning"), ("rain", "open", "critical")]
    # the first 16 mm leave the window at 3600: 14 mm is below 30 x 0.8 but above 16 x 0.8: step down
    eased = verdicts(m.tick(T0 + timedelta(seconds=3600)))
    assert summary(eased) == [("rain", "open", "warning")] and eased[0].facts["change"] == "deescalated"
    again = feed(m, [(3650, 20.0)], device="rain-1", field="rain_mm")  # 34 mm within 1 h
    assert summary(again) == [("rain", "open", "critical")] and again[0].facts["escalated_from"] == "warning"
