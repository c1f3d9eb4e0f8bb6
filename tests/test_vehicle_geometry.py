"""The fast pure-Python polygon tests and the cell cache agree with shapely."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, Point, Polygon
from shapely.ops import substring

from detectors.vehicle.geometry import _SMALL, EDGE_M, PolygonLayer, Polyline, Shape

coord = st.floats(min_value=-200, max_value=200, allow_nan=False)


def layer_of(ring) -> PolygonLayer:
    poly = Polygon(ring)
    return PolygonLayer([Shape("z", poly, poly.bounds, None)], 100.0)


@st.composite
def star_polygon(draw, max_n: int = 12):
    """A simple (star-shaped) polygon around a random centre, 3..max_n vertices, some concave."""
    n = draw(st.integers(3, max_n))
    cx, cy = draw(coord), draw(coord)
    radii = draw(st.lists(st.floats(5, 100), min_size=n, max_size=n))
    return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))
            for k, r in enumerate(radii)]


@st.composite
def near_ring(draw, ring):
    """A point that often lies on the ring: a vertex, a point along an edge, or anywhere around it."""
    kind = draw(st.sampled_from(["vertex", "edge", "free"]))
    k = draw(st.integers(0, len(ring) - 1))
    (ax, ay), (bx, by) = ring[k], ring[(k + 1) % len(ring)]
    if kind == "vertex":
        return ax, ay
    if kind == "edge":
        f = draw(st.floats(0, 1))
        return ax + f * (bx - ax), ay + f * (by - ay)
    return draw(coord), draw(coord)


def enters_interior(poly: Polygon, seg: LineString) -> bool:
    return poly.relate_pattern(seg, "T********")  # the interiors meet (DE-9IM)


@settings(max_examples=400, deadline=None)
@given(st.data(), star_polygon(max_n=_SMALL + 12))  # both the pure-Python and the GEOS path
def test_where_and_entry_match_shapely_up_to_the_edge_tolerance(data, ring):
    poly, layer = Polygon(ring), layer_of(ring)
    x0, y0 = data.draw(near_ring(ring))
    x1, y1 = data.draw(near_ring(ring))
    d = poly.exterior.distance(Point(x1, y1))
    if abs(d - EDGE_M) > 1e-9:
        expected = 0 if d < EDGE_M else 1 if poly.contains(Point(x1, y1)) else -1
        assert layer.where(0, x1, y1) == expected
    seg = LineString([(x0, y0), (x1, y1)])
    hit = layer.entry(0, x0, y0, x1, y1)
    if seg.length == 0:
        return
    if seg.intersects(poly.buffer(-5 * EDGE_M)):  # goes clearly into the zone
        assert hit is not None
        _, _, frac = hit
        if frac > 1e-9:  # nothing deep before the entry
            assert not substring(seg, 0, frac - 1e-9, normalized=True).intersects(poly.buffer(-5 * EDGE_M))
    elif not enters_interior(poly, seg):  # outside, or only touching / running along the edge
        assert hit is None


lattice = st.integers(-10, 10)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(lattice, lattice), min_size=3, max_size=8, unique=True), lattice, lattice, lattice,
       lattice)
def test_on_a_lattice_enters_exactly_when_the_segment_meets_the_interior(ring, x0, y0, x1, y1):
    """Integer vertices and fixes land on edges and vertices all the time, exactly (no rounding): the
    answer must be shapely's, with no tolerance band to hide in."""
    poly = Polygon(ring)
    if not poly.is_valid or poly.area == 0:
        return
    seg = LineString([(x0, y0), (x1, y1)])
    hit = layer_of(ring).entry(0, x0, y0, x1, y1)
    if seg.length == 0:
        assert (hit is not None) == poly.contains(Point(x0, y0))
        return
    assert (hit is not None) == enters_interior(poly, seg)
    if hit is not None:
        ex, ey, frac = hit
        assert frac == 0 or poly.exterior.distance(Point(ex, ey)) < 1e-9  # on the edge, or the start
        assert frac == 0 or not enters_interior(poly, substring(seg, 0, frac - 1e-9, normalized=True))
        assert enters_interior(poly, substring(seg, frac, min(1.0, frac + 1e-3), normalized=True))


