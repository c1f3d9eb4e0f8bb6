"""Metric geometry for the fleet: a local plane, indexed polygon layers, and polylines.

All layers are converted to WGS-84 (core.coords) and projected once, at load, onto a local
equirectangular plane around the fleet's centroid, so widths and distances are in metres (the
scale error is < 0.1 % over a city). Lookups go through a shapely STRtree whose answers are cached
per grid cell, so the common case - a fix far from every zone - costs one dict lookup.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon

_R = 6371008.8  # mean Earth radius, metres


class LocalPlane:
    """Equirectangular projection around (lon0, lat0): x east, y north, metres."""

    def __init__(self, lon0: float, lat0: float) -> None:
        self.lon0, self.lat0 = lon0, lat0
        self.ky = _R * math.pi / 180.0
        self.kx = self.ky * math.cos(math.radians(lat0))

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        return (lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky

    def lonlat(self, x: float, y: float) -> tuple[float, float]:
        return self.lon0 + x / self.kx, self.lat0 + y / self.ky

    def project(self, points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [self.xy(lon, lat) for lon, lat in points]


@dataclass(slots=True)
class Shape:
    """One indexed polygon with its id and bounding box (for the cheap pre-test)."""

    id: str
    geom: Polygon
    bounds: tuple[float, float, float, float]
    data: object  # the config entry it came from
    ring: tuple[tuple[float, float], ...] | None = None  # vertices of a small simple polygon, else None


_SMALL = 24  # polygons with at most this many vertices are tested in pure Python (no geometry objects)


def _ring_of(geom: Polygon) -> tuple[tuple[float, float], ...] | None:
    if geom.geom_type != "Polygon" or len(geom.interiors) or len(geom.exterior.coords) - 1 > _SMALL:
        return None
    return tuple((float(x), float(y)) for x, y in geom.exterior.coords[:-1])


def _inside(ring: tuple[tuple[float, float], ...], x: float, y: float) -> bool:
    """Even-odd ray casting."""
    inside = False
    jx, jy = ring[-1]
    for ix, iy in ring:
        if (iy > y) != (jy > y) and x < (jx - ix) * (y - iy) / (jy - iy) + ix:
            inside = not inside
        jx, jy = ix, iy
    return inside


def _first_crossing(ring: tuple[tuple[float, float], ...], x0: float, y0: float, x1: float, y1: float,
                    first: bool = True) -> float | None:
    """Fraction along segment (x0,y0)-(x1,y1) where it first meets an edge of the ring (touching counts),
    or None; with first=False, the fraction of any meeting (enough to know that they meet)."""
    dx, dy = x1 - x0, y1 - y0
    best = None
    jx, jy = ring[-1]
    for ix, iy in ring:
        ex, ey = ix - jx, iy - jy
        den = dx * ey - dy * ex
        if den != 0.0:
            wx, wy = jx - x0, jy - y0
            t = (wx * ey - wy * ex) / den
            u = (wx * dy - wy * dx) / den
            if 0.0 <= t <= 1.0 and 0.0 <= u <= 1.0:
                if not first:
                    return t
                if best is None or t < best:
                    best = t
        jx, jy = ix, iy
    return best


def _crosses(ring: tuple[tuple[float, float], ...], x0: float, y0: float, x1: float, y1: float) -> bool:
    """Whether segment (x0,y0)-(x1,y1) meets any edge of the ring (touching counts)."""
    return _first_crossing(ring, x0, y0, x1, y1, first=False) is not None


class PolygonLayer:
    """Polygons with a cached STRtree lookup by grid cell, point and segment tests."""

    _MAX_CELLS = 200_000  # bound the cache; a fleet roams a city, not a continent

    def __init__(self, shapes: list[Shape], cell_m: float) -> None:
        self.shapes = shapes
        self.cell = cell_m
        self._tree = shapely.STRtree([s.geom for s in shapes]) if shapes else None
        for s in shapes:
            shapely.prepare(s.geom)
            s.ring = _ring_of(s.geom)
        self._cells: dict[tuple[int, int], tuple[int, ...]] = {}

    def prefill(self, x0: float, y0: float, x1: float, y1: float, max_cells: int = 250_000) -> int:
        """Answer every cell of a box at once (one vectorised tree query) so that no fix pays for a
        cold cell later; returns the number of cells filled (0 when the box is too large)."""
        c = self.cell
        ax, bx, ay, by = math.floor(x0 / c), math.floor(x1 / c), math.floor(y0 / c), math.floor(y1 / c)
        n = (bx - ax + 1) * (by - ay + 1)
        if self._tree is None or n > max_cells:
            return 0
        gx, gy = np.meshgrid(np.arange(ax, bx + 1), np.arange(ay, by + 1))
        gx, gy = gx.ravel(), gy.ravel()
        cell_idx, shape_idx = self._tree.query(shapely.box(gx * c, gy * c, (gx + 1) * c, (gy + 1) * c))
        found: dict[int, list[int]] = {}
        for ci, si in zip(cell_idx.tolist(), shape_idx.tolist(), strict=True):
            found.setdefault(ci, []).append(si)
        empty: tuple[int, ...] = ()
        keys = list(zip(gx.tolist(), gy.tolist(), strict=True))
        for ci, key in enumerate(keys):
            hit = found.get(ci)
            self._cells[key] = tuple(sorted(hit)) if hit else empty
        return n

    def __len__(self) -> int:
        return len(self.shapes)

    def _query_box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, ...]:
        if self._tree is None:
            return ()
        return tuple(sorted(self._tree.query(shapely.box(x0, y0, x1, y1)).tolist()))

    def _cell(self, cx: int, cy: int) -> tuple[int, ...]:
        hit = self._cells.get((cx, cy))
        if hit is None:
            c = self.cell
            hit = self._query_box(cx * c, cy * c, (cx + 1) * c, (cy + 1) * c)
            if len(self._cells) >= self._MAX_CELLS:
                self._cells.clear()
            self._cells[(cx, cy)] = hit
        return hit

    def candidates(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, ...]:
        """Indices of shapes whose boxes may meet the box spanned by two points."""
        c, floor = self.cell, math.floor
        ax, ay, bx, by = floor(x0 / c), floor(y0 / c), floor(x1 / c), floor(y1 / c)
        if ax == bx and ay == by:  # the usual case (a short hop inside one cell): one dict lookup
            hit = self._cells.get((ax, ay))
            return hit if hit is not None else self._cell(ax, ay)
        if ax > bx:  # floor is monotonic: order the cell indices rather than the coordinates
            ax, bx = bx, ax
        if ay > by:
            ay, by = by, ay
        if (bx - ax + 1) * (by - ay + 1) > 16:  # a long segment: ask the tree directly
            return self._query_box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        found: set[int] = set()
        for cx in range(ax, bx + 1):
            for cy in range(ay, by + 1):
                found.update(self._cell(cx, cy))
        return tuple(sorted(found))

    def contains(self, i: int, x: float, y: float) -> bool:
        s = self.shapes[i]
        b = s.bounds
        if not (b[0] <= x <= b[2] and b[1] <= y <= b[3]):
            return False
        if s.ring is not None:
            return _inside(s.ring, x, y)
        return bool(shapely.contains_xy(s.geom, x, y))

    def segment_hits(self, i: int, x0: float, y0: float, x1: float, y1: float) -> bool:
        s = self.shapes[i]
        b = s.bounds
        if max(x0, x1) < b[0] or min(x0, x1) > b[2] or max(y0, y1) < b[1] or min(y0, y1) > b[3]:
            return False
        if x0 == x1 and y0 == y1:
            return self.contains(i, x0, y0)
        if s.ring is not None:
            return _inside(s.ring, x1, y1) or _crosses(s.ring, x0, y0, x1, y1)
        return bool(s.geom.intersects(LineString([(x0, y0), (x1, y1)])))

    def any_contains(self, x: float, y: float) -> str | None:
        """Id of a shape containing the point, if any."""
        for i in self.candidates(x, y, x, y):
            if self.contains(i, x, y):
                return self.shapes[i].id
        return None

    def entry_point(self, i: int, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float]:
        """Where the segment first meets shape i: (x, y, fraction along the segment)."""
        if self.contains(i, x0, y0) or (x0 == x1 and y0 == y1):
            return x0, y0, 0.0
        ring = self.shapes[i].ring
        if ring is not None:  # a small simple polygon: the first edge crossing, in pure Python (no GEOS)
            frac = _first_crossing(ring, x0, y0, x1, y1)
            if frac is None:
                return x1, y1, 1.0
            return x0 + frac * (x1 - x0), y0 + frac * (y1 - y0), frac
        seg = LineString([(x0, y0), (x1, y1)])
        inter = self.shapes[i].geom.intersection(seg)
        if inter.is_empty:
            return x1, y1, 1.0
        # the intersection's point nearest the segment start is where the vehicle entered
        frac = min(seg.project(shapely.points(c)) for c in shapely.get_coordinates(inter)) / seg.length
        p = seg.interpolate(frac, normalized=True)
        return p.x, p.y, frac


def polygon(points_xy: Sequence[tuple[float, float]], buffer_m: float = 0.0) -> Polygon:
    poly = Polygon(points_xy)
    if not poly.is_valid:
        poly = shapely.make_valid(poly)
        if poly.geom_type != "Polygon":  # keep the largest piece of a self-touching ring
            poly = max(getattr(poly, "geoms", [poly]), key=lambda g: g.area)
    return poly.buffer(buffer_m) if buffer_m else poly


class Polyline:
    """A line in the local plane with cheap nearest-segment search (routes, roads).

    `locate` first tries the segment the vehicle matched last time and its neighbours (pure Python,
    a microsecond), and only falls back to shapely when the vehicle jumped elsewhere.
    """

    def __init__(self, points_xy: Sequence[tuple[float, float]]) -> None:
        self.points = [(float(x), float(y)) for x, y in points_xy]
        self.line = LineString(self.points)
        shapely.prepare(self.line)
        self.cum = [0.0]
        for (ax, ay), (bx, by) in zip(self.points, self.points[1:], strict=False):
            self.cum.append(self.cum[-1] + math.hypot(bx - ax, by - ay))
        self.length = self.cum[-1]
        # per segment, what `_seg` needs, computed once: start, direction, squared length, position
        # along the line at its start and its length (locate runs for every fix of a routed vehicle)
        self._segs = [(ax, ay, bx - ax, by - ay, (bx - ax) ** 2 + (by - ay) ** 2, self.cum[k],
                       self.cum[k + 1] - self.cum[k])
                      for k, ((ax, ay), (bx, by)) in enumerate(zip(self.points, self.points[1:], strict=False))]

    def _seg(self, k: int, x: float, y: float) -> tuple[float, float]:
        """(distance, position along the line) of the point's projection on segment k."""
        ax, ay, dx, dy, L2, s0, length = self._segs[k]
        t = 0.0 if L2 == 0 else ((x - ax) * dx + (y - ay) * dy) / L2
        t = 0.0 if t < 0.0 else 1.0 if t > 1.0 else t
        px, py = ax + t * dx, ay + t * dy
        return math.hypot(x - px, y - py), s0 + t * length

    def locate(self, x: float, y: float, hint: int, within: float) -> tuple[float, float, int]:
        """(distance to the line, position along it, segment index). Exact when the distance is
        <= `within`; beyond that it is the shapely answer."""
        n = len(self._segs)
        if 0 <= hint < n:
            d, s = self._seg(hint, x, y)
            if d <= within:  # still on the segment of last time: the usual answer
                return d, s, hint
            for k in (hint + 1, hint - 1):
                if 0 <= k < n:
                    d, s = self._seg(k, x, y)
                    if d <= within:
                        return d, s, k
        pt = shapely.points(x, y)
        s = float(self.line.project(pt))
        d = float(self.line.distance(pt))
        k = max(0, min(n - 1, bisect.bisect_right(self.cum, s) - 1))
        return d, s, k
