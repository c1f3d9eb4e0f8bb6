"""The fast pure-Python polygon tests and the cell cache agree with shapely."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, Point, Polygon

from detectors.vehicle.geometry import PolygonLayer, Polyline, Shape, _crosses, _inside

coord = st.floats(min_value=-200, max_value=200, allow_nan=False)


@st.composite
def star_polygon(draw):
    """A simple (star-shaped) polygon around a random centre, 3-12 vertices, some concave."""
    n = draw(st.integers(3, 12))
    cx, cy = draw(coord), draw(coord)
    radii = draw(st.lists(st.floats(5, 100), min_size=n, max_size=n))
    return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))
            for k, r in enumerate(radii)]


@settings(max_examples=300, deadline=None)
@given(star_polygon(), coord, coord, coord, coord)
def test_point_and_segment_tests_match_shapely(ring, x0, y0, x1, y1):
    poly = Polygon(ring)
    if poly.exterior.distance(Point(x1, y1)) > 1e-6:  # the boundary itself is a matter of rounding
        assert _inside(tuple(ring), x1, y1) == poly.contains(Point(x1, y1))
    seg = LineString([(x0, y0), (x1, y1)])
    if seg.length > 0 and not 0 < poly.exterior.distance(seg) <= 1e-6:  # skip near-tangent grazes
        ours = _inside(tuple(ring), x1, y1) or _crosses(tuple(ring), x0, y0, x1, y1)
        assert ours == poly.intersects(seg)


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
            assert (lazy.any_contains(x, y) is None) == (full.any_contains(x, y) is None)


def test_polyline_locate_uses_the_hint_and_falls_back():
    line = Polyline([(0, 0), (100, 0), (100, 100), (0, 100)])
    assert line.length == 300
    d, s, k = line.locate(50, 3, hint=0, within=10)
    assert (round(d, 6), round(s, 6), k) == (3, 50, 0)
    d, s, k = line.locate(50, 97, hint=0, within=10)  # far from the hinted segment: shapely answers
    assert (round(d, 6), round(s, 6), k) == (3, 250, 2)
