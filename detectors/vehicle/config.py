"""Fleet and places config for vehicle supervision (五车监管): vehicles, routes, zones, sites, roads, rules.

Every geometry names the coordinate system it is drawn in (`crs`: wgs84 or gcj02); the monitor
converts it once, at load, through core.coords. Times of day are local times in `timezone`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.model import SEVERITIES, Severity
from core.schema import FieldError, StrictModel, TimeZoneName, repeated, valid_polygon

from .identity import terminal_key
from .timewin import parse_window

VehicleType = Literal["sweeper", "sprinkler", "muck_truck", "mixer", "garbage_truck", "other"]
CrsName = Literal["wgs84", "gcj02"]
Point = tuple[float, float]


def _check_points(points: list[Point], minimum: int, what: str) -> list[Point]:
    if len(points) < minimum:
        raise ValueError(f"a {what} needs at least {minimum} points [lon, lat], got {len(points)}")
    for i, (lon, lat) in enumerate(points):
        if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
            raise ValueError(
                f"point {i} of the {what} is [{lon}, {lat}], which is not [lon, lat] in degrees "
                "(longitude first, between -180 and 180; latitude between -90 and 90)"
            )
    return points


def _check_windows(windows: list[str]) -> list[str]:
    for w in windows:
        parse_window(w)  # raises ValueError with a plain sentence
    return windows


class VehicleConfig(StrictModel):
    id: str = Field(description="Vehicle id used in alerts and cases (e.g. the fleet number).")
    plate: str = Field("", description="Licence plate, shown in alerts and cases. A JT/T 808 registration "
                       "that names a plate must name this one.")
    type: VehicleType = Field("other", description="Vehicle kind: decides which zones and rules apply.")
    company: str = Field("", description="Operating company, shown in alerts and cases.")
    terminal: str = Field(description="JT/T 808 terminal number (digits) or tracker id the positions carry.")
    terminal_id: str | None = Field(
        None, description="The terminal's own id (its serial) as its JT/T 808 registration (0x0100) carries it: "
        "when set, a registration must carry it. A number and a plate can be read off a truck; this cannot."
    )
    manufacturer: str | None = Field(
        None, description="The terminal maker's id as its JT/T 808 registration carries it: when set, a "
        "registration must carry it."
    )
    speed_limit_kmh: float | None = Field(
        None, gt=0, description="This vehicle's speed limit; empty uses rules.overspeed.default_limit_kmh."
    )
    working_hours: list[str] = Field(
        default_factory=lambda: ["06:00-22:00"],
        description='Local working-hour windows "HH:MM-HH:MM" (may cross midnight, e.g. "22:00-06:00").',
    )
    route: str | None = Field(None, description="Id of the permitted route (corridor) it must keep to, if any.")
    assigned_roads: list[str] = Field(
        default_factory=list, description="Road ids whose coverage is reported per shift (sweepers, sprinklers)."
    )

    @field_validator("working_hours")
    @classmethod
    def _check_working_hours(cls, v: list[str]) -> list[str]:
        return _check_windows(v)


class RouteConfig(StrictModel):
    id: str = Field(description="Route id that vehicles reference.")
    name: str = Field("", description="Human-readable name.")
    crs: CrsName = Field("wgs84", description="Coordinate system the line is drawn in.")
    line: list[Point] = Field(description="Centre line [[lon, lat], ...], at least 2 points.")
    width_m: float = Field(100.0, gt=0, description="Corridor width in metres (the line +/- half of it).")

    @field_validator("line")
    @classmethod
    def _line(cls, v: list[Point]) -> list[Point]:
        return _check_points(v, 2, "route line")


class ZoneConfig(StrictModel):
    id: str = Field(description="Zone id, used as the alert's place.")
    name: str = Field("", description="Human-readable name (shown in alerts).")
    crs: CrsName = Field("wgs84", description="Coordinate system the polygon is drawn in.")
    polygon: list[Point] = Field(description="Outer ring [[lon, lat], ...], at least 3 points.")
    kind: Literal["forbidden"] = Field("forbidden", description="Zone kind; entering a forbidden zone alerts.")
    applies_to: list[VehicleType] = Field(
        default_factory=lambda: ["muck_truck"], description="Vehicle types barred from the zone."
    )
    windows: list[str] = Field(
        default_factory=list, description='Local windows "HH:MM-HH:MM" when the ban holds; empty = always.'
    )
    days: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6, 7], description="ISO weekdays the ban holds (1 = Monday)."
    )

    @field_validator("polygon")
    @classmethod
    def _poly(cls, v: list[Point]) -> list[Point]:
        return valid_polygon(_check_points(v, 3, "zone polygon"), "zone polygon")

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, v: list[str]) -> list[str]:
        return _check_windows(v)

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[int]) -> list[int]:
        bad = [d for d in v if not 1 <= d <= 7]
        if bad:
            raise ValueError(f"days must be ISO weekdays 1 (Monday) to 7 (Sunday), got {bad}")
        return v


class SiteConfig(StrictModel):
    id: str = Field(description="Site id.")
    name: str = Field("", description="Human-readable name.")
    kind: Literal["construction", "dump", "depot"] = Field(description="Approved site kind.")
    crs: CrsName = Field("wgs84", description="Coordinate system the polygon is drawn in.")
    polygon: list[Point] = Field(description="Outer ring [[lon, lat], ...], at least 3 points.")

    @field_validator("polygon")
    @classmethod
    def _poly(cls, v: list[Point]) -> list[Point]:
        return valid_polygon(_check_points(v, 3, "site polygon"), "site polygon")


class RoadConfig(StrictModel):
    id: str = Field(description="Road id that vehicles' assigned_roads reference.")
    name: str = Field("", description="Human-readable name.")
    crs: CrsName = Field("wgs84", description="Coordinate system the line is drawn in.")
    line: list[Point] = Field(description="Road centre line [[lon, lat], ...], at least 2 points.")
    shifts: list[str] = Field(
        default_factory=list,
        description='Shift windows "HH:MM-HH:MM" for coverage reports; empty = the vehicle\'s working hours.',
    )

    @field_validator("line")
    @classmethod
    def _line(cls, v: list[Point]) -> list[Point]:
        return _check_points(v, 2, "road line")

    @field_validator("shifts")
    @classmethod
    def _check_shifts(cls, v: list[str]) -> list[str]:
        return _check_windows(v)


class CityBoundsConfig(StrictModel):
    crs: CrsName = Field("wgs84", description="Coordinate system the polygon is drawn in.")
    polygon: list[Point] = Field(description="City boundary ring [[lon, lat], ...], at least 3 points.")

    @field_validator("polygon")
    @classmethod
    def _poly(cls, v: list[Point]) -> list[Point]:
        return valid_polygon(_check_points(v, 3, "city bounds polygon"), "city bounds polygon")


class FilterConfig(StrictModel):
    invalid_fix: bool = Field(True, description="Drop fixes the terminal marks as not positioned.")
    zero: bool = Field(True, description="Drop (0, 0) and out-of-range coordinates.")
    duplicates: bool = Field(True, description="Drop a fix with the same time as the device's last one.")
    future_s: float | None = Field(
        300.0, ge=0, description="Drop fixes more than this many seconds ahead of the receive time; empty = off."
    )
    max_speed_kmh: float | None = Field(
        250.0, gt=0, description="Drop a jump whose implied speed from the last fix exceeds this; empty = off."
    )
    jump_accept_after: int = Field(
        3, ge=1, description="Accept a jumped-to place after this many consecutive jumps (the old fix was bad)."
    )
    out_of_order_as_history: bool = Field(
        True, description="Treat fixes older than the device's last as history (stored, never alarming)."
    )


class _Rule(StrictModel):
    enabled: bool = Field(True, description="Run this rule.")
    name: str = Field(description="Rule name put on alerts (Alert.rule).")
    severity: Severity = Field("warning", description=f"Alert severity: {', '.join(SEVERITIES)}.")
    category: str | None = Field(None, description="Case catalog key; empty = alert only, no case.")
    driver_text: str | None = Field(
        None, description="Text sent to the vehicle's display (JT/T 808 0x8300, shown and read aloud) when this "
        'rule opens, e.g. "您已驶入渣土车禁行区，请立即驶离"; empty = none.'
    )

    @field_validator("driver_text")
    @classmethod
    def _driver_text(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("driver_text must not be blank (leave it out for no text)")
        try:
            size = len(v.encode("gbk"))
        except UnicodeEncodeError as exc:
            raise ValueError(f"driver_text: {v[exc.start:exc.end]!r} cannot be written in GBK, the terminals' "
                             "character set") from None
        if size > 1000:
            raise ValueError(f"driver_text is {size} GBK bytes; a terminal takes at most 1000")
        return v


class ForbiddenZoneRule(_Rule):
    name: str = Field("forbidden_zone", description="Rule name put on alerts.")
    category: str | None = Field("muck_truck_forbidden_zone", description="Case catalog key.")


class OffRouteRule(_Rule):
    name: str = Field("off_route", description="Rule name put on alerts.")
    category: str | None = Field("vehicle_off_route", description="Case catalog key.")
    min_duration_s: float = Field(60.0, ge=0, description="Open after this long continuously off the corridor.")
    min_distance_m: float | None = Field(
        300.0, ge=0, description="... or after driving this far off it (empty = duration only)."
    )
    working_hours_only: bool = Field(True, description="Only check during the vehicle's working hours.")


class OutsideHoursRule(_Rule):
    name: str = Field("outside_hours", description="Rule name put on alerts.")
    category: str | None = Field("vehicle_outside_hours", description="Case catalog key.")
    moving_kmh: float = Field(5.0, ge=0, description="A vehicle at or above this speed counts as working.")
    min_duration_s: float = Field(60.0, ge=0, description="Open after moving this long outside working hours.")
    clear_after_s: float = Field(300.0, ge=0, description="Close after this long stopped or back in hours.")


class OverspeedRule(_Rule):
    name: str = Field("overspeed", description="Rule name put on alerts.")
    category: str | None = Field("vehicle_overspeed", description="Case catalog key.")
    default_limit_kmh: float = Field(60.0, gt=0, description="Limit for vehicles without speed_limit_kmh.")
    tolerance_kmh: float = Field(0.0, ge=0, description="Speeds up to limit + tolerance are accepted.")
    min_duration_s: float = Field(10.0, ge=0, description="Open after being over the limit this long.")
    clear_after_s: float = Field(10.0, ge=0, description="Close after being under the limit this long.")


class IllegalDumpingRule(_Rule):
    name: str = Field("illegal_dumping", description="Rule name put on alerts.")
    category: str | None = Field("illegal_dumping", description="Case catalog key.")
    allowed_site_kinds: list[Literal["construction", "dump", "depot"]] = Field(
        default_factory=lambda: ["dump"], description="Sites where unloading is approved."
    )
    site_tolerance_m: float = Field(30.0, ge=0, description="GNSS slack around approved sites, metres.")


class LongStopRule(_Rule):
    name: str = Field("long_stop", description="Rule name put on alerts.")
    category: str | None = Field("vehicle_long_stop", description="Case catalog key.")
    stop_kmh: float = Field(3.0, ge=0, description="Below this speed the vehicle counts as stopped.")
    radius_m: float = Field(50.0, gt=0, description="Moving less than this from where it stopped is still stopped.")
    min_duration_s: float = Field(1800.0, ge=0, description="Open after being stopped this long off-site.")
    site_tolerance_m: float = Field(30.0, ge=0, description="GNSS slack around depots and sites, metres.")


class OfflineRule(_Rule):
    name: str = Field("offline", description="Rule name put on alerts.")
    min_minutes: float = Field(10.0, gt=0, description="Open after no live fix for this long in working hours.")


class TerminalAlarmRule(_Rule):
    name: str = Field("terminal_alarm", description="Rule name put on alerts (place = the alarm's name).")
    bits: dict[int, str] = Field(
        default_factory=lambda: {
            0: "emergency",
            1: "overspeed",
            20: "zone_in_out",
            21: "route_in_out",
            23: "route_deviation",
            26: "vehicle_stolen",
            27: "illegal_ignition",
            28: "illegal_displacement",
            29: "collision",
        },
        description="JT/T 808 alarm flag bits (0-31) that raise alerts, with the name each alert carries.",
    )

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: dict[int, str]) -> dict[int, str]:
        bad = [b for b in v if not 0 <= b <= 31]
        if bad:
            raise ValueError(f"alarm bits must be 0 to 31, got {bad}")
        return v


class CoverageRule(_Rule):
    name: str = Field("coverage", description="Rule name put on shift reports (place = road id).")
    severity: Severity = Field("info", description="Severity of a report that meets min_share.")
    low_severity: Severity = Field("warning", description="Severity of a report below min_share.")
    min_kmh: float = Field(3.0, ge=0, description="Working speed range, lower end (km/h).")
    max_kmh: float = Field(20.0, gt=0, description="Working speed range, upper end (km/h).")
    match_m: float = Field(20.0, gt=0, description="A fix this close to the road centre line is on the road.")
    bin_m: float = Field(10.0, gt=0, description="Road length resolution of coverage, metres.")
    max_gap_s: float = Field(120.0, gt=0, description="Consecutive fixes further apart in time are not joined.")
    min_share: float = Field(0.8, ge=0, le=1, description="A shift below this share opens a low-coverage alert.")


class UnregisteredRule(_Rule):
    name: str = Field("unregistered_vehicle", description="Rule name put on alerts.")
    category: str | None = Field("unregistered_vehicle", description="Case catalog key.")


class VehicleRulesConfig(StrictModel):
    forbidden_zone: ForbiddenZoneRule = Field(default_factory=ForbiddenZoneRule, description="Zone entry.")
    off_route: OffRouteRule = Field(default_factory=OffRouteRule, description="Leaving the permitted route.")
    outside_hours: OutsideHoursRule = Field(default_factory=OutsideHoursRule, description="Working off hours.")
    overspeed: OverspeedRule = Field(default_factory=OverspeedRule, description="Sustained overspeed.")
    illegal_dumping: IllegalDumpingRule = Field(
        default_factory=IllegalDumpingRule, description="Unloading outside approved dump sites."
    )
    long_stop: LongStopRule = Field(default_factory=LongStopRule, description="Long stop outside sites.")
    offline: OfflineRule = Field(default_factory=OfflineRule, description="Terminal silent in working hours.")
    terminal_alarm: TerminalAlarmRule = Field(
        default_factory=TerminalAlarmRule, description="The terminal's own alarm bits."
    )
    coverage: CoverageRule = Field(default_factory=CoverageRule, description="Sweeper road coverage per shift.")
    unregistered: UnregisteredRule = Field(
        default_factory=UnregisteredRule, description="Unknown terminals inside the city."
    )


class FleetConfig(StrictModel):
    vehicles: list[VehicleConfig] = Field(default_factory=list, description="Registered vehicles.")
    routes: list[RouteConfig] = Field(default_factory=list, description="Permitted routes (corridors).")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Forbidden zones with time windows.")
    sites: list[SiteConfig] = Field(default_factory=list, description="Approved construction/dump/depot sites.")
    roads: list[RoadConfig] = Field(default_factory=list, description="Roads whose coverage is reported.")
    city_bounds: CityBoundsConfig | None = Field(
        None, description="City boundary for unregistered vehicles; empty = envelope of all layers + margin."
    )
    city_margin_m: float = Field(5000.0, ge=0, description="Margin around the layers' envelope, metres.")
    timezone: TimeZoneName = Field("Asia/Shanghai", description="IANA time zone of working hours and windows; default: the top-level `timezone`.")
    segment_max_gap_s: float = Field(
        120.0, gt=0, description="Test the straight segment between fixes at most this far apart in time."
    )
    track_points: int = Field(60, ge=2, description="Recent fixes kept per vehicle for evidence.")
    index_cell_m: float = Field(250.0, gt=0, description="Cell size of the zone lookup cache, metres.")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="Position filters.")
    rules: VehicleRulesConfig = Field(default_factory=VehicleRulesConfig, description="Rules and thresholds.")

    @model_validator(mode="after")
    def _references(self) -> FleetConfig:
        for field, what, ids in (
            ("vehicles", "vehicle id", [v.id for v in self.vehicles]),
            ("vehicles", "vehicle terminal", [terminal_key(v.terminal) for v in self.vehicles]),  # any spelling
            ("routes", "route id", [r.id for r in self.routes]),
            ("zones", "zone id", [z.id for z in self.zones]),
            ("sites", "site id", [s.id for s in self.sites]),
            ("roads", "road id", [r.id for r in self.roads]),
        ):
            d = repeated(ids)
            if d:
                raise FieldError(field, f"each {what} must be unique; repeated: {', '.join(d)}")
        routes = {r.id for r in self.routes}
        roads = {r.id for r in self.roads}
        for i, v in enumerate(self.vehicles):
            if v.route is not None and v.route not in routes:
                raise FieldError(("vehicles", i, "route"), f"vehicle {v.id!r} names route {v.route!r}, which is not in routes")
            missing = [r for r in v.assigned_roads if r not in roads]
            if missing:
                raise FieldError(("vehicles", i, "assigned_roads"),
                                 f"vehicle {v.id!r} is assigned roads {missing} that are not in roads")
        return self
