"""The real models on a real photo (Ultralytics' bus.jpg), through each CPU backend."""

from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from detectors.video.backends import ModelError, letterbox, load_detector, nms
from detectors.video.config import DetectorConfig

REPO = Path(__file__).resolve().parent.parent
ONNX = REPO / "models" / "yolov8n_int8.onnx"
OPENVINO = REPO / "models" / "yolo11n_int8_openvino_model"
BUS = Path(__file__).parent / "fixtures" / "images" / "bus.jpg"


@pytest.fixture(scope="module")
def bus() -> np.ndarray:
    img = cv2.imread(str(BUS))
    assert img is not None, BUS
    return img


@pytest.fixture(scope="module")
def onnx_detector():
    return load_detector(DetectorConfig(), ONNX)


def _confident(dets, min_conf=0.5) -> Counter:
    return Counter(d.label for d in dets if d.confidence >= min_conf)


def test_onnxruntime_finds_the_persons_and_the_bus(onnx_detector, bus):
    dets = onnx_detector.detect(bus)
    labels = _confident(dets)
    assert labels["person"] >= 3
    assert labels["bus"] == 1
    assert onnx_detector.names[0] == "person" and len(onnx_detector.names) == 80
    h, w = bus.shape[:2]
    bus_box = next(d.box for d in dets if d.label == "bus")
    # boxes are in original-image pixels: the bus spans nearly the whole 810 px width
    assert bus_box[2] - bus_box[0] > 0.8 * w
    assert all(0 <= d.box[0] < d.box[2] <= w and 0 <= d.box[1] < d.box[3] <= h for d in dets)


@pytest.fixture(scope="module")
def openvino_detector():
    return load_detector(DetectorConfig(backend="openvino", model=str(OPENVINO)), OPENVINO)


def test_openvino_gives_the_same_labels(onnx_detector, openvino_detector, bus):
    assert _confident(openvino_detector.detect(bus)) == _confident(onnx_detector.detect(bus))
    assert openvino_detector.names == onnx_detector.names


@pytest.mark.parametrize("which", ["onnx_detector", "openvino_detector"])
def test_one_detector_serves_several_camera_threads(which, request, bus):
    detector = request.getfixturevalue(which)
    expected = _confident(detector.detect(bus))
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: _confident(detector.detect(bus)), range(6)))
    assert results == [expected] * 6


def test_classes_filter_and_class_map(bus):
    det = load_detector(DetectorConfig(classes=["coach"], class_map={"bus": "coach"}), ONNX)
    found = det.detect(bus)
    assert [d.label for d in found] == ["coach"]
    assert found[0].class_id == 5


def test_unknown_class_in_filter_is_a_load_error():
    with pytest.raises(ModelError, match="lorry"):
        load_detector(DetectorConfig(classes=["lorry"]), ONNX)


def test_missing_model_is_an_error_at_load_naming_the_path(tmp_path):
    missing = tmp_path / "nope" / "model.onnx"
    for backend in ("onnxruntime", "openvino", "ultralytics"):
        with pytest.raises(ModelError, match=str(missing).replace("\\", "\\\\")):
            load_detector(DetectorConfig(backend=backend), missing)


def test_unreadable_model_is_an_error_at_load(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="junk.onnx"):
        load_detector(DetectorConfig(), junk)
    with pytest.raises(ModelError, match=r"\.xml"):
        load_detector(DetectorConfig(backend="openvino"), junk)


def test_ultralytics_backend_without_the_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as on the lean edge install: import fails
    with pytest.raises(ModelError, match=r"pip install citygate\[ultralytics\]"):
        load_detector(DetectorConfig(backend="ultralytics"), ONNX)


def test_letterbox_keeps_aspect_and_pads_grey():
    img = np.full((100, 200, 3), 255, np.uint8)
    blob, scale, (px, py) = letterbox(img, 64)
    assert blob.shape == (1, 3, 64, 64) and blob.dtype == np.float32
    assert scale == pytest.approx(0.32) and px == 0 and py == 16
    assert blob[0, :, 0, 0] == pytest.approx(114 / 255)  # padding
    assert blob[0, :, 32, 32] == pytest.approx(1.0)  # image


def test_nms_drops_overlaps_keeps_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.45).tolist() == [0, 2]
