"""SensorMonitor.adopt_episode / forget_episode: a restored state squared with the case desk's view
(gateway/sensor_cases.py does it at start-up; the kill -9 end to end: tests/test_sensor_reconcile.py)."""

from __future__ import annotations

from datetime import timedelta

from test_sensor_rules import RAIN, T0, feed, monitor, reading, summary, verdicts

from core.model import HealthChange

LADDER = {"name": "underpass", "category": "road_flooding", "case_from": "deep", "min_duration_s": 60,
          "levels": [{"name": "shallow", "at": 15, "severity": "info"},
                     {"name": "deep", "at": 27, "severity": "warning"},
                     {"name": "impassable", "at": 40, "severity": "critical"}]}


def saved_then_restored(series: list[tuple[float, float]], **sections):
    """A monitor fed `series`, its state saved, then a case alert it raises on a reading the save
    missed; and a fresh monitor restored from that save (what a kill -9 leaves)."""
    sections = sections or {"level_rules": [LADDER]}
    before = monitor(**sections)
    feed(before, series)
    saved = before.export_state()
    restored = monitor(**sections)
    restored.restore_state(saved)
    return before, restored


def test_without_adoption_the_restored_monitor_never_closes_the_case():
    before, restored = saved_then_restored([(0, 5), (60, 5)])
    case = feed(before, [(120, 30), (180, 30)])  # deep for 60 s: the case, after the save
    assert [(a.state, a.category, a.facts["level"]) for a in case] == [("open", "road_flooding", "deep")]
    assert feed(restored, [(240, 3), (300, 2)]) == []  # the water fell: nothing would tell the case


def test_an_adopted_episode_clears_its_case_when_the_water_falls():
    before, restored = saved_then_restored([(0, 5), (60, 5)])
    (case,) = feed(before, [(120, 30), (180, 30)])
    since = T0 + timedelta(seconds=180)
    assert restored.adopt_episode("wl-1", "underpass", "underpass", since, level="deep", value=30.0) == "adopted"
    assert {e["rule"]: (e["level"], e["since"]) for e in restored.open_episodes()} == {"underpass": ("deep", since)}
    assert feed(restored, [(240, 31), (300, 29)]) == []  # still deep: the same episode, no new alert
    (cleared,) = feed(restored, [(360, 9)])  # below shallow's clear point (15 - 5)
    assert (cleared.state, cleared.key, cleared.category) == ("closed", case.key, "road_flooding")
    assert cleared.facts["reason"] == "receded" and cleared.facts["duration_s"] == 180 and cleared.facts["peak"] == 31


def test_an_adopted_episode_escalates_after_the_minimum_duration_and_steps_down_as_an_update():
    _, restored = saved_then_restored([(0, 5)])
    since = T0 + timedelta(seconds=60)
    restored.adopt_episode("wl-1", "underpass", "underpass", since, level="deep", value=28.0)
    assert feed(restored, [(120, 30), (180, 45)]) == []  # impassable, but not yet for 60 s
    (up,) = feed(restored, [(240, 46)])
    assert (up.facts["change"], up.facts["escalated_from"], up.facts["open_since"]) == (
        "escalated", "deep", since.isoformat())
    (down,) = feed(restored, [(300, 30)])  # below impassable's clear point, still deep
    assert (down.facts["change"], down.facts["level"], down.category) == ("deescalated", "deep", "road_flooding")


def test_a_restored_episode_that_had_no_case_yet_takes_the_case_s_level():
    before, restored = saved_then_restored([(0, 20), (60, 20)])  # shallow: open, no case
    assert [e["level"] for e in restored.open_episodes()] == ["shallow"]
    feed(before, [(120, 30), (180, 30)])  # deep: the case, after the save
    assert restored.adopt_episode("wl-1", "underpass", "underpass", T0 + timedelta(seconds=60),
                                  level="deep", value=30.0) == "open"
    (down,) = feed(restored, [(240, 18)])  # a step down of the case's episode: an update of the case
    assert (down.facts["change"], down.facts["level"], down.category) == ("deescalated", "shallow", "road_flooding")


