"""Tiled detection: the model also sees overlapping crops of the frame, each at its full input size.

A YOLO model letterboxes the whole frame to its input (640 px): on a 1280x720 picture a 30 px person
shrinks to 15 px, below what the model finds reliably; top-down cars in a car park are smaller
still. Cutting the frame into a grid of overlapping tiles and detecting on each one enlarges small
objects by the grid factor. The boxes of all tiles (and of the whole frame) are mapped back to frame
pixels and merged: an object that straddles a tile edge is found as a whole box in one tile and as
a part in its neighbour, so merging suppresses both overlapping boxes (IoU) and boxes that lie
mostly inside a larger one of the same class (containment).

Cost: one inference per tile plus the whole frame (2x2 grid: 5 inferences per frame). It is an
option (`detector.tiling`), off by default; bench/detection.py measures what it gains.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from core.model import Detection
from detectors.video.backends import ObjectDetector
from detectors.video.config import TilingConfig


def tile_windows(width: int, height: int, cols: int, rows: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(x1, y1, x2, y2) of a cols x rows grid of tiles covering the frame, neighbours sharing
    `overlap` of a tile's width / height."""

    def spans(length: int, n: int) -> list[tuple[int, int]]:
        if n == 1:
            return [(0, length)]
        size = length / (n - (n - 1) * overlap)  # n tiles with (n - 1) overlaps cover the length
        step = size * (1 - overlap)
        return [(round(i * step), min(length, round(i * step + size))) for i in range(n)]

    return [(x1, y1, x2, y2) for y1, y2 in spans(height, rows) for x1, x2 in spans(width, cols)]


def merge_detections(detections: list[Detection], iou_threshold: float, containment: float) -> list[Detection]:
    """Greedy class-wise merge, best score first. A box is the same object as a kept box of its
    label when one lies at least `containment` inside the other (intersection over the smaller
    area: a part cut at a tile edge and the whole object; the kept box then grows to cover both, so
    a confident half box still ends up with the object's full extent), or when their IoU exceeds
    `iou_threshold` (it is dropped)."""
    if not detections:
        return []
    order = sorted(range(len(detections)), key=lambda i: -detections[i].confidence)
    boxes = np.array([d.box for d in detections], dtype=np.float64)
    kept: list[int] = []
    extent: dict[int, np.ndarray] = {}  # kept index -> its (possibly grown) box
    for i in order:
        b = boxes[i]
        area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
        for k in kept:
            if detections[k].label != detections[i].label:
                continue
            e = extent[k]
            w = min(b[2], e[2]) - max(b[0], e[0])
            h = min(b[3], e[3]) - max(b[1], e[1])
            if w <= 0 or h <= 0:
                continue
            inter = w * h
            area_e = (e[2] - e[0]) * (e[3] - e[1])
            if inter / (min(area_b, area_e) + 1e-9) >= containment:
                extent[k] = np.array([min(b[0], e[0]), min(b[1], e[1]), max(b[2], e[2]), max(b[3], e[3])])
                break
            if inter / (area_b + area_e - inter + 1e-9) > iou_threshold:
                break
        else:
            kept.append(i)
            extent[i] = b.copy()
    return [replace(detections[i], box=tuple(float(v) for v in extent[i])) for i in kept]


class TiledDetector:
    """An ObjectDetector that runs `inner` on the whole frame (optional) and on each tile, then
    merges. Thread-safe when `inner` is (the backends are)."""

    def __init__(self, inner: ObjectDetector, cfg: TilingConfig, iou_threshold: float) -> None:
        self.inner = inner
        self.cfg = cfg
        self.iou = iou_threshold
        self.names = inner.names
        self.path = getattr(inner, "path", None)
        # the picture size worth decoding (patrol decodes JPEGs reduced to about the model's input):
        # each tile should still reach the model at full resolution
        self.size = int(getattr(inner, "size", 640)) * max(cfg.grid)

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        h, w = image_bgr.shape[:2]
        found = list(self.inner.detect(image_bgr)) if self.cfg.full_frame else []
        cols, rows = self.cfg.grid
        for x1, y1, x2, y2 in tile_windows(w, h, cols, rows, self.cfg.overlap):
            # a view, not a copy: letterboxing reads it once
            for d in self.inner.detect(image_bgr[y1:y2, x1:x2]):
                bx1, by1, bx2, by2 = d.box
                found.append(replace(d, box=(bx1 + x1, by1 + y1, bx2 + x1, by2 + y1)))
        return merge_detections(found, self.iou, self.cfg.merge_containment)
