"""A replayed rainstorm (tests/storm.py: stratiform rain, then a Chicago-hyetograph burst flooding an
underpass) through the sensor rules: exactly the expected episodes, the right rainstorm signal at the
right minute, no chatter, the spike ignored; the same episodes across a restart in the middle; the
flooding case's evidence chart."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import REPO
from counter_storm import PROFILE, uplinks
from PIL import Image, ImageDraw
from storm import GAUGE, PROBE, START, first_minute_reaching, storm, window_total

from core.fonts import cjk_font_path
from core.fonts import font as cjk_font
from core.model import Alert
from detectors.sensor import SensorMonitor, SensorsConfig
from detectors.sensor.chart import CROSSING, HEIGHT, LEFT, RIGHT, TOP, WIDTH, ChartLine, render_level_chart
from gateway.profiles import CounterTracker, load_profiles

CONFIG = {
    "devices": [
        {"id": GAUGE, "kind": "rain_gauge", "name": "暴雨测试雨量站", "lon": 116.400, "lat": 39.910},
        {"id": PROBE, "kind": "water_level", "name": "测试下穿隧道", "lon": 116.401, "lat": 39.911,
         "address": "测试路下穿隧道", "ranges": {"level_cm": [0, 300]}},
    ],
    "level_rules": [{"name": "underpass", "min_duration_s": 120, "case_from": "deep", "levels": [
        {"name": "shallow", "at": 15, "severity": "info", "label": "积水15cm"},
        {"name": "deep", "at": 27, "severity": "warning", "label": "积水27cm"},
        {"name": "impassable", "at": 40, "severity": "critical", "label": "积水40cm"}]}],
    "rise_rules": [{"name": "rising", "rise_cm": 5, "window_s": 600}],
    "rain_rules": [{"name": "rainstorm"}],  # the default ladder: the national rainstorm signals
}

# (day hh:mm:ss, rule, state, severity, level, change): what the storm must produce, nothing more.
EXPECTED = [
    ("20 08:09:30", "rainstorm", "open", "info", "blue", "opened"),
    ("20 09:04:30", "rainstorm", "open", "warning", "yellow", "escalated"),
    ("20 09:27:35", "rising", "open", "warning", None, None),
    ("20 09:28:30", "rainstorm", "open", "critical", "orange", "escalated"),
    ("20 09:34:35", "underpass", "open", "info", "shallow", "opened"),
    ("20 09:39:35", "underpass", "open", "warning", "deep", "escalated"),
    ("20 09:50:30", "rainstorm", "open", "critical", "red", "escalated"),
    ("20 09:52:35", "underpass", "open", "critical", "impassable", "escalated"),
    ("20 10:09:35", "rising", "closed", "warning", None, None),
    ("20 12:19:35", "underpass", "open", "warning", "deep", "deescalated"),
    ("20 12:38:30", "rainstorm", "open", "critical", "orange", "deescalated"),
    ("20 13:02:35", "underpass", "open", "info", "shallow", "deescalated"),
    ("20 13:07:30", "rainstorm", "open", "warning", "yellow", "deescalated"),
    ("20 13:44:35", "underpass", "closed", "info", "shallow", "cleared"),
    ("20 16:07:30", "rainstorm", "open", "info", "blue", "deescalated"),
    ("20 22:07:30", "rainstorm", "closed", "info", "blue", "cleared"),
]


def monitor() -> SensorMonitor:
    return SensorMonitor(SensorsConfig.model_validate(CONFIG))


def run(m: SensorMonitor, readings) -> list[Alert]:
    return [o for r in readings for o in m.process(r) if isinstance(o, Alert)]


def summary(alerts: list[Alert]) -> list[tuple]:
    return [(a.time.strftime("%d %H:%M:%S"), a.rule, a.state, a.severity, a.facts.get("level"), a.facts.get("change"))
            for a in alerts]


def test_the_storm_gives_exactly_the_expected_episodes():
    m = monitor()
    alerts = run(m, storm())
    assert summary(alerts) == EXPECTED
    assert m.stats["spike_dropped"] == 1 and m.stats["readings"] == len(storm())  # 180 cm at 05:00: nothing


def test_each_rainstorm_signal_at_the_minute_its_window_reaches_it():
    alerts = [a for a in run(monitor(), storm()) if a.rule == "rainstorm" and a.facts["change"] in ("opened",
                                                                                                    "escalated")]
    signals = {a.facts["level"]: a for a in alerts}
    for level, window_min, mm, text in (("blue", 720, 50, "暴雨蓝色预警"), ("yellow", 360, 50, "暴雨黄色预警"),
                                        ("orange", 180, 50, "暴雨橙色预警"), ("red", 180, 100, "暴雨红色预警")):
        minute = first_minute_reaching(window_min, mm)
        a = signals[level]
        assert a.time == START + timedelta(minutes=minute, seconds=30), level
        assert a.facts["signal"] == text and a.facts["value"] >= mm
    red = signals["red"]
    assert red.facts["escalated_from"] == "orange" and red.facts["rank"] == 3
    assert red.facts["window_totals"]["3h"] >= 100 and set(red.facts["window_totals"]) == {"1h", "3h", "6h", "12h",
                                                                                          "24h"}


def test_one_episode_per_rule_with_a_stable_key_and_the_case_from_the_deep_level():
    alerts = run(monitor(), storm())
    for rule in ("underpass", "rainstorm", "rising"):
        episode = [a for a in alerts if a.rule == rule]
        assert len({a.key for a in episode}) == 1
        assert [a.state for a in episode].count("closed") == 1 and episode[-1].state == "closed"
    flood = [a for a in alerts if a.rule == "underpass"]
    # 15 cm is information only; from 27 cm on it is a 道路积水 case, de-escalations and the clear included
    assert [a.category for a in flood] == [None] + ["road_flooding"] * 5
    assert flood[0].render_evidence is None and flood[1].render_evidence is not None
    assert flood[-1].facts["peak"] == max(r.values["level_cm"] for r in storm()
                                          if r.device == PROBE and r.values["level_cm"] < 170)


@pytest.mark.parametrize("cut", ["20 09:45", "20 12:30", "20 13:30", "20 20:00"])
def test_a_restart_in_the_middle_gives_the_same_episodes(cut):
    readings = storm()
    at = datetime.strptime(f"2026-07-{cut}", "%Y-%m-%d %H:%M").replace(tzinfo=START.tzinfo)
    before = [r for r in readings if r.time < at]
    after = [r for r in readings if r.time >= at]
    first = monitor()
    alerts = run(first, before)
    saved = json.dumps(first.export_state())  # what the store writes
    second = monitor()
    second.restore_state(json.loads(saved))
    alerts += run(second, after)
    assert summary(alerts) == EXPECTED
    assert second.stats["restore_dropped"] == 0


def test_rain_seen_after_the_last_save_is_not_lost_through_a_kill_with_a_counter_gauge():
    """A kill -9 between two saves: the rules roll back to the last save, and the five uplinks they saw
    after it are gone (acknowledged, never delivered again). The counter still holds their tips: the
    first count after the restart is taken against the saved one, so their rain lands in that minute.
    Every total from then on is exact; only the minute the rain is booked under moves."""
    profile = load_profiles(REPO / "device_profiles")[PROFILE]
    config = SensorsConfig.model_validate({"devices": [CONFIG["devices"][0]], "rain_rules": [{"name": "rainstorm"}]})

    def run(m: SensorMonitor, tracker: CounterTracker, items) -> list[Alert]:
        out = []
        for _, topic, payload in items:
            result = tracker.apply(profile, profile.decode(topic, payload, received=START + timedelta(days=2)))
            out += [o for o in m.process(result.observation) if isinstance(o, Alert)]
        return out

    items = uplinks()
    cut = next(i for i, u in enumerate(items) if u[0] >= START + timedelta(hours=9, minutes=40))
    whole = run(SensorMonitor(config), CounterTracker(), items)

    first, first_counts = SensorMonitor(config), CounterTracker()
    alerts = run(first, first_counts, items[:cut])
    saved = json.loads(json.dumps(first.export_state())), first_counts.export(GAUGE)
    run(first, first_counts, items[cut:cut + 5])  # seen, then lost with the kill
    second, second_counts = SensorMonitor(config), CounterTracker()
    second.restore_state(saved[0])
    second_counts.restore(GAUGE, saved[1])
    alerts += run(second, second_counts, items[cut + 5:])

    assert [(a.facts["level"], a.facts["change"]) for a in alerts] == [(a.facts["level"], a.facts["change"])
                                                                      for a in whole]
    for a in alerts:  # the day's rain is all there: the 24 h total equals the tips summed directly
        minute = round((a.time - START).total_seconds() - 30) // 60
        assert a.facts["window_totals"]["24h"] == round(window_total(minute, 1440), 2), a.time
    assert second_counts.primed == 0


def test_a_restart_with_a_changed_config_drops_what_no_longer_exists():
    first = monitor()
    run(first, [r for r in storm() if r.time < START + timedelta(hours=10)])
    fewer = {**CONFIG, "rise_rules": []}
    second = SensorMonitor(SensorsConfig.model_validate(fewer))
    second.restore_state(json.loads(json.dumps(first.export_state())))
    assert second.stats["restore_dropped"] == 1  # the rise episode: its rule is gone
    with pytest.raises(ValueError, match="version"):
        second.restore_state({"version": 99})


def test_the_case_chart_decodes_with_the_crossing_marked():
    deep = next(a for a in run(monitor(), storm()) if a.rule == "underpass" and a.facts["level"] == "deep")
    (evidence,) = deep.all_evidence()
    assert (evidence.name, evidence.media_type) == ("level-chart.png", "image/png")
    img = Image.open(io.BytesIO(evidence.data)).convert("RGB")
    assert img.size == (960, 540)
    # the crossing is the newest point: a red vertical line at the right edge of the plot
    columns = [x for x in range(img.width)
               if sum(img.getpixel((x, y)) == CROSSING for y in range(img.height)) > 300]
    assert columns and all(abs(x - (WIDTH - RIGHT)) <= 1 for x in columns)
    # the series (blue) spans the last hours from the left edge
    blue = [x for x in range(LEFT, WIDTH - RIGHT) if any(img.getpixel((x, y))[2] > 150 and img.getpixel((x, y))[0] < 60
                                                         for y in range(60, 490))]
    assert blue and blue[0] <= LEFT + 5


def test_a_long_level_name_is_cut_to_the_chart_not_beyond_it():
    now = datetime(2026, 7, 20, 12, 56, tzinfo=UTC)
    png = render_level_chart(title="东单下穿隧道积水点 道路积水 水位（cm）", unit="cm",
                             points=[(now - timedelta(minutes=i), 30.0 - i) for i in range(20)],
                             lines=[ChartLine("积水40cm 禁止通行 立即封路", 40, "critical"), ChartLine("wet", 15, "info")],
                             crossing=(now, 30.0), crossing_label="12:56 30 cm ≥ 积水27cm")
    img = Image.open(io.BytesIO(png)).convert("RGB")
    margin = [img.getpixel((x, y)) for x in range(WIDTH - 3, WIDTH) for y in range(HEIGHT)]
    assert set(margin) == {(255, 255, 255)}  # nothing drawn off the edge
    right = [x for x in range(WIDTH - RIGHT, WIDTH) for y in range(TOP, TOP + 120)
             if img.getpixel((x, y))[0] > 150 and img.getpixel((x, y))[1] < 80]  # the red label is there
    assert right and max(right) > WIDTH - 60


def test_chinese_labels_use_a_cjk_font():
    assert cjk_font_path() is not None, "no CJK font: install fonts-wqy-microhei (scripts/test.sh does)"
    font = cjk_font(22)  # what the chart draws its labels with
    # a font without the glyphs draws every character as the same box
    def drawn(ch: str) -> bytes:
        img = Image.new("L", (32, 32))
        ImageDraw.Draw(img).text((2, 2), ch, fill=255, font=font)
        return img.tobytes()

    assert len({drawn(ch) for ch in "道路积水"}) == 4
