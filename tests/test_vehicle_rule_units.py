"""Each fleet rule on its own (detectors/vehicle/rules/): a rule needs only the fleet's places (World), a
vehicle and fixes, so each is fed directly here, through the same context the monitor computes. These
cover what the monitor-level tests (test_vehicle_rules.py) do not: weekday bans, the duration and
working-hours paths of off-route, tolerance and peak of overspeed, half loads and either segment end of
dumping, creeping stops, unconfigured and simultaneous alarm bits, a terminal never seen going offline,
disabled rules, and which rules a vehicle is given at all.

The world is the one of test_vehicle_rules.py (metres east/north of 116.40 E, 39.90 N)."""

from __future__ import annotations

from datetime import datetime, timedelta

from core.model import Alert, HealthChange, Position
from detectors.vehicle.config import FleetConfig
from detectors.vehicle.monitor import FleetMonitor
from detectors.vehicle.rules import Clock, Fix, Rule, Vehicle, build
from detectors.vehicle.rules.alarms import TerminalAlarms
from detectors.vehicle.rules.dumping import IllegalDumping
from detectors.vehicle.rules.offline import Offline
from detectors.vehicle.rules.route import OffRoute
from detectors.vehicle.rules.speed import Overspeed
from detectors.vehicle.rules.stop import LongStop
from detectors.vehicle.rules.unregistered import Unregistered
from detectors.vehicle.rules.zones import ForbiddenZones
from detectors.vehicle.timewin import parse_window
from detectors.vehicle.world import World
from tests.test_vehicle_rules import DAY, EMPTY, FULL, MUCK, at, drive, square, world

SATURDAY = DAY + timedelta(days=5)


class Feed:
    """One rule, its world and vehicles; fixes go to that rule alone, with the context the monitor gives."""

    def __init__(self, rule: type[Rule], config: FleetConfig | None = None, **overrides: object) -> None:
        self.cfg = config or world(**overrides)
        self.world = World(self.cfg)
        name = {ForbiddenZones: "forbidden_zone", OffRoute: "off_route", Overspeed: "overspeed",
                IllegalDumping: "illegal_dumping", LongStop: "long_stop", TerminalAlarms: "terminal_alarm",
                Offline: "offline"}[rule]
        self.rule = rule(getattr(self.cfg.rules, name), self.world)
        self.vehicles: dict[str, Vehicle] = {}
        for vc in self.cfg.vehicles:
            hours = tuple(parse_window(w) for w in vc.working_hours)
            v = self.vehicles[vc.id] = Vehicle(vc, hours, self.world.mask(hours), self.cfg.track_points)
            self.rule.attach(v)

    def applies_to(self, vehicle: str) -> bool:
        return vehicle in self.rule.states

    def __call__(self, vehicle: str, fixes: list[Position]) -> list[Alert]:
        v, out = self.vehicles[vehicle], []
        plane = self.world.plane
        assert plane is not None
        for p in fixes:
            f, t = Fix(), p.time.timestamp()
            f.v, f.p, f.t, f.speed = v, p, t, p.speed_kmh
            f.x, f.y = plane.xy(p.lon, p.lat)
            f.local = self.world.local(t).replace(second=0, microsecond=0)
            f.minute = f.local.hour * 60 + f.local.minute
            f.in_hours = bool(v.hours_mask[f.minute])
            f.seg = v.last_t is not None and t - v.last_t <= self.cfg.segment_max_gap_s
            f.x0, f.y0 = (v.last_x, v.last_y) if f.seg else (f.x, f.y)
            v.track.append((t, p.lon, p.lat, p.speed_kmh))
            self.rule.process(self.rule.states[vehicle], f, out)
            v.last_t, v.last_x, v.last_y, v.last_lon, v.last_lat = t, f.x, f.y, p.lon, p.lat
        return out

    def tick(self, now: datetime) -> list:
        local = self.world.local(now.timestamp()).replace(second=0, microsecond=0)
        out: list = []
        self.rule.tick(Clock(now, now.timestamp(), local, local.hour * 60 + local.minute),
                       list(self.vehicles.values()), out)
        return out


def states(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(a.state, a.place) for a in alerts]


def with_status(fixes: list[Position], status: int = 3, alarm: int = 0) -> list[Position]:
    return [p._replace(status=status, alarm=alarm) for p in fixes]


# ---------------------------------------------------------------- forbidden zone


