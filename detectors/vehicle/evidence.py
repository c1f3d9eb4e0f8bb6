"""Evidence for vehicle cases: the track excerpt as GeoJSON and a small PNG map of track + places.

Rendered only when an alert opens (a few milliseconds), never on the hot path. The map is drawn
in the fleet's local metric plane, north up, with a scale bar.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from PIL import Image, ImageDraw
from shapely.geometry.base import BaseGeometry

from core.fonts import font
from core.model import Evidence

from .geometry import LocalPlane

TrackPoint = tuple[float, float, float, float]  # epoch seconds, lon, lat, speed km/h (WGS-84)

_COLOURS = {
    "zone": ((230, 80, 80), (250, 215, 215)),
    "route": ((60, 150, 60), (215, 240, 215)),
    "site": ((70, 110, 200), (215, 225, 250)),
    "road": ((150, 110, 40), (240, 230, 210)),
}
_OTHER = ((120, 120, 120), (230, 230, 230))
_WHITE, _BLACK, _TRACK, _RED = (255, 255, 255), (0, 0, 0), (30, 60, 200), (220, 0, 0)
# a palette image encodes ~10x faster than RGB (one byte a pixel): the map has a dozen colours
_PALETTE = [_WHITE, _BLACK, _TRACK, _RED, *_OTHER, *(c for pair in _COLOURS.values() for c in pair)]
_INDEX = {c: i for i, c in enumerate(_PALETTE)}
_PALETTE_BYTES = [v for c in _PALETTE for v in c] + [0] * (3 * (256 - len(_PALETTE)))


@dataclass(frozen=True, slots=True)
class Place:
    """A place drawn on the evidence: its WGS-84 coordinates (for GeoJSON) and metric shape (for the map)."""

    id: str
    kind: str  # zone | route | site | road
    name: str
    wgs84: tuple[tuple[float, float], ...]  # ring (polygon) or line
    is_line: bool
    shape_xy: BaseGeometry  # metric polygon (a corridor for routes)


def track_geojson(track: Sequence[TrackPoint], places: Sequence[Place], point: tuple[float, float],
                  props: dict) -> bytes:
    """FeatureCollection: the track line, its fixes with times and speeds, the places, the violation point."""
    feats: list[dict] = []
    if len(track) >= 2:
        feats.append({"type": "Feature", "properties": {"role": "track"},
                      "geometry": {"type": "LineString", "coordinates": [[p[1], p[2]] for p in track]}})
    for t, lon, lat, v in track:
        feats.append({"type": "Feature",
                      "properties": {"role": "fix", "time": datetime.fromtimestamp(t, UTC).isoformat(),
                                     "speed_kmh": round(v, 1)},
                      "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    for pl in places:
        coords = [list(c) for c in pl.wgs84]
        geom = ({"type": "LineString", "coordinates": coords} if pl.is_line
                else {"type": "Polygon", "coordinates": [coords + [coords[0]]]})
        feats.append({"type": "Feature", "properties": {"role": pl.kind, "id": pl.id, "name": pl.name},
                      "geometry": geom})
    feats.append({"type": "Feature", "properties": {"role": "violation", **props},
                  "geometry": {"type": "Point", "coordinates": [point[0], point[1]]}})
    return json.dumps({"type": "FeatureCollection", "features": feats}, ensure_ascii=False).encode()


def _nice_scale(metres: float) -> float:
    """A round scale-bar length of at most `metres`."""
    if metres <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(metres))
    for m in (5, 2, 1):
        if m * exp <= metres:
            return m * exp
    return exp


def map_png(plane: LocalPlane, track: Sequence[TrackPoint], places: Sequence[Place],
            point: tuple[float, float], size: tuple[int, int] = (480, 360)) -> bytes:
    w, h = size
    xy = [plane.xy(p[1], p[2]) for p in track]
    px, py = plane.xy(*point)
    xs = [x for x, _ in xy] + [px]
    ys = [y for _, y in xy] + [py]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    span = max(x1 - x0, y1 - y0, 200.0)  # show at least 200 m around the track
    # include the places, but not so much that the track shrinks to a dot
    for pl in places:
        bx0, by0, bx1, by1 = pl.shape_xy.bounds
        x0, y0 = max(min(x0, bx0), px - 3 * span), max(min(y0, by0), py - 3 * span)
        x1, y1 = min(max(x1, bx1), px + 3 * span), min(max(y1, by1), py + 3 * span)
    pad = 0.08 * max(x1 - x0, y1 - y0, 200.0)
    x0, x1, y0, y1 = x0 - pad, x1 + pad, y0 - pad, y1 + pad
    scale = min((w - 20) / max(x1 - x0, 1.0), (h - 40) / max(y1 - y0, 1.0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2

    def pix(x: float, y: float) -> tuple[float, float]:
        return w / 2 + (x - cx) * scale, (h - 20) / 2 - (y - cy) * scale

    img = Image.new("P", (w, h), _INDEX[_WHITE])
    img.putpalette(_PALETTE_BYTES)
    d = ImageDraw.Draw(img)
    d.font = font(13)  # a CJK font: zone, route and site names are often Chinese
    ix = _INDEX.__getitem__
    for pl in places:
        edge, fill = (ix(c) for c in _COLOURS.get(pl.kind, _OTHER))
        for g in getattr(pl.shape_xy, "geoms", [pl.shape_xy]):
            ring = getattr(g, "exterior", None)
            if ring is not None:
                d.polygon([pix(x, y) for x, y in ring.coords], fill=fill, outline=edge)
        label_x, label_y = pix(*pl.shape_xy.representative_point().coords[0])
        d.text((label_x, label_y), pl.name or pl.id, fill=edge)
    if len(xy) >= 2:
        d.line([pix(x, y) for x, y in xy], fill=ix(_TRACK), width=2)
    for x, y in xy:
        qx, qy = pix(x, y)
        d.ellipse((qx - 2, qy - 2, qx + 2, qy + 2), fill=ix(_TRACK))
    qx, qy = pix(px, py)
    d.ellipse((qx - 6, qy - 6, qx + 6, qy + 6), outline=ix(_RED), width=3)
    # scale bar (bottom left) and north arrow (top right)
    bar_m = _nice_scale((w / 4) / scale)
    bar_px = bar_m * scale
    d.line((10, h - 12, 10 + bar_px, h - 12), fill=ix(_BLACK), width=3)
    d.text((14 + bar_px, h - 20), f"{bar_m:g} m" if bar_m < 1000 else f"{bar_m / 1000:g} km", fill=ix(_BLACK))
    d.line((w - 15, 30, w - 15, 10), fill=ix(_BLACK), width=2)
    d.text((w - 19, 32), "N", fill=ix(_BLACK))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def build(plane: LocalPlane, track: Sequence[TrackPoint], places: Sequence[Place],
          point: tuple[float, float], props: dict) -> tuple[Evidence, ...]:
    return (
        Evidence("track.geojson", "application/geo+json", track_geojson(track, places, point, props)),
        Evidence("map.png", "image/png", map_png(plane, track, places, point)),
    )
