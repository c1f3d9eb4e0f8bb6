"""Vehicle rules on replayed synthetic tracks: each fires once at the right time and place, clears,
and stays silent on the compliant variant of the same track.

World (metres east/north of 116.40 E, 39.90 N, WGS-84):
  zone "centre"   1000..2000 x 1000..2000, muck trucks barred 06:00-22:00
  zone "bridge"   5000..5030 x -1000..1000 (a narrow strip, for sparse reporting)
  route "r1"      y = 0 from x = -1000 to 10000, 100 m wide
  site "dump1"    dump, 8000..8200 x 500..700;  site "depot" -300..-100 x -100..100
  road "road1"    y = -500 from x = 0 to 2000, shift 08:00-10:00
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from core.coords import gcj02_to_wgs84, haversine_m, wgs84_to_gcj02
from core.model import Alert, HealthChange, Position
from detectors.vehicle.config import FleetConfig
from detectors.vehicle.monitor import FleetMonitor

LON0, LAT0 = 116.40, 39.90
KY = 6371008.8 * math.pi / 180.0
KX = KY * math.cos(math.radians(LAT0))
CST = timezone(timedelta(hours=8))
DAY = datetime(2026, 3, 2, tzinfo=CST)  # a Monday
TRACKS = Path(__file__).parent / "fixtures" / "tracks"

MUCK, SPRINKLER, SWEEPER = "13900000001", "13900000002", "13900000003"
FULL, EMPTY = (3 << 8) | 3, 3  # status words: loaded (bits 8-9 = 11) / empty, both with ACC on + fix


def at(x: float, y: float) -> tuple[float, float]:
    return LON0 + x / KX, LAT0 + y / KY


def square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [at(x0, y0), at(x1, y0), at(x1, y1), at(x0, y1)]


def world(**overrides) -> FleetConfig:
    data = {
        "vehicles": [
            {"id": "muck-1", "plate": "京A·M0001", "type": "muck_truck", "company": "Dirt Co", "terminal": MUCK,
             "speed_limit_kmh": 50, "working_hours": ["06:00-20:00"], "route": "r1"},
            {"id": "spr-1", "plate": "京A·S0001", "type": "sprinkler", "terminal": SPRINKLER},
            {"id": "swp-1", "plate": "京A·W0001", "type": "sweeper", "terminal": SWEEPER,
             "working_hours": ["05:00-21:00"], "assigned_roads": ["road1"]},
        ],
        "zones": [
            {"id": "centre", "name": "Old town", "polygon": square(1000, 1000, 2000, 2000),
             "windows": ["06:00-22:00"]},
            {"id": "bridge", "name": "Bridge", "polygon": square(5000, -1000, 5030, 1000)},
        ],
        "routes": [{"id": "r1", "line": [at(-1000, 0), at(10000, 0)], "width_m": 100}],
        "sites": [
            {"id": "dump1", "kind": "dump", "polygon": square(8000, 500, 8200, 700)},
            {"id": "depot", "kind": "depot", "polygon": square(-300, -100, -100, 100)},
        ],
        "roads": [{"id": "road1", "name": "East St", "line": [at(0, -500), at(2000, -500)],
                   "shifts": ["08:00-10:00"]}],
    }
    data.update(overrides)
    return FleetConfig.model_validate(data)


def drive(terminal: str, start: datetime, legs: list[tuple[float, float, float]], every_s: float,
          *, status: int = 3, start_xy: tuple[float, float] = (0.0, 0.0)) -> list[Position]:
    """Fixes every `every_s` seconds along legs (to_x, to_y, speed km/h); speed 0 legs are (x, y, 0)
    with to_x = seconds to wait."""
    out: list[Position] = []
    t = start
    x, y = start_xy
    for a, b, v in legs:
        if v == 0:
            for _ in range(int(a // every_s)):
                out.append(Position(lat=at(x, y)[1], lon=at(x, y)[0], time=t, speed_kmh=0.0, status=status,
                                    device=terminal))
                t += timedelta(seconds=every_s)
            continue
        dist = math.hypot(a - x, b - y)
        step = v / 3.6 * every_s
        i = 0
        while i * step < dist:  # exact steps of `every_s`; the leg's end starts the next leg
            px, py = x + (a - x) * i * step / dist, y + (b - y) * i * step / dist
            out.append(Position(lat=at(px, py)[1], lon=at(px, py)[0], time=t + timedelta(seconds=i * every_s),
                                speed_kmh=v, status=status, device=terminal))
            i += 1
        t += timedelta(seconds=dist / (v / 3.6))
        x, y = a, b
    lon, lat = at(x, y)
    out.append(Position(lat=lat, lon=lon, time=t, speed_kmh=legs[-1][2], status=status, device=terminal))
    return out


def run(mon: FleetMonitor, fixes: list[Position]) -> list[Alert]:
    out: list[Alert] = []
    for p in fixes:
        out.extend(mon.process(p))
    return out


def of(outputs: list, rule: str) -> list[Alert]:
    return [a for a in outputs if isinstance(a, Alert) and a.rule == rule]


def near(alert: Alert, x: float, y: float, tol_m: float = 15.0) -> bool:
    assert alert.lon is not None and alert.lat is not None
    lon, lat = at(x, y)
    return haversine_m(alert.lon, alert.lat, lon, lat) <= tol_m


def once(alerts: list[Alert], rule: str) -> tuple[Alert, Alert]:
    got = of(alerts, rule)
    assert [a.state for a in got] == ["open", "closed"], got
    return got[0], got[1]


# ---------------------------------------------------------------- forbidden zone


def test_forbidden_zone_entry_opens_at_the_boundary_and_clears_on_leaving():
    # along y = 1500 at 36 km/h, a fix every 5 s; crosses x = 1000 at 102.5 s and x = 2000 at 202.5 s
    start = DAY.replace(hour=10)
    fixes = drive(MUCK, start, [(3000, 1500, 36)], 5, start_xy=(-25, 1500))
    opened, closed = once(run(FleetMonitor(world()), fixes), "forbidden_zone")
    assert opened.place == "centre" and opened.subject_id == "muck-1" and opened.category == "muck_truck_forbidden_zone"
    assert opened.time == start + timedelta(seconds=105)  # the first fix inside reveals it
    assert near(opened, 1000, 1500, 2.0)  # where the truck crossed the boundary
    assert opened.facts["entered_at"] == (start + timedelta(seconds=102.5)).isoformat()
    assert opened.facts["plate"] == "京A·M0001" and opened.facts["zone_name"] == "Old town"
    assert closed.time == start + timedelta(seconds=205) and closed.facts["duration_s"] == 102.5
    names = {e.name: e for e in opened.all_evidence()}
    fc = json.loads(names["track.geojson"].data)
    assert fc["type"] == "FeatureCollection"
    assert any(f["properties"].get("id") == "centre" for f in fc["features"])
    assert Image.open(io.BytesIO(names["map.png"].data)).size == (480, 360)


def test_forbidden_zone_is_silent_outside_its_window_and_for_other_types():
    night = drive(MUCK, DAY.replace(hour=23), [(3000, 1500, 36)], 5, start_xy=(-25, 1500))
    assert of(run(FleetMonitor(world()), night), "forbidden_zone") == []
    sprinkler = drive(SPRINKLER, DAY.replace(hour=10), [(3000, 1500, 36)], 5, start_xy=(-25, 1500))
    assert run(FleetMonitor(world()), sprinkler) == []


# The zone's edge (centre: 1000..2000 square) is outside for entering and inside for staying: a truck on
# the road that bounds a zone is not in it, and one that went in stays in until a fix lies off the zone.


def zone_cases(legs, start_xy, every_s=5.0) -> list[Alert]:
    fixes = drive(MUCK, DAY.replace(hour=10), legs, every_s, start_xy=start_xy)
    return of(run(FleetMonitor(world()), fixes), "forbidden_zone")


def test_driving_along_a_zone_edge_and_through_its_corners_is_not_entering():
    # along the bottom edge y = 1000 and past both corners, a fix every 50 m (on the edge, on the vertices)
    assert zone_cases([(2500, 1000, 36)], (500, 1000)) == []
    assert zone_cases([(2000, 2500, 36)], (2000, 500)) == []  # up the right edge


def test_a_fix_on_the_edge_or_a_vertex_then_leaving_is_not_entering():
    assert zone_cases([(500, 1500, 36)], (1000, 1500)) == []  # starts on the left edge, drives away
    assert zone_cases([(1000, 1000, 36), (800, 1200, 36)], (800, 800)) == []  # to the corner and back out
    # touches the bottom edge from outside, turns back
    assert zone_cases([(1500, 1000, 36), (1500, 700, 36)], (1500, 800)) == []


def test_sparse_fixes_straddling_a_corner_catch_the_cut_with_the_interpolated_entry():
    # (900, 1850) then (1150, 2100) 30 s later: y = x + 950 goes in across x = 1000 at y = 1950, 40 % along
    start = DAY.replace(hour=10)
    fixes = [Position(lon=at(x, y)[0], lat=at(x, y)[1], time=start + timedelta(seconds=s), speed_kmh=42.0,
                      status=3, device=MUCK) for x, y, s in ((900, 1850, 0), (1150, 2100, 30))]
    opened, closed = once(run(FleetMonitor(world()), fixes), "forbidden_zone")
    assert near(opened, 1000, 1950, 1.0) and opened.facts["crossed_between_fixes"] is True
    entered = datetime.fromisoformat(opened.facts["entered_at"])
    assert abs((entered - (start + timedelta(seconds=12))).total_seconds()) < 0.01  # 40 % of 30 s
    assert closed.time == fixes[1].time


def test_standing_on_the_edge_after_entering_is_one_episode():
    # in from the south, back to the edge, stands there 2 min, a step inside, the edge again, then out
    legs = [(1500, 1200, 36), (1500, 1000, 36), (120, 0, 0), (1500, 1050, 18), (1500, 1000, 18), (1500, 700, 36)]
    fixes = drive(MUCK, DAY.replace(hour=10), legs, 5, start_xy=(1500, 800))
    opened, closed = once(run(FleetMonitor(world()), fixes), "forbidden_zone")
    assert near(opened, 1500, 1000, 1.0)
    left = next(p for p in fixes if p.time > opened.time and p.lat < at(0, 1000)[1])  # the first fix off the edge
    assert closed.time == left.time


def read_csv(name: str) -> list[Position]:
    with open(TRACKS / name, newline="") as f:
        return [Position(lat=float(r["lat"]), lon=float(r["lon"]), time=datetime.fromisoformat(r["time"]),
                         speed_kmh=float(r["speed_kmh"]), status=int(r["status"]), alarm=int(r["alarm"]),
                         device=r["device"]) for r in csv.DictReader(f)]


def test_sparse_fixes_both_outside_a_narrow_zone_still_catch_the_crossing():
    fixes = read_csv("sparse_crossing.csv")  # every 30 s, 300 m apart; the zone is 30 m wide
    mon = FleetMonitor(world())
    inside = [p for p in fixes if mon.zone_layer.any_covers(*mon.plane.xy(p.lon, p.lat))]
    assert inside == []  # no fix lies in the zone
    opened, closed = once(run(mon, fixes), "forbidden_zone")
    assert opened.place == "bridge" and opened.time == fixes[3].time
    assert near(opened, 5000, 0, 2.0)
    assert opened.facts["crossed_between_fixes"] is True
    assert opened.facts["entered_at"] == (fixes[2].time + timedelta(seconds=15)).isoformat()
    assert closed.time == fixes[3].time


def test_sparse_compliant_track_raises_nothing():
    assert of(run(FleetMonitor(world()), read_csv("sparse_compliant.csv")), "forbidden_zone") == []


def test_zone_drawn_in_gcj02_catches_the_wgs84_point_inside_it():
    # a 200 m square around a WGS-84 point, written in GCJ-02 as a city map layer would give it
    ring_wgs = square(2800, 2800, 3000, 3000)
    ring_gcj = [wgs84_to_gcj02(lon, lat) for lon, lat in ring_wgs]
    zone = {"id": "gcj", "crs": "gcj02", "polygon": ring_gcj}
    fixes = drive(MUCK, DAY.replace(hour=10), [(2900, 2900, 30), (2900, 3200, 30)], 5, start_xy=(2900, 2600))
    got = of(run(FleetMonitor(world(zones=[zone])), fixes), "forbidden_zone")
    assert [a.state for a in got] == ["open", "closed"] and near(got[0], 2900, 2800, 5.0)
    # the same numbers read as WGS-84 are ~500 m off and miss the truck: the crs really is applied
    wrong = {"id": "gcj", "crs": "wgs84", "polygon": ring_gcj}
    assert of(run(FleetMonitor(world(zones=[wrong])), fixes), "forbidden_zone") == []
    assert haversine_m(*gcj02_to_wgs84(*ring_gcj[0]), *ring_wgs[0]) < 0.01


def test_history_points_inside_a_zone_do_not_alarm_the_present():
    fixes = drive(MUCK, DAY.replace(hour=10), [(3000, 1500, 36)], 5, start_xy=(-25, 1500))
    hist = [Position(lat=p.lat, lon=p.lon, time=p.time, speed_kmh=p.speed_kmh, status=p.status, device=p.device,
                     history=True) for p in fixes]
    mon = FleetMonitor(world())
    assert run(mon, hist) == []
    assert mon.filter.counts["history"] == len(hist)


# ---------------------------------------------------------------- off route


def test_off_route_opens_after_the_threshold_and_clears_back_on_route():
    start = DAY.replace(hour=9)
    # on the route, a detour 300 m north for ~2 min, then back
    legs = [(1000, 0, 36), (1000, 310, 36), (2500, 310, 36), (2500, 0, 36), (4000, 0, 36)]
    fixes = drive(MUCK, start, legs, 5)
    opened, closed = once(run(FleetMonitor(world()), fixes), "off_route")
    left = next(p for p in fixes if p.lat > at(0, 50)[1])  # first fix outside the 100 m corridor
    assert opened.place == "r1" and opened.category == "vehicle_off_route"
    # 300 m driven off the corridor opens it (before the 60 s duration would)
    assert opened.facts["distance_off_m"] >= 300 and opened.facts["duration_s"] < 60
    assert opened.time > left.time and opened.time - left.time <= timedelta(seconds=35)
    back = next(p for p in fixes if p.time > opened.time and p.lat < at(0, 50)[1])
    assert closed.time == back.time
    assert {e.name for e in opened.all_evidence()} == {"track.geojson", "map.png"}


def test_driving_inside_the_corridor_is_not_off_route():
    fixes = drive(MUCK, DAY.replace(hour=9), [(1000, 40, 36), (4000, 40, 36)], 5)
    assert of(run(FleetMonitor(world()), fixes), "off_route") == []


# ---------------------------------------------------------------- working hours


def test_working_outside_hours_opens_after_a_minute_and_clears_when_parked():
    start = DAY.replace(hour=21)  # muck-1 works 06:00-20:00
    fixes = drive(MUCK, start, [(3000, 0, 36), (400, 0, 0)], 10, start_xy=(0, 0))
    opened, closed = once(run(FleetMonitor(world()), fixes), "outside_hours")
    assert opened.time == start + timedelta(seconds=60) and near(opened, 600, 0)
    parked = next(p for p in fixes if p.speed_kmh == 0)
    assert closed.time == parked.time + timedelta(seconds=300)


def test_the_same_drive_in_working_hours_is_fine():
    fixes = drive(MUCK, DAY.replace(hour=19), [(3000, 0, 36), (400, 0, 0)], 10)
    assert of(run(FleetMonitor(world()), fixes), "outside_hours") == []


def test_working_hours_crossing_midnight():
    cfg = world(vehicles=[{"id": "n", "terminal": "1", "type": "sweeper", "working_hours": ["22:00-06:00"]}])
    fixes = drive("1", DAY.replace(hour=2), [(3000, 0, 20)], 10)
    assert of(run(FleetMonitor(cfg), fixes), "outside_hours") == []
    fixes = drive("1", DAY.replace(hour=12), [(3000, 0, 20)], 10)
    assert [a.state for a in of(run(FleetMonitor(cfg), fixes), "outside_hours")] == ["open"]


# ---------------------------------------------------------------- overspeed


def test_overspeed_sustained_ten_seconds_opens_and_clears():
    start = DAY.replace(hour=9)
    fixes = drive(MUCK, start, [(1000, 0, 40), (2000, 0, 65), (3000, 0, 40)], 1)
    fast = next(p for p in fixes if p.speed_kmh == 65)
    slow = next(p for p in fixes if p.time > fast.time and p.speed_kmh == 40)
    opened, closed = once(run(FleetMonitor(world()), fixes), "overspeed")
    assert opened.time == fast.time + timedelta(seconds=10)
    assert opened.facts["limit_kmh"] == 50 and opened.facts["max_speed_kmh"] == 65
    assert near(opened, 1000 + 65 / 3.6 * 10, 0, 20)
    assert closed.time == slow.time + timedelta(seconds=10)


def test_short_burst_or_legal_speed_is_not_overspeed():
    legal = drive(MUCK, DAY.replace(hour=9), [(1000, 0, 40), (2000, 0, 49), (3000, 0, 40)], 1)
    assert of(run(FleetMonitor(world()), legal), "overspeed") == []
    burst = drive(MUCK, DAY.replace(hour=9), [(1000, 0, 40), (1100, 0, 65), (3000, 0, 40)], 1)
    assert of(run(FleetMonitor(world()), burst), "overspeed") == []


# ---------------------------------------------------------------- illegal dumping


def load_cycle(unload_at: tuple[float, float]) -> list[Position]:
    """Empty -> loaded at the depot -> unloads at `unload_at` -> drives on empty -> loads again."""
    start = DAY.replace(hour=10)
    a = drive(MUCK, start, [(0, 0, 0)], 10, status=EMPTY, start_xy=(-200, 0))[:3]
    b = drive(MUCK, a[-1].time + timedelta(seconds=10), [(*unload_at, 36)], 10, status=FULL, start_xy=(-200, 0))
    c = drive(MUCK, b[-1].time + timedelta(seconds=10), [(unload_at[0] + 500, unload_at[1], 36)], 10,
              status=EMPTY, start_xy=unload_at)
    d = drive(MUCK, c[-1].time + timedelta(seconds=10), [(unload_at[0] + 800, unload_at[1], 36)], 10,
              status=FULL, start_xy=(unload_at[0] + 500, unload_at[1]))
    return a + b + c + d


def test_unloading_outside_a_dump_site_is_suspected_illegal_dumping():
    fixes = load_cycle((4000, 0))
    first_empty = next(p for i, p in enumerate(fixes) if i > 3 and p.status == EMPTY)
    reloaded = next(p for p in fixes if p.time > first_empty.time and p.status == FULL)
    opened, closed = once(run(FleetMonitor(world()), fixes), "illegal_dumping")
    assert opened.time == first_empty.time and near(opened, 4000, 0, 5)
    assert opened.category == "illegal_dumping" and opened.facts["load_before"] == "full"
    assert {e.name for e in opened.all_evidence()} == {"track.geojson", "map.png"}
    assert closed.time == reloaded.time


def test_unloading_inside_the_dump_site_is_fine():
    cfg = world(vehicles=[{"id": "muck-1", "type": "muck_truck", "terminal": MUCK}])  # no route to leave
    assert of(run(FleetMonitor(cfg), load_cycle((8100, 600))), "illegal_dumping") == []


# ---------------------------------------------------------------- long stop


def test_long_stop_outside_sites_opens_after_thirty_minutes_and_clears_on_moving():
    start = DAY.replace(hour=11)
    fixes = drive(MUCK, start, [(3000, -2000, 36), (2400, 0, 0), (3500, -2000, 36)], 30, start_xy=(3000, -1000))
    stopped = next(p for p in fixes if p.speed_kmh == 0)
    moving = next(p for p in fixes if p.time > stopped.time and p.speed_kmh > 0)
    opened, closed = once(run(FleetMonitor(world()), fixes), "long_stop")
    assert opened.time == stopped.time + timedelta(minutes=30) and near(opened, 3000, -2000, 5)
    assert closed.time == moving.time


def test_long_stop_in_the_depot_is_fine():
    fixes = drive(MUCK, DAY.replace(hour=11), [(-200, 0, 36), (2400, 0, 0), (500, 0, 36)], 30, start_xy=(500, 0))
    assert of(run(FleetMonitor(world()), fixes), "long_stop") == []


# ---------------------------------------------------------------- offline


def ticks(mon: FleetMonitor, start: datetime, minutes: int) -> list[Alert]:
    out: list[Alert] = []
    for m in range(0, minutes * 60 + 1, 30):
        out.extend(mon.tick(start + timedelta(seconds=m)))
    return out


def test_terminal_silent_in_working_hours_goes_offline_and_back():
    mon = FleetMonitor(world())
    start = DAY.replace(hour=10)
    mon.tick(start)
    run(mon, drive(MUCK, start, [(500, 0, 36)], 5))  # last fix at 10:00:50
    outputs = ticks(mon, start, 20)
    alerts = of(outputs, "offline")
    assert [(a.state, a.subject_id) for a in alerts if a.subject_id == "muck-1"] == [("open", "muck-1")]
    opened = next(a for a in alerts if a.subject_id == "muck-1")
    assert opened.time == start + timedelta(minutes=11) and near(opened, 500, 0, 5)
    assert HealthChange("vehicle", "muck-1", False, opened.time) in outputs  # the typed health event too
    back = mon.process(Position(lat=at(600, 0)[1], lon=at(600, 0)[0], time=start + timedelta(minutes=21),
                                speed_kmh=10, status=3, device=MUCK))
    assert [a.state for a in of(back, "offline")] == ["closed"]
    assert HealthChange("vehicle", "muck-1", True, start + timedelta(minutes=21)) in back


def test_silence_outside_working_hours_is_not_offline():
    mon = FleetMonitor(world())
    start = DAY.replace(hour=20, minute=30)  # muck-1 works 06:00-20:00
    mon.tick(start)
    run(mon, drive(MUCK, start, [(500, 0, 36)], 5))
    assert [a for a in of(ticks(mon, start, 60), "offline") if a.subject_id == "muck-1"] == []


# ---------------------------------------------------------------- terminal alarms


def test_terminal_alarm_bits_map_to_alerts_with_the_zone_extra():
    start = DAY.replace(hour=9)
    fixes = drive(MUCK, start, [(1000, 0, 36)], 5)
    zone_extra = {"zone_route_alarm": {"position_type": 3, "area_id": 42, "direction": "in"}}
    fixes = [Position(lat=p.lat, lon=p.lon, time=p.time, speed_kmh=p.speed_kmh, status=p.status, device=p.device,
                      alarm=(1 << 20) if 5 <= i < 9 else 0, extras=zone_extra if 5 <= i < 9 else {})
             for i, p in enumerate(fixes)]
    opened, closed = once(run(FleetMonitor(world()), fixes), "terminal_alarm")
    assert opened.place == "zone_in_out" and opened.time == fixes[5].time and opened.category is None
    assert opened.facts["zone_route_alarm"]["area_id"] == 42
    assert closed.time == fixes[9].time
    assert of(run(FleetMonitor(world()), drive(MUCK, start, [(1000, 0, 36)], 5)), "terminal_alarm") == []


# ---------------------------------------------------------------- unregistered


def test_unregistered_terminal_inside_the_city_alerts_once():
    mon = FleetMonitor(world())
    fixes = drive("19999999999", DAY.replace(hour=9), [(2000, 0, 36)], 5)
    got = run(mon, fixes)
    assert [(a.rule, a.subject_kind, a.subject_id, a.category) for a in got] == [
        ("unregistered_vehicle", "terminal", "19999999999", "unregistered_vehicle")]
    far = Position(lat=31.23, lon=121.47, time=DAY, device="18888888888")  # Shanghai: outside this city
    assert mon.process(far) == []


# ---------------------------------------------------------------- coverage


@pytest.mark.parametrize(("until_x", "share", "state"), [(1200, 0.6, "open"), (2000, 1.0, "closed")])
def test_sweeper_coverage_is_reported_at_shift_end(until_x, share, state):
    mon = FleetMonitor(world())
    start = DAY.replace(hour=8)
    mon.tick(start)
    # 10 km/h along the road from its start; then back off-road
    fixes = drive(SWEEPER, start + timedelta(minutes=5), [(until_x, -500, 10)], 10, start_xy=(0, -500))
    fixes += drive(SWEEPER, fixes[-1].time + timedelta(seconds=10), [(until_x, -1500, 30)], 10,
                   start_xy=(until_x, -500))
    run(mon, fixes)
    assert of(mon.tick(start + timedelta(hours=1, minutes=59)), "coverage") == []
    reports = of(mon.tick(start + timedelta(hours=2, seconds=5)), "coverage")
    assert len(reports) == 1
    r = reports[0]
    assert r.subject_id == "swp-1" and r.place == "road1" and r.state == state
    assert r.facts["share"] == pytest.approx(share, abs=0.02)
    assert r.time == start + timedelta(hours=2)
    assert mon.tick(start + timedelta(hours=2, minutes=1)) == []  # reported once


def test_coverage_counts_only_working_speed_and_the_shift():
    mon = FleetMonitor(world())
    start = DAY.replace(hour=7)  # before the 08:00-10:00 shift, and then too fast inside it
    mon.tick(start)
    run(mon, drive(SWEEPER, start + timedelta(minutes=5), [(2000, -500, 10)], 10, start_xy=(0, -500)))
    run(mon, drive(SWEEPER, start + timedelta(hours=1, minutes=5), [(0, -500, 40)], 5, start_xy=(2000, -500)))
    mon.tick(start + timedelta(hours=1, minutes=30))  # the runtime ticks every few seconds
    reports = of(mon.tick(start + timedelta(hours=3, seconds=5)), "coverage")
    assert len(reports) == 1 and reports[0].facts["share"] == 0.0 and reports[0].state == "open"


def test_history_supplements_count_for_coverage():
    mon = FleetMonitor(world())
    start = DAY.replace(hour=8)
    mon.tick(start)
    fixes = drive(SWEEPER, start + timedelta(minutes=5), [(1200, -500, 10)], 10, start_xy=(0, -500))
    hist = [Position(lat=p.lat, lon=p.lon, time=p.time, speed_kmh=p.speed_kmh, status=p.status, device=p.device,
                     history=True) for p in fixes]
    assert run(mon, hist) == []
    reports = of(mon.tick(start + timedelta(hours=2, seconds=5)), "coverage")
    assert reports[0].facts["share"] == pytest.approx(0.6, abs=0.02)