def test_a_level_the_ladder_no_longer_names_is_taken_as_the_first_that_files_a_case():
    m = monitor(level_rules=[LADDER])
    assert m.adopt_episode("wl-1", "underpass", "underpass", T0, level="knee-deep") == "adopted"
    assert [e["level"] for e in m.open_episodes()] == ["deep"]


def test_what_no_configured_rule_watches_is_unknown():
    m = monitor(level_rules=[{**LADDER, "devices": ["wl-1"]}])
    assert m.adopt_episode("wl-9", "underpass", "underpass", T0, level="deep") == "unknown"  # device gone
    assert m.adopt_episode("wl-2", "underpass", "underpass", T0, level="deep") == "unknown"  # not watched
    assert m.adopt_episode("wl-1", "old-rule", "old-rule", T0, level="deep") == "unknown"  # rule gone
    assert m.adopt_episode("wl-1", "sensor-health", "battery:battery_v", T0) == "adopted"
    assert m.adopt_episode("wl-1", "sensor-health", "battery:solar_v", T0) == "unknown"  # no check closes it
    assert m.open_episodes() == []


def test_an_adopted_rain_signal_clears_when_its_window_drains():
    m = monitor(rain_rules=[{**RAIN, "category": "road_flooding"}])
    since = T0 + timedelta(minutes=30)
    assert m.adopt_episode("rain-1", "rain", "rain", since, level="critical", value=50.0) == "adopted"
    closed = verdicts(m.tick(T0 + timedelta(hours=1)))  # no rain in any window: it eased
    assert summary(closed) == [("rain", "closed", "critical")] and closed[0].category == "road_flooding"
    assert closed[0].facts["duration_s"] == 1800


def test_an_adopted_rise_clears_when_the_level_steadies():
    rise = {"name": "rising", "rise_cm": 10, "window_s": 600, "category": "road_flooding"}
    m = monitor(rise_rules=[rise])
    assert m.adopt_episode("wl-1", "rising", "rising", T0, value=20.0) == "adopted"
    assert summary(feed(m, [(60, 20)])) == [("rising", "closed", "warning")]


def test_an_adopted_offline_case_clears_on_the_next_report():
    m = monitor(health={"offline_after_s": 900, "stuck_after_s": None, "category": "road_flooding"})
    assert m.adopt_episode("wl-1", "sensor-health", "offline", T0) == "adopted"
    outputs = m.process(reading(600, level_cm=5))
    assert [(a.place, a.state) for a in verdicts(outputs)] == [("offline", "closed")]
    assert HealthChange("sensor", "wl-1", True, T0 + timedelta(seconds=600)) in outputs


def test_an_adopted_stuck_case_stays_open_while_the_value_stays():
    m = monitor(health={"offline_after_s": None, "stuck_after_s": 3600})
    assert m.adopt_episode("wl-1", "sensor-health", "stuck:level_cm", T0, value=12.0) == "adopted"
    assert feed(m, [(60, 12)]) == []
    assert [(a.place, a.state) for a in feed(m, [(120, 13)])] == [("stuck:level_cm", "closed")]


def test_an_adopted_episode_is_in_the_next_save():
    m = monitor(level_rules=[LADDER])
    m.take_dirty()
    m.adopt_episode("wl-2", "underpass", "underpass", T0, level="deep", value=30.0)
    assert m.take_dirty() == {"wl-2"}
    episode = m.export_state(["wl-2"])["devices"]["wl-2"]["level"]["underpass"]["open"]
    assert episode == {"level": 1, "opened_at": T0.timestamp(), "peak": 30.0, "case": True}


def test_a_forgotten_episode_lets_water_that_comes_back_open_a_new_one():
    _, restored = saved_then_restored([(0, 30), (60, 30)])  # deep, a case, in the save; then it cleared
    assert restored.forget_episode("wl-1", "underpass") and restored.open_episodes() == []
    assert not restored.forget_episode("wl-1", "underpass")
    assert feed(restored, [(120, 30)]) == []  # the debounce starts afresh
    (opened,) = feed(restored, [(180, 30)])
    assert (opened.facts["change"], opened.facts["level"], opened.category) == ("opened", "deep", "road_flooding")