def test_a_weekday_ban_holds_on_its_days_only_and_only_for_barred_types():
    weekdays = {"id": "school", "polygon": square(1000, 1000, 2000, 2000), "days": [1, 2, 3, 4, 5]}
    feed = Feed(ForbiddenZones, zones=[weekdays])
    assert feed.applies_to("muck-1") and not feed.applies_to("spr-1")  # sprinklers are not barred
    through = [(3000, 1500, 36)]  # fixes at x = 975, 1025, ...: none on the boundary
    assert feed("muck-1", drive(MUCK, SATURDAY.replace(hour=10), through, 5, start_xy=(-25, 1500))) == []
    feed = Feed(ForbiddenZones, zones=[weekdays])
    monday = feed("muck-1", drive(MUCK, DAY.replace(hour=10), through, 5, start_xy=(-25, 1500)))
    assert states(monday) == [("open", "school"), ("closed", "school")]


def test_the_ban_ending_while_inside_closes_the_episode():
    zone = {"id": "day", "polygon": square(1000, 1000, 2000, 2000), "windows": ["06:00-10:00"]}
    feed = Feed(ForbiddenZones, zones=[zone])
    # in at 09:59, parked inside across 10:00
    fixes = drive(MUCK, DAY.replace(hour=9, minute=59), [(1500, 1500, 36), (120, 0, 0)], 10, start_xy=(900, 1500))
    got = feed("muck-1", fixes)
    assert states(got) == [("open", "day"), ("closed", "day")]
    assert got[1].time == next(p.time for p in fixes if p.time >= DAY.replace(hour=10))


def test_a_ban_starting_while_parked_opens_inside_the_zone_but_not_on_its_edge():
    zone = {"id": "late", "polygon": square(1000, 1000, 2000, 2000), "windows": ["10:00-12:00"]}
    parked = [(180, 0, 0)]  # 09:59 to 10:02, a fix every 10 s
    on_edge = Feed(ForbiddenZones, zones=[zone])("muck-1", drive(MUCK, DAY.replace(hour=9, minute=59), parked, 10,
                                                                  start_xy=(1000, 1500)))
    assert on_edge == []
    inside = Feed(ForbiddenZones, zones=[zone])("muck-1", drive(MUCK, DAY.replace(hour=9, minute=59), parked, 10,
                                                                 start_xy=(1001, 1500)))
    assert states(inside) == [("open", "late")] and inside[0].time == DAY.replace(hour=10)


# ---------------------------------------------------------------- off route


def test_a_slow_detour_opens_on_duration_before_distance():
    feed = Feed(OffRoute)
    # 200 m north of the line at 5 km/h: under 300 m driven off, but over 60 s
    got = feed("muck-1", drive(MUCK, DAY.replace(hour=9), [(0, 200, 36), (150, 200, 5)], 5))
    assert [a.state for a in got] == ["open"]
    assert got[0].facts["duration_s"] == 60 and got[0].facts["distance_off_m"] < 300


def test_off_route_at_night_counts_only_when_not_limited_to_working_hours():
    night = drive(MUCK, DAY.replace(hour=23), [(0, 400, 36), (2000, 400, 36)], 5)
    assert Feed(OffRoute)("muck-1", night) == []
    cfg = world(rules={"off_route": {"working_hours_only": False}})
    assert [a.state for a in Feed(OffRoute, cfg)("muck-1", night)] == ["open"]


def test_only_vehicles_with_a_route_are_watched():
    feed = Feed(OffRoute)
    assert feed.applies_to("muck-1") and not feed.applies_to("spr-1") and not feed.applies_to("swp-1")


# ---------------------------------------------------------------- overspeed


def test_overspeed_tolerance_and_the_peak():
    cfg = world(rules={"overspeed": {"tolerance_kmh": 10}})  # muck-1's limit is 50: up to 60 is accepted
    legs = [(500, 0, 40), (1500, 0, 59), (2500, 0, 40)]
    assert Feed(Overspeed, cfg)("muck-1", drive(MUCK, DAY.replace(hour=9), legs, 1)) == []
    legs = [(500, 0, 40), (1000, 0, 62), (1500, 0, 75), (2000, 0, 61), (2500, 0, 40)]
    opened, closed = Feed(Overspeed, cfg)("muck-1", drive(MUCK, DAY.replace(hour=9), legs, 1))
    assert opened.facts["limit_kmh"] == 50 and opened.facts["speed_kmh"] == 62
    assert closed.facts["max_speed_kmh"] == 75


# ---------------------------------------------------------------- illegal dumping


def test_the_first_fix_only_sets_the_load_and_a_half_load_counts():
    feed = Feed(IllegalDumping)
    start = DAY.replace(hour=10)
    assert feed("muck-1", with_status(drive(MUCK, start, [(3000, 0, 36)], 10), EMPTY)) == []  # empty from the start
    half = (1 << 8) | 3
    later = start + timedelta(minutes=10)
    got = feed("muck-1", with_status(drive(MUCK, later, [(4000, 0, 36)], 10, start_xy=(3000, 0)), half)
               + with_status(drive(MUCK, later + timedelta(minutes=1), [(5000, 0, 36)], 10, start_xy=(4000, 0)),
                             EMPTY))
    assert [(a.state, a.facts["load_before"]) for a in got] == [("open", "half")]