def test_touching_the_edge_or_a_vertex_is_not_entering_but_cutting_a_corner_is():
    layer = layer_of([(0, 0), (10, 0), (10, 10), (0, 10)])
    assert layer.entry(0, -5, 0, 15, 0) is None  # along the bottom edge, and beyond
    assert layer.entry(0, 5, 0, 5, -5) is None  # from a point on the edge, away
    assert layer.entry(0, 10, 10, 15, 12) is None  # from the vertex, away
    assert layer.entry(0, 5, -5, 5, 0) is None and layer.entry(0, 5, -5, 5, 0.0005) is None  # up to it
    assert layer.entry(0, 0, 5, -5, 0) is None  # from the left edge out past the corner
    assert layer.entry(0, -1, 9, 3, 13) is None  # through the corner (0, 10) exactly: a touch
    assert layer.entry(0, -1, 8, 3, 12) == (0.0, 9.0, 0.25)  # cuts the corner: in across the left edge
    assert layer.entry(0, 5, 0, 5, 1) == (5.0, 0.0, 0.0)  # from the edge, inwards: entered on leaving the edge
    slanted = [(0.0, 0.0), (37.3, 11.9), (20.1, 44.7)]  # fixes along a slanted edge are off it by rounding
    ax, ay, bx, by = *slanted[0], *slanted[1]
    along = [(ax + f * (bx - ax), ay + f * (by - ay)) for f in (0, 0.13, 0.5, 0.77, 1)]
    assert all(layer_of(slanted).entry(0, *p, *q) is None for p, q in zip(along, along[1:], strict=False))
    # a notch down to (5, 5): a drive 0.5 mm under its tip is deep inside on both sides of it
    notched = layer_of([(0, 0), (10, 0), (10, 10), (6, 10), (5, 5), (4, 10), (0, 10)])
    assert notched.entry(0, -1, 4.9995, 11, 4.9995) == (0.0, 4.9995, 1 / 12)
    assert layer.where(0, 5, 0) == 0 and layer.where(0, 0, 0) == 0 and layer.where(0, 5, 5) == 1
    assert layer.covers(0, 10, 5) and not layer.covers(0, 10.01, 5)


def test_prefilled_cells_equal_lazy_cells():
    shapes = []
    for i in range(200):
        cx, cy = (i * 37) % 2000 - 1000, (i * 91) % 2000 - 1000
        poly = Polygon([(cx, cy), (cx + 40, cy), (cx + 40, cy + 25), (cx, cy + 25)])
        shapes.append(Shape(f"z{i}", poly, poly.bounds, None))
    lazy, full = PolygonLayer(shapes, 100.0), PolygonLayer(shapes, 100.0)
    assert full.prefill(-1200, -1200, 1200, 1200) > 0
    for x in range(-1150, 1150, 70):
        for y in range(-1150, 1150, 70):
            assert lazy.candidates(x, y, x + 30, y + 5) == full.candidates(x, y, x + 30, y + 5)
            assert (lazy.any_covers(x, y) is None) == (full.any_covers(x, y) is None)


def test_polyline_locate_uses_the_hint_and_falls_back():
    line = Polyline([(0, 0), (100, 0), (100, 100), (0, 100)])
    assert line.length == 300
    d, s, k = line.locate(50, 3, hint=0, within=10)
    assert (round(d, 6), round(s, 6), k) == (3, 50, 0)
    d, s, k = line.locate(50, 97, hint=0, within=10)  # far from the hinted segment: shapely answers
    assert (round(d, 6), round(s, 6), k) == (3, 250, 2)
