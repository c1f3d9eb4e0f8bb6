"""Grid lookup: inside, on an edge, on a shared corner and outside the demo grid."""

from pathlib import Path

import pytest

from gateway.geo import GridError, GridIndex

GRID = Path(__file__).resolve().parent.parent / "gateway" / "data" / "demo_grid.geojson"


@pytest.fixture(scope="module")
def grid() -> GridIndex:
    return GridIndex.load(GRID)


def test_point_inside_a_cell_gets_its_code_street_and_community(grid):
    cell = grid.lookup(116.3925, 39.9025)  # middle of the south-west cell
    assert cell is not None
    assert cell.grid_code == "11010100100101"
    assert cell.street == "东华门街道"
    assert cell.community


def test_point_in_north_east_cell(grid):
    cell = grid.lookup(116.4075, 39.9175)
    assert cell is not None and cell.grid_code.endswith("16")
    assert cell.street == "景山街道"


def test_point_on_outer_edge_belongs_to_the_grid(grid):
    cell = grid.lookup(116.390, 39.9025)  # on the western boundary
    assert cell is not None and cell.grid_code == "11010100100101"


def test_point_on_shared_edge_is_deterministic_lowest_code(grid):
    cell = grid.lookup(116.395, 39.9025)  # edge between cells 01 and 02
    assert cell is not None and cell.grid_code == "11010100100101"
    corner = grid.lookup(116.395, 39.905)  # corner shared by four cells
    assert corner is not None and corner.grid_code == "11010100100101"


def test_point_outside_the_grid_is_none(grid):
    assert grid.lookup(116.50, 39.95) is None
    assert grid.lookup(0.0, 0.0) is None


def test_bad_grid_files_name_the_feature(tmp_path):
    bad = tmp_path / "grid.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},'
                   ' "geometry": {"type": "Point", "coordinates": [1, 2]}}]}')
    with pytest.raises(GridError, match=r"features\[0\]\.properties\.grid_code: missing"):
        GridIndex.load(bad)
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"grid_code": "1"},'
                   ' "geometry": {"type": "Point", "coordinates": [1, 2]}}]}')
    with pytest.raises(GridError, match=r"features\[0\]\.geometry: must be a Polygon"):
        GridIndex.load(bad)
    with pytest.raises(GridError, match="not found"):
        GridIndex.load(tmp_path / "missing.geojson")
