"""What every fleet rule shares: the vehicle, the fix being processed, and one shape for all rules.

A rule is one object per fleet, holding its config and what it precomputes once (layers, lines, masks),
with each vehicle's state in a small object of its own (`states`, by vehicle id). The monitor computes
each fix's context once (`Fix`: the metric point, the segment since the vehicle's previous fix, the
local minute, whether it is in working hours) and hands it to the rules that apply to the vehicle:

    state_for(vehicle) -> state | None   once per vehicle: None when the rule does not apply to it
    process(state, fix, out)             every live fix; alerts are appended to `out`
    history(state, fix)                  every history fix (blind-area supplements), where overridden
    tick(clock, vehicles, out)           every tick, for the vehicles whose clock it is, where overridden

Each `process` begins with its common case (nothing near, nothing pending), which returns at once: that
and the context computed once keep the path of a compliant fix short. Pure: no I/O, no clock reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

from core.model import Alert, DetectorOutput, Evidence, Position

from .. import evidence as ev
from ..config import VehicleConfig, _Rule
from ..timewin import Window
from ..world import World

Outputs = list[DetectorOutput]


class Vehicle:
    """One fleet vehicle: its config, what every rule reads about it, and its previous fix."""

    __slots__ = ("cfg", "id", "label", "hours", "hours_mask", "facts", "track", "last_t", "last_x", "last_y",
                 "last_lon", "last_lat", "on_fix", "on_history")

    def __init__(self, cfg: VehicleConfig, hours: tuple[Window, ...], hours_mask: bytes, track_points: int) -> None:
        self.cfg, self.id = cfg, cfg.id
        self.label = cfg.plate or cfg.id  # how messages name it
        self.hours = hours
        self.hours_mask = hours_mask  # minute of the day -> 1 inside working hours
        self.facts = {"plate": cfg.plate, "vehicle_type": cfg.type, "company": cfg.company, "terminal": cfg.terminal}
        self.track: deque[tuple[float, float, float, float]] = deque(maxlen=track_points)  # for evidence
        self.last_t: float | None = None  # the previous live fix: epoch seconds, metric x, y, lon, lat
        self.last_x = self.last_y = self.last_lon = self.last_lat = 0.0
        # the rules that apply to it, with its state in each: called in this order
        self.on_fix: list[tuple[Callable[[Any, Fix, Outputs], None], Any]] = []
        self.on_history: list[tuple[Callable[[Any, Fix], None], Any]] = []


class Fix:
    """The fix being processed, computed once for all rules. The monitor fills one in place per fix:
    rules read it and must not keep it."""

    __slots__ = ("v", "p", "t", "x", "y", "x0", "y0", "seg", "speed", "local", "minute", "in_hours")

    def __init__(self) -> None:
        self.v: Vehicle
        self.p: Position
        self.t = 0.0  # epoch seconds
        self.x = self.y = 0.0  # metric point
        self.x0 = self.y0 = 0.0  # segment start: the previous fix when recent enough (`seg`), else the point
        self.seg = False
        self.speed = 0.0
        self.local: datetime  # local time, to the minute
        self.minute = 0  # minute of the local day
        self.in_hours = False  # inside the vehicle's working hours


class Clock(NamedTuple):
    """A tick's time: as given, epoch seconds, local to the minute, minute of the local day."""

    now: datetime
    ts: float
    local: datetime
    minute: int


class Hold:
    """A condition that must hold `on_s` to open and be absent `off_s` to close."""

    __slots__ = ("open", "since", "clear_since", "peak", "where")

    def __init__(self) -> None:
        self.open = False
        self.since: float | None = None
        self.clear_since: float | None = None
        self.peak = 0.0
        self.where: tuple[float, float] | None = None  # lon, lat where the condition began

    @property
    def idle(self) -> bool:
        """Neither open nor pending."""
        return not self.open and self.since is None

    def update(self, cond: bool, t: float, on_s: float, off_s: float) -> int:
        """+1 when it opens, -1 when it closes, 0 otherwise."""
        if cond:
            self.clear_since = None
            if not self.open:
                if self.since is None:
                    self.since = t
                if t - self.since >= on_s:
                    self.open = True
                    return 1
        else:
            self.since = None
            if self.open:
                if self.clear_since is None:
                    self.clear_since = t
                if t - self.clear_since >= off_s:
                    self.open = False
                    self.clear_since = None
                    return -1
        return 0


class Rule:
    """One vehicle rule for a fleet (see the module doc for the shape every rule has)."""

    def __init__(self, config: _Rule, world: World) -> None:
        self.config = config
        self.world = world
        self.states: dict[str, Any] = {}  # vehicle id -> this rule's state for it

    def attach(self, v: Vehicle) -> None:
        """Give the vehicle its state in this rule, if the rule applies to it."""
        st = self.state_for(v)
        if st is None:
            return
        self.states[v.id] = st
        v.on_fix.append((self.process, st))
        if type(self).history is not Rule.history:
            v.on_history.append((self.history, st))

    def state_for(self, v: Vehicle) -> Any:
        raise NotImplementedError

    def process(self, st: Any, f: Fix, out: Outputs) -> None:
        raise NotImplementedError

    def history(self, st: Any, f: Fix) -> None:
        """A history fix (never alarms the present); only rules that use them override this."""

    def tick(self, clock: Clock, vehicles: Iterable[Vehicle], out: Outputs) -> None:
        """Time passing without fixes; only rules that need it override this."""

    # ------------------------------------------------------------------ helpers

    def alert(self, v: Vehicle, state: str, when: datetime, *, place: str = "", lon: float | None = None,
              lat: float | None = None, facts: dict | None = None, message: str = "",
              evidence: Callable[[], tuple[Evidence, ...]] | None = None, severity: str | None = None) -> Alert:
        rule = self.config
        return Alert(
            rule=rule.name, subject_kind="vehicle", subject_id=v.id, state=state,  # type: ignore[arg-type]
            time=when, source="vehicle", severity=severity or rule.severity,  # type: ignore[arg-type]
            message=message, category=rule.category, place=place, lon=lon, lat=lat,
            facts={**v.facts, **(facts or {})}, render_evidence=evidence,
        )

    def evidence(self, v: Vehicle, places: Iterable[ev.Place], lon: float, lat: float,
                 props: dict) -> Callable[[], tuple[Evidence, ...]] | None:
        """The map and track excerpt, drawn later by the case desk and only for a new case."""
        plane = self.world.plane
        if self.config.category is None or plane is None:
            return None  # alert-only rules make no case, so no evidence
        return partial(ev.build, plane, list(v.track), list(places), (lon, lat), props)
