"""Config validation: every kind of problem names its path; valid configs pass; `citygate check`."""

import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.deployment import load_deployment

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    (tmp_path / "clip.mp4").write_bytes(b"")  # cameras reference it; existence is all the check needs
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_deployment(write(tmp_path, text))
    return info.value.problems


CAMERA = """
video:
  detector: {model: %s}
  cameras:
    - name: cam-01
      url: clip.mp4
      zones:
        - {name: gate, polygon: [[0, 0], [100, 0], [100, 100]]}
      rules:
        - {name: no-parking, kind: dwell, zone: gate, classes: [car], category: illegal_parking}
""" % (REPO / "models" / "yolov8n_int8.onnx")


def test_minimal_and_camera_configs_are_valid(tmp_path):
    assert load_config(write(tmp_path, "site: edge-07\n")).id == "edge-07"
    config = load_config(write(tmp_path, CAMERA))
    assert config.video.cameras[0].rules[0].category == "illegal_parking"


def test_zone_with_two_points_names_its_path(tmp_path):
    found = problems(tmp_path, CAMERA.replace("[[0, 0], [100, 0], [100, 100]]", "[[0, 0], [100, 0]]"))
    assert any(p.startswith("video.cameras[0].zones[0].polygon: ") and "at least 3 points" in p for p in found)


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    found = problems(tmp_path, CAMERA.replace("detect_fps", "x").replace("url: clip.mp4", "url: clip.mp4\n      detect_fsp: 2"))
    assert "video.cameras[0].detect_fsp: unknown key (did you mean 'detect_fps'?)" in found


def test_wrong_type_and_missing_field(tmp_path):
    found = problems(tmp_path, "central: {timeout_s: soon}\nvideo:\n  cameras:\n    - {url: x.mp4}\n")
    assert any(p.startswith("central.timeout_s: ") for p in found)
    assert "video.cameras[0].name: required, but missing" in found


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    found = problems(tmp_path, "site: 'bad site'\ntimezone: Mars/Olympus\nweb: {port: 99999}\n")
    paths = {p.split(":")[0] for p in found}
    assert {"site", "timezone", "web.port"} <= paths


def test_unknown_catalog_category_is_named(tmp_path):
    found = problems(tmp_path, CAMERA.replace("category: illegal_parking", "category: ilegal_parking"))
    assert any(p.startswith("video.cameras[0].rules[0].category: 'ilegal_parking' is not in the case catalog")
               and "illegal_parking" in p for p in found)


def test_missing_model_and_video_files_are_named(tmp_path):
    text = CAMERA.replace(str(REPO / "models" / "yolov8n_int8.onnx"), "nowhere/model.onnx").replace("clip.mp4", "gone.mp4")
    found = problems(tmp_path, text)
    assert any(p.startswith("video.detector.model: model file") and "nowhere/model.onnx" in p for p in found)
    assert any(p.startswith("video.cameras[0].url: video file") for p in found)


def test_env_interpolation_for_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("CENTRAL_TOKEN", "s3cret")
    text = "central: {url: 'http://127.0.0.1:9/cases', token: '${CENTRAL_TOKEN}'}\nsite: '${SITE:-edge-01}'\n"
    config = load_config(write(tmp_path, text))
    assert config.central.token == "s3cret" and config.site == "edge-01"
    monkeypatch.delenv("CENTRAL_TOKEN")
    assert "central.token: environment variable CENTRAL_TOKEN is not set" in problems(tmp_path, text)


def test_yaml_syntax_error_names_the_line(tmp_path):
    found = problems(tmp_path, "site: demo\nvideo: [\n")
    assert found[0].startswith("line ")


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    config = load_config(write(tmp_path, "data_dir: var/x\n"))
    assert config.data_path == (tmp_path / "var" / "x").resolve()


def test_check_command_exit_codes(tmp_path, capsys):
    good = write(tmp_path, CAMERA)
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "config is valid" in out and "cam-01" in out
    bad = write(tmp_path, "web: {port: -1}\nunknown_section: 1\n")
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "web.port:" in err and "unknown_section: unknown key" in err


@pytest.mark.parametrize("name", ["demo.yaml", "edge-box.yaml", "city-centre.yaml"])
def test_shipped_configs_are_valid(name, monkeypatch):
    monkeypatch.setenv("CITYGATE_CENTRAL_TOKEN", "t")
    monkeypatch.setenv("CITYGATE_INFLUX_TOKEN", "t")
    monkeypatch.setenv("CITYGATE_JT808_SECRET", "t")
    deployment = load_deployment(REPO / "configs" / name)
    assert len(deployment.grid) > 0 and "illegal_parking" in deployment.catalog  # loaded once, used by run


def test_every_config_field_is_documented_and_the_reference_is_current():
    from gateway.config import GatewayConfig
    from gateway.config_reference import render, rows

    undocumented = [path for path, _, _, doc in rows(GatewayConfig) if not doc.strip()]
    assert undocumented == []
    committed = (REPO / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/config-reference.md is stale: run python -m gateway.config_reference"


def test_repeated_names_are_errors(tmp_path):
    doubled = CAMERA.replace(
        "        - {name: gate, polygon: [[0, 0], [100, 0], [100, 100]]}",
        "        - {name: gate, polygon: [[0, 0], [100, 0], [100, 100]]}\n"
        "        - {name: gate, polygon: [[0, 0], [50, 0], [50, 50]]}")
    found = problems(tmp_path, doubled)
    assert any(p.startswith("video.cameras[0].zones: ") and "duplicate zone names ['gate']" in p for p in found)
    two_cameras = CAMERA + "    - {name: cam-01, url: clip.mp4}\n"
    assert "video.cameras[1].name: camera name 'cam-01' is used more than once" in problems(tmp_path, two_cameras)


def test_every_time_zone_field_rejects_an_unknown_zone_the_same_way(tmp_path):
    text = (CAMERA.replace("category: illegal_parking}", "category: illegal_parking,\n"
                           "           schedule: {hours: ['07:00-22:00'], timezone: Asia/Shanghia}}")
            + "timezone: Mars/Olympus\nvehicles:\n  fleet: {timezone: Europe/Atlantis}\n")
    found = problems(tmp_path, text)
    for path, zone in (("timezone", "Mars/Olympus"), ("vehicles.fleet.timezone", "Europe/Atlantis"),
                       ("video.cameras[0].rules[0].schedule.timezone", "Asia/Shanghia")):
        assert f"{path}: unknown time zone {zone!r}; use an IANA name like Asia/Shanghai" in found


def test_section_time_zones_inherit_the_top_level_one(tmp_path):
    text = CAMERA.replace("category: illegal_parking}", "category: illegal_parking, schedule: {hours: ['07:00-19:00']}}")
    config = load_config(write(tmp_path, "timezone: Asia/Urumqi\n" + text))
    assert config.vehicles.fleet.timezone == "Asia/Urumqi"
    assert config.video.cameras[0].rules[0].schedule.timezone == "Asia/Urumqi"
    set_here = text.replace("hours: ['07:00-19:00']", "hours: ['07:00-19:00'], timezone: Asia/Tokyo")
    config = load_config(write(tmp_path, "timezone: Asia/Urumqi\nvehicles: {fleet: {timezone: UTC}}\n" + set_here))
    assert config.vehicles.fleet.timezone == "UTC"
    assert config.video.cameras[0].rules[0].schedule.timezone == "Asia/Tokyo"
