"""Config errors name the exact field, model-level checks included; polygons that cross themselves
are refused at their path, the same way for camera zones, fleet zones, sites, city bounds and grid cells."""

import json
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError
from gateway.deployment import load_deployment

REPO = Path(__file__).resolve().parent.parent
BOWTIE = "[[0, 0], [100, 100], [100, 0], [0, 100]]"  # edges cross at [50, 50]
GEO_BOWTIE = "[[116.30, 39.90], [116.31, 39.91], [116.31, 39.90], [116.30, 39.91]]"
CROSSES = "the outline crosses itself at"


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(ConfigError) as info:
        load_deployment(path)
    return info.value.problems


def at(found: list[str], path: str) -> str:
    """The one problem reported at exactly `path`."""
    hits = [p for p in found if p.startswith(path + ": ")]
    assert len(hits) == 1, f"expected one problem at {path}, got {found}"
    return hits[0]


def camera(zone_polygon: str, rule_zone: str = "gate") -> str:
    return f"""
video:
  detector: {{model: {REPO / "models" / "yolov8n_int8.onnx"}}}
  cameras:
    - name: cam-01
      url: clip.mp4
      zones:
        - {{name: gate, polygon: [[0, 0], [100, 0], [100, 100]]}}
        - {{name: kerb, polygon: {zone_polygon}}}
      rules:
        - {{name: no-parking, kind: dwell, zone: {rule_zone}, classes: [car], category: illegal_parking}}
"""


def test_a_camera_zone_that_crosses_itself_is_refused_at_its_path(tmp_path):
    line = at(problems(tmp_path, camera(BOWTIE)), "video.cameras[0].zones[1].polygon")
    assert f"zone polygon: {CROSSES} [50, 50]" in line


def test_a_camera_zone_with_no_area_is_refused(tmp_path):
    line = at(problems(tmp_path, camera("[[0, 0], [50, 0], [100, 0]]")), "video.cameras[0].zones[1].polygon")
    assert "encloses no area" in line


def test_fleet_zones_sites_and_city_bounds_that_cross_themselves_are_refused_at_their_paths(tmp_path):
    found = problems(tmp_path, f"""
vehicles:
  fleet:
    zones:
      - {{id: school, polygon: [[116.30, 39.90], [116.31, 39.90], [116.31, 39.91]]}}
      - {{id: market, polygon: {GEO_BOWTIE}}}
    sites:
      - {{id: dump-1, kind: dump, polygon: {GEO_BOWTIE}}}
    city_bounds: {{polygon: {GEO_BOWTIE}}}
""")
    assert f"zone polygon: {CROSSES} [116.305, 39.905]" in at(found, "vehicles.fleet.zones[1].polygon")
    assert f"site polygon: {CROSSES}" in at(found, "vehicles.fleet.sites[0].polygon")
    assert f"city bounds polygon: {CROSSES}" in at(found, "vehicles.fleet.city_bounds.polygon")
    assert not [p for p in found if p.startswith("vehicles.fleet.zones[0]")]


def test_a_grid_cell_that_crosses_itself_is_refused_naming_the_file_and_feature(tmp_path):
    ring = json.loads(GEO_BOWTIE)
    grid = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"grid_code": "11010200100101"},
         "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}}]}
    (tmp_path / "grid.geojson").write_text(json.dumps(grid), encoding="utf-8")
    line = at(problems(tmp_path, "cases: {grid: grid.geojson}\n"), "cases.grid")
    assert f"grid.geojson: features[0].geometry: {CROSSES} [116.305, 39.905]" in line


def test_central_url_is_reported_at_central_url_not_at_central(tmp_path):
    found = problems(tmp_path, "central: {url: 'ftp://city.example/cases'}\n")
    assert found == ["central.url: must start with http:// or https://, got 'ftp://city.example/cases'"]
    found = problems(tmp_path, "central: {url: 'https://city.example/cases', backoff_initial_s: 60, backoff_max_s: 5}\n")
    assert found == ["central.backoff_max_s: must be >= backoff_initial_s"]


@pytest.mark.parametrize(("text", "path"), [
    ("timeseries: {batch_size: 500, buffer_size: 10}\n", "timeseries.buffer_size"),
    ("vehicles:\n  nmea:\n    - {device: '013800000001', host: gnss.local}\n", "vehicles.nmea[0].port"),
    ("vehicles:\n  fleet:\n    vehicles:\n      - {id: T1, terminal: '1', route: nowhere}\n",
     "vehicles.fleet.vehicles[0].route"),
    ("sensors:\n  level_rules:\n    - {name: underpass, warn_at: 30, critical_at: 20}\n",
     "sensors.level_rules[0].critical_at"),
    ("sensors:\n  devices:\n    - {id: wl-1, kind: water_level, lon: 116.3, lat: 39.9}\n  rise_rules:\n    - {devices: [wl-2]}\n",
     "sensors.rise_rules[0].devices"),
])
def test_checks_across_fields_name_the_field_they_judge(tmp_path, text, path):
    at(problems(tmp_path, text), path)


def test_a_rule_naming_an_unknown_zone_is_reported_at_the_rule_zone(tmp_path):
    at(problems(tmp_path, camera("[[0, 0], [10, 0], [10, 10]]", rule_zone="nowhere")), "video.cameras[0].rules[0].zone")


def test_check_prints_the_polygon_problem_and_exits_2(tmp_path, capsys):
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(camera(BOWTIE)), encoding="utf-8")
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert main(["check", str(path)]) == 2
    assert f"video.cameras[0].zones[1].polygon: zone polygon: {CROSSES} [50, 50]" in capsys.readouterr().err
