"""Unregistered vehicles: a terminal not in the fleet reporting inside the city (a possible black truck),
one alert per terminal. Its subject is the terminal, not a fleet vehicle, so it has no per-vehicle state:
the monitor calls it for the live fixes no vehicle claims."""

from __future__ import annotations

import shapely

from core.model import Alert, Position

from ..config import UnregisteredRule
from ..identity import terminal_key
from ..world import World

MAX_SEEN = 100_000  # terminals remembered as alerted (bounded: a flood of invented ids must not eat memory)


class Unregistered:
    def __init__(self, config: UnregisteredRule, world: World) -> None:
        self.config, self.world = config, world
        self.count = 0  # live fixes of terminals not in the fleet
        self._seen: set[str] = set()

    def process(self, p: Position) -> list[Alert]:
        self.count += 1
        rule = self.config
        device = terminal_key(p.device)  # one subject however a source spelled the number
        if not rule.enabled or device in self._seen:
            return []
        city = self.world.city
        if city is not None:
            x, y = self.world.place_plane(p.lon, p.lat).xy(p.lon, p.lat)
            if not shapely.contains_xy(city, x, y):
                return []
        if len(self._seen) < MAX_SEEN:
            self._seen.add(device)
        return [Alert(rule=rule.name, subject_kind="terminal", subject_id=device, state="open", time=p.time,
                      source="vehicle", severity=rule.severity, category=rule.category,
                      message=f"unregistered terminal {device} reporting inside the city",
                      lon=p.lon, lat=p.lat, facts={"terminal": device, "speed_kmh": p.speed_kmh})]
