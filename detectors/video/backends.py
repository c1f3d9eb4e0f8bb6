"""Object detector backends behind one interface: ONNX Runtime (default), OpenVINO, ultralytics.

ONNX Runtime and OpenVINO run a YOLO detection head exported without NMS (output 1 x (4+nc) x N:
cx, cy, w, h in input pixels, then one score per class) and share the letterbox pre-processing
and the numpy NMS here. Every backend checks its model when it is loaded, so a missing or wrong
file is an error at start-up, never at the first frame.
"""

from __future__ import annotations

import ast
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from core.model import Detection
from detectors.video.config import DetectorConfig

log = logging.getLogger(__name__)

PAD_VALUE = 114  # grey padding, as the YOLO models were trained with


class ModelError(RuntimeError):
    """The model cannot be used: missing, unreadable, or not a YOLO detection model."""


class ObjectDetector(Protocol):
    """What the pipeline needs of a model. `detect` may be called from several threads at once."""

    names: dict[int, str]

    def detect(self, image_bgr: np.ndarray) -> list[Detection]: ...


# ---------------------------------------------------------------- shared pre/post-processing


def letterbox(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio, pad to size x size; return the NCHW float32 RGB [0, 1] blob,
    the scale and the (x, y) padding needed to map boxes back."""
    h, w = image_bgr.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    resized = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else image_bgr
    px, py = (size - nw) / 2, (size - nh) / 2
    top, left = round(py - 0.1), round(px - 0.1)
    padded = cv2.copyMakeBorder(resized, top, size - nh - top, left, size - nw - left,
                                cv2.BORDER_CONSTANT, value=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    # one C++ pass: scale to [0, 1], BGR -> RGB, HWC -> NCHW
    blob = cv2.dnn.blobFromImage(padded, scalefactor=1 / 255.0, swapRB=True)
    return blob, r, (left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-max suppression; boxes (N, 4) xyxy. Returns kept indices, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


class YoloDecoder:
    """Turns the raw (1, 4+nc, N) YOLO output into Detections in original-image pixels."""

    def __init__(self, names: dict[int, str], cfg: DetectorConfig) -> None:
        self.names = {i: cfg.class_map.get(n, n) for i, n in names.items()}
        self.conf = cfg.conf_threshold
        self.iou = cfg.iou_threshold
        self.keep_ids: np.ndarray | None = None
        if cfg.classes is not None:
            unknown = sorted(set(cfg.classes) - set(self.names.values()))
            if unknown:
                raise ModelError(f"detector.classes {unknown} are not classes of the model "
                                 f"(it has: {sorted(set(self.names.values()))})")
            self.keep_ids = np.array([i for i, n in self.names.items() if n in cfg.classes], dtype=np.int64)

    def decode(self, out: np.ndarray, scale: float, pad: tuple[float, float],
               shape: tuple[int, int]) -> list[Detection]:
        pred = out[0]  # (4+nc, N)
        cls_scores = pred[4:]
        if self.keep_ids is not None:
            cls_scores = cls_scores[self.keep_ids]
        score = cls_scores.max(axis=0)
        sel = score > self.conf
        if not sel.any():
            return []
        best, score = cls_scores[:, sel].argmax(axis=0), score[sel]
        cls = self.keep_ids[best] if self.keep_ids is not None else best
        cx, cy, w, h = pred[:4, sel]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        boxes -= np.array([pad[0], pad[1], pad[0], pad[1]], dtype=boxes.dtype)
        boxes /= scale
        ih, iw = shape
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, iw)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, ih)
        # class-wise NMS in one pass: shift each class's boxes to its own region of the plane
        offset = cls[:, None].astype(boxes.dtype) * (max(iw, ih) + 1.0)
        keep = nms(boxes + offset, score, self.iou)
        return [
            Detection(label=self.names.get(int(cls[k]), str(int(cls[k]))), class_id=int(cls[k]),
                      confidence=float(score[k]), box=tuple(float(v) for v in boxes[k]))
            for k in keep
        ]


def _parse_names(raw: Any, where: Path) -> dict[int, str]:
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as exc:
            raise ModelError(f"{where}: class names in the metadata are not a dict: {exc}") from exc
    if isinstance(raw, list):
        raw = dict(enumerate(raw))
    if not isinstance(raw, dict) or not raw:
        raise ModelError(f"{where}: no class names in the model's metadata")
    return {int(k): str(v) for k, v in raw.items()}


def _check_output(shape: Any, nc: int, where: Path) -> None:
    dims = list(shape)
    if len(dims) != 3 or (isinstance(dims[1], int) and dims[1] != 4 + nc):
        raise ModelError(f"{where}: output shape {dims} is not a YOLO detection head (1, 4+{nc}, N) "
                         "exported without NMS")


def _input_size(shape: Any, cfg: DetectorConfig, where: Path) -> int:
    dims = list(shape)
    if len(dims) != 4 or dims[1] not in (3, "3"):
        raise ModelError(f"{where}: input shape {dims} is not an image batch (N, 3, H, W)")
    h, w = dims[2], dims[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0:
        if h != w:
            raise ModelError(f"{where}: non-square input {h}x{w} is not supported")
        if h != cfg.input_size:
            log.warning("%s: model input is fixed at %d px; detector.input_size %d ignored", where, h, cfg.input_size)
        return h
    return cfg.input_size


def _require_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_file() and not os.access(path, os.R_OK):
        raise ModelError(f"model file not readable: {path}")


# ---------------------------------------------------------------- ONNX Runtime


class OnnxRuntimeDetector:
    def __init__(self, cfg: DetectorConfig, model_path: Path) -> None:
        import onnxruntime as ort

        _require_file(model_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between runs: on a small edge box the cores are shared with video decoding
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelError(f"cannot load ONNX model {model_path}: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if "names" not in meta:
            raise ModelError(f"{model_path}: no 'names' in the ONNX metadata; export it with ultralytics")
        self.decoder = YoloDecoder(_parse_names(meta["names"], model_path), cfg)
        self.names = self.decoder.names
        inp = self.session.get_inputs()[0]
        self.size = _input_size(inp.shape, cfg, model_path)
        _check_output(self.session.get_outputs()[0].shape, len(self.names), model_path)
        self.input_name = inp.name
        self.path = model_path

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        blob, scale, pad = letterbox(image_bgr, self.size)
        out = self.session.run(None, {self.input_name: blob})[0]
        return self.decoder.decode(out, scale, pad, image_bgr.shape[:2])


# ---------------------------------------------------------------- OpenVINO


def _openvino_xml(path: Path) -> Path:
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise ModelError(f"{path}: expected one OpenVINO .xml in the folder, found {len(xmls)}")
        return xmls[0]
    if path.suffix != ".xml":
        raise ModelError(f"{path}: the openvino backend needs an .xml model (or its folder)")
    return path


def _openvino_names(xml: Path, model: Any) -> dict[int, str]:
    meta = xml.parent / "metadata.yaml"
    if meta.exists():
        import yaml

        try:
            data = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ModelError(f"{meta}: unreadable metadata: {exc}") from exc
        return _parse_names(data.get("names"), meta)
    try:  # ultralytics also stores the names in the IR's runtime info
        return _parse_names(model.get_rt_info(["model_info", "names"]).astype(str), xml)
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"{xml}: no class names (no metadata.yaml beside it, none in the IR)") from exc


def _dims(shape: Any) -> list[int | str]:
    """An OpenVINO partial shape as a list; dynamic dimensions become '?'."""
    return [d.get_length() if d.is_static else "?" for d in shape]


class OpenVinoDetector:
    def __init__(self, cfg: DetectorConfig, model_path: Path) -> None:
        # `import openvino` also imports its model converter, which sends usage telemetry to the
        # internet from a thread unless a consent file says no. A gateway must not phone home and
        # needs only the runtime: block the converter (openvino tolerates its absence).
        sys.modules.setdefault("openvino.tools.ovc", None)  # type: ignore[arg-type]
        import openvino as ov

        _require_file(model_path)
        xml = _openvino_xml(model_path)
        _require_file(xml)
        _require_file(xml.with_suffix(".bin"))
        core = ov.Core()
        try:
            model = core.read_model(str(xml))
            self.compiled = core.compile_model(
                model, "CPU", {"INFERENCE_NUM_THREADS": cfg.threads, "PERFORMANCE_HINT": "LATENCY"})
        except RuntimeError as exc:
            raise ModelError(f"cannot load OpenVINO model {xml}: {exc}") from exc
        self.decoder = YoloDecoder(_openvino_names(xml, model), cfg)
        self.names = self.decoder.names
        self.size = _input_size(_dims(model.inputs[0].get_partial_shape()), cfg, xml)
        _check_output(_dims(model.outputs[0].get_partial_shape()), len(self.names), xml)
        self._local = threading.local()  # an infer request serves one thread at a time
        self.path = xml

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        blob, scale, pad = letterbox(image_bgr, self.size)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        out = request.infer({0: blob})[self.compiled.output(0)]
        return self.decoder.decode(out, scale, pad, image_bgr.shape[:2])


# ---------------------------------------------------------------- ultralytics (optional extra)


class UltralyticsDetector:
    def __init__(self, cfg: DetectorConfig, model_path: Path) -> None:
        _require_file(model_path)
        # never reach out to the internet: no settings sync, no asset downloads
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_VERBOSE", "False")
        try:
            from ultralytics import YOLO
        except ImportError as exc:
            raise ModelError("the ultralytics backend is not installed: pip install citygate[ultralytics] "
                             f"(or use backend: onnxruntime / openvino) — model {model_path}") from exc
        try:
            self.model = YOLO(str(model_path), task="detect")
        except Exception as exc:  # ultralytics raises many types for bad files
            raise ModelError(f"cannot load model {model_path} with ultralytics: {exc}") from exc
        names = self.model.names
        self.names = {int(i): cfg.class_map.get(n, n) for i, n in dict(names).items()}
        self.cfg = cfg
        self.class_ids = None
        if cfg.classes is not None:
            unknown = sorted(set(cfg.classes) - set(self.names.values()))
            if unknown:
                raise ModelError(f"detector.classes {unknown} are not classes of the model {model_path}")
            self.class_ids = [i for i, n in self.names.items() if n in cfg.classes]
        self.path = model_path
        self._lock = threading.Lock()  # ultralytics predictors are not thread-safe

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        with self._lock:
            res = self.model.predict(image_bgr, imgsz=self.cfg.input_size, conf=self.cfg.conf_threshold,
                                     iou=self.cfg.iou_threshold, classes=self.class_ids, verbose=False)[0]
        b = res.boxes
        xyxy, conf, cls = b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy().astype(int)
        return [Detection(label=self.names.get(int(c), str(c)), class_id=int(c), confidence=float(s),
                          box=tuple(float(v) for v in box)) for box, s, c in zip(xyxy, conf, cls, strict=True)]


_BACKENDS = {"onnxruntime": OnnxRuntimeDetector, "openvino": OpenVinoDetector, "ultralytics": UltralyticsDetector}


def load_detector(cfg: DetectorConfig, model_path: Path) -> ObjectDetector:
    """Load and check the model now; raises ModelError naming the path if it cannot be used."""
    path = Path(model_path)
    if not path.is_absolute():
        log.warning("model path %s is relative; resolving against the working directory", path)
        path = path.resolve()
    det = _BACKENDS[cfg.backend](cfg, path)
    log.info("loaded %s model %s (%d classes)", cfg.backend, path, len(det.names))
    if cfg.tiling.enabled:
        from detectors.video.tiling import TiledDetector  # imports this module: load it only when used

        return TiledDetector(det, cfg.tiling, cfg.iou_threshold)
    return det
