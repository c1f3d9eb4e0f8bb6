"""Patrol inventory: thousands of rows parsed, every bad row named by row and column; sharding by
camera id is deterministic and splits an inventory into disjoint shares that cover it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.patrol.config import PatrolConfig, PatrolShard
from gateway.patrol.inventory import InventoryError, in_shard, load_inventory, my_share, shard_of

PRESET = {"zones": [{"name": "kerb", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}],
          "rules": [{"name": "parking", "kind": "dwell", "zone": "kerb", "classes": ["car"], "min_seconds": 300,
                     "category": "illegal_parking"}]}


def config(**extra) -> PatrolConfig:
    return PatrolConfig.model_validate({
        "inventory": "cams.csv", "presets": {"street": PRESET, "square": {"rules": []}},
        "groups": {"key": {"interval_s": 120, "auth": "hik"}, "rest": {"interval_s": 600}},
        "credentials": {"hik": {"username": "admin", "password": "pw"},
                        "dahua": {"scheme": "digest", "username": "u", "password": "p"}}} | extra)


def write_csv(path: Path, n: int) -> None:
    lines = ["id,name,url,lon,lat,address,group,preset,auth"]
    for i in range(n):
        group = "key" if i % 4 == 0 else "rest"
        auth = "dahua" if i % 7 == 0 else ""
        lines.append(f"cam-{i:05d},Street {i},http://10.0.{i // 250}.{i % 250}/ISAPI/Streaming/channels/101/picture,"
                     f"116.{i:04d},39.9,\"No. {i}, Main St\",{group},street,{auth}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_csv_with_thousands_of_rows(tmp_path: Path) -> None:
    write_csv(tmp_path / "cams.csv", 5000)
    cams = load_inventory(tmp_path / "cams.csv", config())
    assert len(cams) == 5000
    c0, c7, c1 = cams[4], cams[7], cams[1]
    assert (c0.id, c0.group, c0.preset, c0.address) == ("cam-00004", "key", "street", "No. 4, Main St")
    assert c0.auth is not None and c0.auth.username == "admin"  # the group's credentials
    assert c7.auth is not None and c7.auth.scheme == "digest"  # the row's own credentials win
    assert c1.auth is None and c1.lon == pytest.approx(116.0001) and c1.lat == pytest.approx(39.9)


def test_yaml_inventory(tmp_path: Path) -> None:
    (tmp_path / "cams.yaml").write_text(
        "cameras:\n"
        "  - {id: a1, url: 'rtsp://10.0.0.1/h264', group: key, preset: square}\n"
        "  - {id: a2, name: North gate, url: 'https://10.0.0.2/snap.jpg', lon: 116.1, lat: 39.2, group: rest,"
        " preset: street}\n", encoding="utf-8")
    cams = load_inventory(tmp_path / "cams.yaml", config())
    assert [(c.id, c.name, c.url[:5]) for c in cams] == [("a1", "a1", "rtsp:"), ("a2", "North gate", "https")]


def test_errors_name_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "cams.csv"
    path.write_text(
        "id,url,lon,lat,group,preset\n"
        "ok-1,http://h/1.jpg,116,39,key,street\n"
        "ok-1,http://h/2.jpg,116,39,key,street\n"  # duplicate id
        "bad-lat,http://h/3.jpg,116,north,key,street\n"
        "bad-url,ftp://h/4.jpg,116,39,key,street\n"
        "bad-group,http://h/5.jpg,116,39,side,street\n"
        "bad-preset,http://h/6.jpg,116,99,rest,park\n", encoding="utf-8")
    with pytest.raises(InventoryError) as err:
        load_inventory(path, config())
    problems = err.value.problems
    assert problems[0].startswith("row 2 (line 3), column id: 'ok-1' is used already in row 1")
    assert problems[1].startswith("row 3 (line 4), column lat: not a coordinate")
    assert problems[2].startswith("row 4 (line 5), column url: 'ftp://h/4.jpg' is not an http(s) snapshot URL")
    assert problems[3].startswith("row 5 (line 6), column group: unknown group 'side'")
    assert problems[4].startswith("row 6 (line 7), column lat: not a coordinate: 99.0 is outside -90..90") or \
        problems[4].startswith("row 6 (line 7), column lat: not a coordinate: 99 is outside")
    assert problems[5].startswith("row 6 (line 7), column preset: unknown preset 'park'")
    assert len(problems) == 6


def test_unknown_column_and_too_many_problems(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,url,colour\nx,http://h/x.jpg,red\n", encoding="utf-8")
    with pytest.raises(InventoryError, match=r"line 1, column 'colour': unknown column"):
        load_inventory(tmp_path / "a.csv", config())
    rows = "\n".join(f"c{i},nope" for i in range(500))
    (tmp_path / "b.csv").write_text("id,url,group,preset\n" + rows + "\n", encoding="utf-8")
    with pytest.raises(InventoryError) as err:
        load_inventory(tmp_path / "b.csv", config())
    assert len(err.value.problems) == 50 and str(err.value).rstrip().endswith("... and 1450 more")


def test_preset_checks() -> None:
    with pytest.raises(ValidationError, match="relative coordinates must lie in 0..1"):
        config(presets={"p": {"zones": [{"name": "z", "polygon": [[0, 0], [640, 0], [640, 360]]}]}})
    with pytest.raises(ValidationError, match="line_crossing needs a continuous stream"):
        config(presets={"p": {"rules": [{"name": "r", "kind": "line_crossing", "line": [[0, 0], [1, 1]]}]}})
    pixels = config(presets={"p": {"coordinates": "pixels",
                                   "zones": [{"name": "z", "polygon": [[0, 0], [640, 0], [640, 360]]}]}})
    assert pixels.presets["p"].coordinates == "pixels"
    with pytest.raises(ValidationError, match="shard index 3 must be below count 3"):
        config(shard={"index": 3, "count": 3})
    with pytest.raises(ValidationError, match="unknown credentials 'nope'"):
        config(groups={"g": {"auth": "nope"}})


def test_shards_are_disjoint_and_cover_the_inventory(tmp_path: Path) -> None:
    write_csv(tmp_path / "cams.csv", 3000)
    cams = load_inventory(tmp_path / "cams.csv", config())
    shares = [my_share(cams, PatrolShard(index=i, count=3)) for i in range(3)]
    ids = [{c.id for c in s} for s in shares]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == {c.id for c in cams}
    assert all(800 < len(s) < 1200 for s in shares)  # a fair split, not all on one box
    assert my_share(cams, None) == cams and in_shard("anything", None)


def test_shard_is_the_same_in_another_process() -> None:
    """No dependence on Python's per-process string hash: another box computes the same share."""
    ids = [f"cam-{i}" for i in range(200)]
    here = [shard_of(i, 7) for i in ids]
    code = "from gateway.patrol.inventory import shard_of; print([shard_of(f'cam-{i}', 7) for i in range(200)])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parent.parent, env={"PYTHONHASHSEED": "123"})
    assert there.stdout.strip() == str(here)


