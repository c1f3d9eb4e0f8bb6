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


EDGE_M = 1e-3  # a point this close to a polygon's boundary is on it (absorbs rounding; far below GNSS error)


@dataclass(slots=True)
class Shape:
    """One indexed polygon with its id and bounding box (for the cheap pre-test)."""

    id: str
    geom: Polygon
    bounds: tuple[float, float, float, float]
    data: object  # the config entry it came from
    ring: tuple[tuple[float, float], ...] | None = None  # vertices of a small simple polygon, else None
    edge: object = None  # else its boundary, prepared


_SMALL = 24  # polygons with at most this many vertices are tested in pure Python (no geometry objects)
_INSIDE, _EDGE, _OUTSIDE = 1, 0, -1


def _ring_of(geom: Polygon) -> tuple[tuple[float, float], ...] | None:
    if geom.geom_type != "Polygon" or len(geom.interiors) or len(geom.exterior.coords) - 1 > _SMALL:
        return None
    return tuple((float(x), float(y)) for x, y in geom.exterior.coords[:-1])


def _where(ring: tuple[tuple[float, float], ...], x: float, y: float) -> int:
    """_INSIDE, _EDGE (within EDGE_M of an edge) or _OUTSIDE: even-odd ray casting off the edge."""
    inside = False
    e = EDGE_M
    jx, jy = ring[-1]
    for ix, iy in ring:
        if min(ix, jx) - e <= x <= max(ix, jx) + e and min(iy, jy) - e <= y <= max(iy, jy) + e:
            ex, ey = ix - jx, iy - jy
            l2 = ex * ex + ey * ey
            u = 0.0 if l2 == 0.0 else max(0.0, min(1.0, ((x - jx) * ex + (y - jy) * ey) / l2))
            dx, dy = x - jx - u * ex, y - jy - u * ey
            if dx * dx + dy * dy <= e * e:
                return _EDGE
        if (iy > y) != (jy > y) and x < (jx - ix) * (y - iy) / (jy - iy) + ix:
            inside = not inside
        jx, jy = ix, iy
    return _INSIDE if inside else _OUTSIDE


def _boundary_fractions(ring: tuple[tuple[float, float], ...], x0: float, y0: float, dx: float, dy: float,
                        l2: float) -> list[float]:
    """Fractions along the segment where it meets the ring: edge crossings, and the projection of every
    vertex within EDGE_M of it (the ends of a stretch along an edge, a graze past a corner)."""
    out = []
    e2 = EDGE_M * EDGE_M
    jx, jy = ring[-1]
    for ix, iy in ring:
        ex, ey = ix - jx, iy - jy
        den = dx * ey - dy * ex
        if den != 0.0:
            wx, wy = jx - x0, jy - y0
            t = (wx * ey - wy * ex) / den
            u = (wx * dy - wy * dx) / den
            if 0.0 < t < 1.0 and 0.0 <= u <= 1.0:
                out.append(t)
        t = ((ix - x0) * dx + (iy - y0) * dy) / l2
        if 0.0 < t < 1.0:
            px, py = ix - x0 - t * dx, iy - y0 - t * dy
            if px * px + py * py <= e2:
                out.append(t)
        jx, jy = ix, iy
    return out


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
            if s.ring is None and s.edge is None:
                s.edge = s.geom.boundary
                shapely.prepare(s.edge)
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

    def where(self, i: int, x: float, y: float) -> int:
        """Whether the point is inside shape i, on its edge (within EDGE_M) or outside."""
        s, e = self.shapes[i], EDGE_M
        b = s.bounds
        if not (b[0] - e <= x <= b[2] + e and b[1] - e <= y <= b[3] + e):
            return _OUTSIDE
        if s.ring is not None:
            return _where(s.ring, x, y)
        if shapely.dwithin(s.edge, shapely.points(x, y), e):
            return _EDGE
        return _INSIDE if shapely.contains_xy(s.geom, x, y) else _OUTSIDE

    def covers(self, i: int, x: float, y: float) -> bool:
        """The point is inside shape i or on its edge."""
        return self.where(i, x, y) != _OUTSIDE

    def any_covers(self, x: float, y: float) -> str | None:
        """Id of a shape the point is inside or on the edge of, if any."""
        for i in self.candidates(x, y, x, y):
            if self.covers(i, x, y):
                return self.shapes[i].id
        return None

    def entry(self, i: int, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float] | None:
        """Where the segment first goes into shape i's interior: (x, y, fraction along the segment); None
        when it never does (it stays outside, or only touches or runs along the edge).

        The segment is cut wherever it meets the boundary; each piece lies wholly inside, outside or
        along an edge, so its midpoint tells which, and the first piece inside starts the entry."""
        s, e = self.shapes[i], EDGE_M
        b = s.bounds
        if max(x0, x1) < b[0] - e or min(x0, x1) > b[2] + e or max(y0, y1) < b[1] - e or min(y0, y1) > b[3] + e:
            return None
        dx, dy = x1 - x0, y1 - y0
        l2 = dx * dx + dy * dy
        if l2 == 0.0:
            return (x0, y0, 0.0) if self.where(i, x0, y0) == _INSIDE else None
        if s.ring is not None:  # a small simple polygon: pure Python (no GEOS)
            cuts = _boundary_fractions(s.ring, x0, y0, dx, dy, l2)
        else:
            seg = LineString([(x0, y0), (x1, y1)])
            if not s.geom.intersects(seg):
                return None
            pts = shapely.get_coordinates(s.edge.intersection(seg))
            cuts = shapely.line_locate_point(seg, shapely.points(pts), normalized=True).tolist() if len(pts) else []
            vx, vy = (shapely.get_coordinates(s.edge) - (x0, y0)).T  # vertices grazing the segment, as above
            t = (vx * dx + vy * dy) / l2
            near = (t > 0.0) & (t < 1.0) & ((vx - t * dx) ** 2 + (vy - t * dy) ** 2 <= e * e)
            cuts += t[near].tolist()
        ts = sorted({0.0, 1.0, *cuts})
        for a, c in zip(ts, ts[1:], strict=False):
            m = (a + c) / 2
            if self.where(i, x0 + m * dx, y0 + m * dy) == _INSIDE:
                return x0 + a * dx, y0 + a * dy, a
        return None


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
