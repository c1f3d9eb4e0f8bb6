"""The fleet's places, loaded once: converted to WGS-84, projected onto one local metric plane, indexed.

Every rule measures in this plane, so it is chosen around all the layers together (zones, sites, routes,
roads, city bounds); a fleet without any geometry gets it from its first fix. Rules build what only they
need (per-type zone layers, dump-site slack, route corridors) from the projected shapes kept here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import shapely
from shapely.geometry import Polygon
from shapely.geometry import box as shapely_box

from core.coords import coords_to_wgs84

from . import evidence as ev
from .config import FleetConfig
from .geometry import LocalPlane, PolygonLayer, Polyline, Shape, polygon
from .timewin import Window, minute_mask


@dataclass(slots=True)
class Area:
    """A zone or site: its config entry, metric polygon (as an indexable shape) and evidence place."""

    cfg: Any  # ZoneConfig | SiteConfig
    shape: Shape  # one per area, shared by every layer that holds it
    place: ev.Place

    @property
    def poly(self) -> Polygon:
        return self.shape.geom


@dataclass(slots=True)
class Line:
    """A route or road: its config entry, WGS-84 points and metric line."""

    cfg: Any  # RouteConfig | RoadConfig
    wgs84: tuple[tuple[float, float], ...]
    line: Polyline


class World:
    def __init__(self, cfg: FleetConfig) -> None:
        self.tz = ZoneInfo(cfg.timezone)
        self.cell_m = cfg.index_cell_m
        self._masks: dict[tuple[Window, ...], bytes] = {}
        self._route_places: dict[str, ev.Place] = {}
        layers = [(kind, item, coords_to_wgs84(getattr(item, attr), item.crs))
                  for kind, items, attr in (("zone", cfg.zones, "polygon"), ("site", cfg.sites, "polygon"),
                                            ("route", cfg.routes, "line"), ("road", cfg.roads, "line"))
                  for item in items]
        bounds_wgs = coords_to_wgs84(cfg.city_bounds.polygon, cfg.city_bounds.crs) if cfg.city_bounds else []
        every = [p for _, _, pts in layers for p in pts] + bounds_wgs
        self.plane: LocalPlane | None = None  # set from the first fix when there is no geometry to agree with
        if every:
            lons, lats = [p[0] for p in every], [p[1] for p in every]
            self.plane = LocalPlane((min(lons) + max(lons)) / 2, (min(lats) + max(lats)) / 2)
        self.zones: list[Area] = []
        self.sites: dict[str, Area] = {}
        self.routes: dict[str, Line] = {}
        self.roads: dict[str, Line] = {}
        for kind, item, wgs in layers:
            assert self.plane is not None
            xy = self.plane.project(wgs)
            if kind in ("zone", "site"):
                poly = polygon(xy)
                area = Area(item, Shape(item.id, poly, poly.bounds, item),
                            ev.Place(item.id, kind, item.name, tuple(wgs), False, poly))
                if kind == "zone":
                    self.zones.append(area)
                else:
                    self.sites[item.id] = area
            else:
                (self.routes if kind == "route" else self.roads)[item.id] = Line(item, tuple(wgs), Polyline(xy))
        self.zone_layer = self.layer(a.shape for a in self.zones)  # every zone (lookups, tests)
        self.site_layer = self.layer(a.shape for a in self.sites.values())
        # city bounds: a configured polygon, or the layers' envelope plus a margin
        self.city: Polygon | None = None
        if self.plane is not None:
            if bounds_wgs:
                self.city = polygon(self.plane.project(bounds_wgs))
            elif every:
                xs, ys = zip(*self.plane.project(every), strict=True)
                m = cfg.city_margin_m
                self.city = shapely_box(min(xs) - m, min(ys) - m, max(xs) + m, max(ys) + m)
            if self.city is not None:
                shapely.prepare(self.city)

    def layer(self, shapes: Iterable[Shape]) -> PolygonLayer:
        """An indexed layer of shapes, its lookups cached per `index_cell_m` cell."""
        return PolygonLayer(list(shapes), self.cell_m)

    @staticmethod
    def grown(area: Area, metres: float) -> Shape:
        """An area with slack around it (GNSS error), as a shape of its own."""
        g = area.poly.buffer(metres)
        return Shape(area.cfg.id, g, g.bounds, area.cfg)

    def place_plane(self, lon: float, lat: float) -> LocalPlane:
        """The plane, centred on this first fix if the fleet has no geometry."""
        if self.plane is None:
            self.plane = LocalPlane(lon, lat)
        return self.plane

    def mask(self, windows: tuple[Window, ...]) -> bytes:
        """minute_mask, shared between equal window lists (many zones and vehicles have the same)."""
        mask = self._masks.get(windows)
        if mask is None:
            mask = self._masks[windows] = minute_mask(windows)
        return mask

    def local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def iso(self, t: float) -> str:
        return datetime.fromtimestamp(t, self.tz).isoformat()

    def route_place(self, route_id: str) -> ev.Place:
        """A route drawn on evidence: its corridor (made once, on first use)."""
        place = self._route_places.get(route_id)
        if place is None:
            r = self.routes[route_id]
            place = self._route_places[route_id] = ev.Place(
                r.cfg.id, "route", r.cfg.name, r.wgs84, True, r.line.line.buffer(r.cfg.width_m / 2))
        return place

    def sites_near(self, x: float, y: float, radius: float = 500.0) -> list[ev.Place]:
        """Sites drawn on an evidence map around a place."""
        layer = self.site_layer
        idx = layer.candidates(x - radius, y - radius, x + radius, y + radius)
        return [self.sites[layer.shapes[i].id].place for i in idx]