def test_deployment_config_with_patrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """video.patrol in a deployment YAML: secrets from the environment, the inventory relative to the
    config file, problems of the inventory and of the presets' catalog keys as `path: sentence`."""
    from gateway.config import ConfigError
    from gateway.deployment import load_deployment

    monkeypatch.setenv("CAM_PASSWORD", "from-env")
    model = Path(__file__).resolve().parent.parent / "models" / "yolov8n_int8.onnx"
    write_csv(tmp_path / "cams.csv", 300)
    (tmp_path / "site.yaml").write_text(f"""
video:
  detector: {{model: {model}}}
  patrol:
    inventory: cams.csv
    presets:
      street:
        zones: [{{name: kerb, polygon: [[0, 0.5], [1, 0.5], [1, 1]]}}]
        rules: [{{name: parking, kind: dwell, zone: kerb, min_seconds: 300, category: ilegal_parking}}]
    groups: {{key: {{interval_s: 120, auth: hik}}, rest: {{interval_s: 600}}}}
    credentials:
      hik: {{username: admin, password: "${{CAM_PASSWORD}}"}}
      dahua: {{scheme: digest, username: u, password: p}}
    shard: {{index: 1, count: 2}}
""", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_deployment(tmp_path / "site.yaml")
    assert err.value.problems == ["video.patrol.presets.street.rules[0].category: 'ilegal_parking' is not in "
                                  "the case catalog (did you mean 'illegal_parking'?)"]
    site = tmp_path / "site.yaml"
    site.write_text(site.read_text(encoding="utf-8").replace("ilegal_parking", "illegal_parking"), encoding="utf-8")
    deployment = load_deployment(site)
    patrol = deployment.config.video.patrol
    assert patrol is not None and patrol.credentials["hik"].password == "from-env"
    mine = deployment.patrol_cameras
    assert 100 < len(mine) < 200 and all(shard_of(c.id, 2) == 1 for c in mine)
    (tmp_path / "cams.csv").write_text("id,url,group\nx,http://h/x.jpg,key\nx,http://h/y.jpg,key\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_deployment(site)
    assert err.value.problems[0].startswith("video.patrol.inventory: row 2 (line 3), column id:")
