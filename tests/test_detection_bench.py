"""The detection benchmark: label files, case and count scoring, tiled detection, and the bench end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.model import Detection
from detectors.video.backends import load_detector
from detectors.video.config import DetectorConfig, TilingConfig
from detectors.video.tiling import TiledDetector, merge_detections, tile_windows
from gateway.detection_labels import CountScore, ExpectedCase, FoundCase, LabelError, load_labels, score_cases

ROOT = Path(__file__).resolve().parent.parent
VIDEO = ROOT / "tests" / "fixtures" / "video"


# ---------------------------------------------------------------- label files


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clip.labels.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_committed_label_files_load_with_paths_beside_them():
    labels = load_labels(VIDEO / "pedestrians_480x360_10fps.labels.yaml")
    assert labels.clip == VIDEO / "pedestrians_480x360_10fps.mp4" and labels.clip.exists()
    assert labels.config is not None and labels.config.resolve() == ROOT / "bench" / "detection.yaml"
    assert labels.camera == "street"
    assert [c.rule for c in labels.cases] == ["kerb-parking", "kerb-parking", "road-crowd"]
    for other in ("carpark_static_640x360_25fps", "pedestrians_quiet_480x360_10fps"):
        other_labels = load_labels(VIDEO / f"{other}.labels.yaml")
        assert other_labels.cases and other_labels.clip.exists()


def test_a_bad_field_is_named_with_the_file(tmp_path):
    path = write(tmp_path, "cases:\n  - {rule: parking, zone: kerb, from_s: 10, to_s: 5}\n")
    with pytest.raises(LabelError) as err:
        load_labels(path)
    assert str(path) in str(err.value) and "cases[0].to_s" in str(err.value) and "before from_s" in str(err.value)


def test_a_missing_field_and_an_unknown_key_are_named(tmp_path):
    path = write(tmp_path, "cases:\n  - {rule: parking, to_s: 5}\ncounts:\n  - {t: 1, classes: [car], n: 2, zonee: x}\n")
    with pytest.raises(LabelError) as err:
        load_labels(path)
    text = str(err.value)
    assert f"{path}: cases[0].from_s: Field required" in text
    assert f"{path}: counts[0].zonee: Extra inputs are not permitted" in text


def test_unreadable_and_non_mapping_files_are_named(tmp_path):
    with pytest.raises(LabelError, match="nope.yaml: cannot read"):
        load_labels(tmp_path / "nope.yaml")
    with pytest.raises(LabelError, match="clip.labels.yaml: a label file is a mapping"):
        load_labels(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(LabelError, match="clip.labels.yaml: not valid YAML"):
        load_labels(write(tmp_path, "cases: [\n"))


# ---------------------------------------------------------------- scoring


def case(rule="parking", zone="kerb", a=0.0, b=10.0):
    return ExpectedCase(rule=rule, zone=zone, from_s=a, to_s=b)


def test_precision_and_recall_per_rule():
    expected = [case(), case(), case("crowd", "road", 3, 15)]
    found = [FoundCase("parking", "kerb", 6.0), FoundCase("parking", "kerb", 7.0),
             FoundCase("parking", "kerb", 8.0),  # a third case for two vehicles: false
             FoundCase("crowd", "road", 1.0)]  # before its window: false, and the crowd is missed
    scores = score_cases(expected, found)
    parking, crowd = scores["parking"], scores["crowd"]
    assert (parking.right, parking.found, parking.expected) == (2, 3, 2)
    assert parking.precision == pytest.approx(2 / 3) and parking.recall == 1.0
    assert (crowd.right, crowd.found, crowd.expected) == (0, 1, 1)
    assert crowd.precision == 0.0 and crowd.recall == 0.0
    assert crowd.missed == [expected[2]] and crowd.false == [found[3]]


def test_zone_and_window_must_both_match():
    expected = [case(a=0, b=5), case(a=20, b=30)]
    found = [FoundCase("parking", "other", 2.0), FoundCase("parking", "kerb", 25.0), FoundCase("parking", "kerb", 12.0)]
    s = score_cases(expected, found)["parking"]
    assert (s.right, s.found, s.expected) == (1, 3, 2)
    assert [f.t for f in s.false] == [2.0, 12.0] and s.missed == [expected[0]]


def test_an_unexpected_rule_counts_its_cases_as_false_and_nothing_is_vacuously_perfect():
    s = score_cases([], [FoundCase("litter", None, 1.0)])["litter"]
    assert (s.precision, s.recall) == (0.0, 1.0)
    empty = score_cases([case()], [])["parking"]
    assert (empty.precision, empty.recall) == (1.0, 0.0)


def test_overlapping_windows_match_the_earliest_ending_first():
    expected = [case(a=0, b=100), case(a=0, b=10)]
    s = score_cases(expected, [FoundCase("parking", "kerb", 5.0), FoundCase("parking", "kerb", 50.0)])["parking"]
    assert s.right == 2 and not s.missed and not s.false


def test_count_agreement():
    c = CountScore()
    c.add(found=5, n=7)  # 5 right, 2 missed
    c.add(found=4, n=3)  # 3 right, 1 false
    assert (c.right, c.false, c.missed, c.frames) == (8, 1, 2, 2)
    assert c.precision == pytest.approx(8 / 9) and c.recall == pytest.approx(8 / 10)
    assert c.false_per_frame == 0.5


# ---------------------------------------------------------------- tiling


def det(box, label="person", conf=0.9):
    return Detection(label=label, class_id=0, confidence=conf, box=box)


def test_tiles_cover_the_frame_with_the_stated_overlap():
    tiles = tile_windows(1280, 720, 2, 2, 0.2)
    assert len(tiles) == 4
    assert min(t[0] for t in tiles) == 0 and max(t[2] for t in tiles) == 1280
    assert min(t[1] for t in tiles) == 0 and max(t[3] for t in tiles) == 720
    (ax1, _, ax2, _), (bx1, *_) = tiles[0], tiles[1]
    assert (ax2 - bx1) / (ax2 - ax1) == pytest.approx(0.2, abs=0.01)
    assert tile_windows(640, 360, 1, 1, 0.2) == [(0, 0, 640, 360)]


def test_merge_keeps_one_box_per_object_across_tiles():
    whole = det((100, 100, 140, 200), conf=0.8)
    same_from_next_tile = det((101, 99, 141, 201), conf=0.7)  # IoU ~0.95
    cut_at_tile_edge = det((100, 100, 125, 200), conf=0.85)  # the left 60 %, wholly inside the whole box
    other_class = det((100, 100, 140, 200), label="bicycle", conf=0.6)
    neighbour = det((150, 100, 190, 200), conf=0.5)
    kept = merge_detections([whole, same_from_next_tile, cut_at_tile_edge, other_class, neighbour], 0.45, 0.7)
    people = [d for d in kept if d.label == "person"]
    assert len(kept) == 3 and other_class in kept
    # the half box had the best score; it stands for the object with the whole box's extent
    best = max(people, key=lambda d: d.confidence)
    assert best.confidence == 0.85 and best.box == (100.0, 99.0, 141.0, 201.0)
    assert neighbour in kept


class Recorder:
    """A model that reports one box in the middle of whatever picture it is given."""

    names = {0: "person"}

    def __init__(self):
        self.shapes = []

    def detect(self, image):
        self.shapes.append(image.shape[:2])
        h, w = image.shape[:2]
        return [det((w / 2 - 5, h / 2 - 10, w / 2 + 5, h / 2 + 10))]


def test_tiled_detector_maps_tile_boxes_back_to_frame_pixels():
    inner = Recorder()
    tiled = TiledDetector(inner, TilingConfig(enabled=True, grid=(2, 1), overlap=0.0, full_frame=True), 0.45)
    found = tiled.detect(np.zeros((100, 200, 3), np.uint8))
    assert inner.shapes == [(100, 200), (100, 100), (100, 100)]
    # the whole frame's box (centre 100, 50) and each tile's (centres 50 and 150), in frame pixels
    assert sorted(round((d.box[0] + d.box[2]) / 2) for d in found) == [50, 100, 150]


def test_load_detector_wraps_the_model_only_when_tiling_is_on():
    model = ROOT / "models" / "yolov8n_int8.onnx"
    plain = load_detector(DetectorConfig(model=str(model), threads=1), model)
    assert not isinstance(plain, TiledDetector)
    tiled = load_detector(DetectorConfig(model=str(model), threads=1, tiling={"enabled": True}), model)
    assert isinstance(tiled, TiledDetector) and tiled.names == plain.names


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize(("clip", "expected"), [
    ("pedestrians_480x360_10fps", 3),  # two vehicles at the kerb and a crowd
    ("pedestrians_quiet_480x360_10fps", 2),  # the same vehicles; never 5 people for 3 s: no crowd case
])
def test_bench_on_a_committed_street_clip_finds_what_was_measured(clip, expected):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "detection.py"), str(VIDEO / f"{clip}.labels.yaml")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, check=True).stdout
    summary = out.strip().splitlines()[-1]
    fields = dict(part.split("=") for part in summary.split())
    assert list(fields) == ["precision", "recall", "cases", "expected"]
    assert int(fields["expected"]) == expected
    # floors at what the shipped default measured: every labelled case found, none false
    assert float(fields["recall"]) >= 1.0 and float(fields["precision"]) >= 1.0
    assert "kerb-parking" in out and "road-crowd" in out


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "detection.py"), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_bench_names_the_label_file_and_field_that_do_not_fit_the_camera(tmp_path):
    bad = tmp_path / "kerb.labels.yaml"
    bad.write_text(f"clip: {VIDEO / 'pedestrians_480x360_10fps.mp4'}\nconfig: {ROOT / 'bench' / 'detection.yaml'}\n"
                   "camera: street\ncases:\n  - {rule: kerb-parking, zone: plaza, from_s: 0, to_s: 5}\n")
    res = run_bench(str(bad))
    assert res.returncode == 2
    assert f"{bad}: cases[0]: camera 'street' has no rule 'kerb-parking' on zone 'plaza'" in res.stderr
    res = run_bench("--camera", "nope", str(bad))
    assert res.returncode == 2 and f"{bad}: camera: no camera named 'nope'" in res.stderr


def test_bench_says_which_setting_is_missing(tmp_path):
    bare = tmp_path / "kerb.labels.yaml"
    bare.write_text("cases: []\n")
    res = run_bench(str(bare))
    assert res.returncode == 2 and f"{bare}: config: not set in the label file nor given with --config" in res.stderr


def test_citygate_bench_detection_passes_its_arguments_on(tmp_path):
    bare = tmp_path / "kerb.labels.yaml"
    bare.write_text("cases: []\n")
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "detection", "--camera", "street", str(bare)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2 and f"{bare}: config: not set" in res.stderr
