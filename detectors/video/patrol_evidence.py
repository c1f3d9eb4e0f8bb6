"""Evidence of a patrol case: the first and the latest picture of the object, each with its box and
the zone, side by side in one JPEG, plus a clean crop from the latest picture.

Drawn only when the case desk files a new case (through `Alert.render_evidence`), from the JPEG
bytes the visits brought back, so the per-visit path never decodes a full picture for evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import cv2
import numpy as np

from core.model import Detection, Evidence
from detectors.video.evidence import _encode, crop, render_snapshot

GAP_PX = 8  # dark bar between the two pictures


@dataclass(frozen=True, slots=True)
class Shot:
    """One picture of the object: the visit's JPEG, the object's box in it, and when it was taken."""

    jpeg: bytes
    detection: Detection
    when: datetime


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("a kept picture is not a decodable JPEG")
    return image


def _annotated(shot: Shot, zone: Sequence[Sequence[float]] | None, track_id: int | None, camera: str,
               caption: str) -> np.ndarray:
    snap = render_snapshot(_decode(shot.jpeg), shot.detection, zone, shot.detection.label, track_id, shot.when,
                           f"{camera}  {caption}", quality=95)
    return _decode(snap)


def side_by_side(first: Shot | None, latest: Shot, zone: Sequence[Sequence[float]] | None, track_id: int | None,
                 camera: str, quality: int = 85) -> bytes:
    """JPEG: first picture (left) and latest (right), same height; the latest alone without a first."""
    right = _annotated(latest, zone, track_id, camera, "latest")
    if first is None:
        return _encode(right, quality)
    left = _annotated(first, zone, track_id, camera, "first")
    h = min(left.shape[0], right.shape[0])
    left, right = (cv2.resize(img, (round(img.shape[1] * h / img.shape[0]), h)) if img.shape[0] != h else img
                   for img in (left, right))
    gap = np.zeros((h, GAP_PX, 3), dtype=np.uint8)
    return _encode(np.hstack([left, gap, right]), quality)


def patrol_evidence(first: Shot | None, latest: Shot, zone: Sequence[Sequence[float]] | None,
                    track_id: int | None, camera: str, quality: int, with_crop: bool) -> tuple[Evidence, ...]:
    items = [Evidence("snapshot.jpg", "image/jpeg", side_by_side(first, latest, zone, track_id, camera, quality))]
    if with_crop:
        items.append(Evidence("crop.jpg", "image/jpeg", crop(_decode(latest.jpeg), latest.detection.box, quality)))
    return tuple(items)