def test_unloading_just_after_leaving_the_dump_site_is_fine():
    # the last loaded fix is inside dump1 (8000..8200 x 500..700), the first empty one 100 m outside
    feed = Feed(IllegalDumping)
    loaded = with_status(drive(MUCK, DAY.replace(hour=10), [(8100, 600, 36)], 10, start_xy=(7000, 600)), FULL)
    empty = with_status(drive(MUCK, loaded[-1].time + timedelta(seconds=10), [(8400, 600, 36)], 10,
                              start_xy=(8300, 600)), EMPTY)
    assert feed("muck-1", loaded + empty) == []


# ---------------------------------------------------------------- long stop


def test_creeping_away_restarts_the_stop():
    feed = Feed(LongStop)
    start = DAY.replace(hour=11)
    # 40 min below 3 km/h, but 60 m further every 10 min: never 30 min within 50 m
    fixes = []
    for k in range(4):
        fixes += [p._replace(speed_kmh=1.0) for p in
                  drive(MUCK, start + timedelta(minutes=10 * k), [(600, 0, 0)], 60, start_xy=(3000 + 60 * k, -2000))]
    assert feed("muck-1", fixes) == []
    parked = drive(MUCK, start, [(2400, 0, 0)], 60, start_xy=(3000, -2000))  # the same 40 min, in one place
    assert [a.state for a in Feed(LongStop)("muck-1", parked)] == ["open"]


# ---------------------------------------------------------------- terminal alarms


def test_only_configured_bits_alarm_and_each_bit_is_its_own_episode():
    feed = Feed(TerminalAlarms)
    fixes = drive(MUCK, DAY.replace(hour=9), [(500, 0, 36)], 5)
    bits = [1 << 5, (1 << 0) | (1 << 29) | (1 << 5), 1 << 29, 0]  # bit 5 is not in the default bits
    got = feed("muck-1", [p._replace(alarm=bits[min(i, 3)]) for i, p in enumerate(fixes)])
    assert states(got) == [("open", "emergency"), ("open", "collision"), ("closed", "emergency"),
                           ("closed", "collision")]


# ---------------------------------------------------------------- offline


def test_a_terminal_never_seen_goes_offline_from_the_first_tick():
    feed = Feed(Offline)
    start = DAY.replace(hour=10)
    assert feed.tick(start) == []
    out = feed.tick(start + timedelta(minutes=10))
    opened = [a for a in out if isinstance(a, Alert)]
    assert sorted(a.subject_id for a in opened) == ["muck-1", "spr-1", "swp-1"]
    assert all(a.lon is None and a.facts["last_fix"] is None and a.facts["silent_s"] == 600 for a in opened)
    assert HealthChange("vehicle", "muck-1", False, start + timedelta(minutes=10)) in out
    assert feed.tick(start + timedelta(minutes=20)) == []  # open once


# ---------------------------------------------------------------- which rules a vehicle gets


def test_disabled_rules_are_never_run_and_vehicles_get_only_the_rules_that_apply():
    cfg = world(rules={"overspeed": {"enabled": False}, "unregistered": {"enabled": False}})
    mon = FleetMonitor(cfg)
    names = {vid: [run.__self__.config.name for run, _ in v.on_fix] for vid, v in mon._by_id.items()}
    assert names["muck-1"] == ["offline", "forbidden_zone", "off_route", "outside_hours", "illegal_dumping",
                               "long_stop", "terminal_alarm"]
    assert names["spr-1"] == ["offline", "outside_hours", "illegal_dumping", "long_stop", "terminal_alarm"]
    assert names["swp-1"][-1] == "coverage" and [run for run, _ in mon._by_id["swp-1"].on_history] != []
    fast = drive(MUCK, DAY.replace(hour=9), [(2000, 0, 90)], 1)
    assert [a for p in fast for a in mon.process(p) if a.rule == "overspeed"] == []
    # an unregistered terminal is counted, and not alerted, with its rule off
    stranger = Position(lat=at(100, 0)[1], lon=at(100, 0)[0], time=DAY.replace(hour=9), device="17000000000")
    assert mon.process(stranger) == [] and mon.counts["unregistered"] == 1


def test_rules_are_built_in_their_fixed_order():
    names = [r.config.name for r in build(world().rules, World(world()))]
    assert names == ["offline", "forbidden_zone", "off_route", "outside_hours", "overspeed", "illegal_dumping",
                     "long_stop", "terminal_alarm", "coverage"]
    assert isinstance(FleetMonitor(world()).unregistered, Unregistered)
