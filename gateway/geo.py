"""Unit grid (单元网格) lookup: a WGS-84 point → the grid cell with its street and community.

The city's grid layer is a GeoJSON FeatureCollection of polygons whose properties carry
`grid_code` (14 digits: 6 administrative division + 3 street + 3 community + 2 cell),
`street` and `community`. Lookups use a shapely STRtree so that thousands of cells stay fast.
A point on an edge shared by several cells belongs to the one with the smallest grid code, so
the answer never depends on the order of the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import shapely
from shapely.geometry import Point, shape
from shapely.strtree import STRtree

from core.schema import polygon_problem


class GridError(ValueError):
    """The grid layer cannot be used; the message names the file and the feature."""


@dataclass(frozen=True, slots=True)
class GridCell:
    grid_code: str
    street: str = ""
    community: str = ""

    def as_location(self) -> dict[str, str]:
        return {"grid_code": self.grid_code, "street": self.street, "community": self.community}


class GridIndex:
    def __init__(self, cells: list[GridCell], polygons: list) -> None:
        if len(cells) != len(polygons):
            raise ValueError("cells and polygons differ in length")
        self._cells = cells
        self._polygons = polygons
        for polygon in polygons:
            shapely.prepare(polygon)
        self._tree = STRtree(polygons) if polygons else None

    def __len__(self) -> int:
        return len(self._cells)

    @classmethod
    def empty(cls) -> GridIndex:
        return cls([], [])

    @classmethod
    def from_geojson(cls, data: dict, source: str = "grid") -> GridIndex:
        if data.get("type") != "FeatureCollection":
            raise GridError(f"{source}: expected a GeoJSON FeatureCollection, got {data.get('type')!r}")
        cells, polygons = [], []
        for i, feature in enumerate(data.get("features", [])):
            where = f"{source}: features[{i}]"
            props = feature.get("properties") or {}
            code = str(props.get("grid_code", "")).strip()
            if not code:
                raise GridError(f"{where}.properties.grid_code: missing")
            try:
                geometry = shape(feature["geometry"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise GridError(f"{where}.geometry: not a valid GeoJSON geometry ({exc})") from exc
            if geometry.geom_type not in ("Polygon", "MultiPolygon"):
                raise GridError(f"{where}.geometry: must be a Polygon, got {geometry.geom_type}")
            problem = polygon_problem(geometry)
            if problem is not None:
                raise GridError(f"{where}.geometry: {problem}")
            cells.append(GridCell(code, str(props.get("street", "")), str(props.get("community", ""))))
            polygons.append(geometry)
        return cls(cells, polygons)

    @classmethod
    def load(cls, path: Path) -> GridIndex:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise GridError(f"{path}: grid file not found") from exc
        except json.JSONDecodeError as exc:
            raise GridError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_geojson(data, str(path))

    def lookup(self, lon: float, lat: float) -> GridCell | None:
        """The cell containing (lon, lat), edges included; None outside the grid."""
        if self._tree is None:
            return None
        point = Point(lon, lat)
        hits = self._tree.query(point, predicate="intersects")
        if len(hits) == 0:
            return None
        return min((self._cells[i] for i in hits), key=lambda cell: cell.grid_code)
