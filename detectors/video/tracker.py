"""A small ByteTrack-style multi-object tracker in numpy.

Two-stage association as in ByteTrack: confident detections are matched first against every
track (live or lost); the remaining, less confident ones may then only continue live tracks, so
a briefly occluded object keeps its id without low scores starting new tracks. Matching is
greedy on IoU against each track's predicted box (a damped constant-velocity guess).

Everything is time-based, not frame-based, because the detect rate varies: motion gating can skip
inference for many seconds, and a parked car must still find its own track afterwards. Tracks
are matched regardless of class (detectors flip car/truck on the same vehicle) and report the
label most often seen.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass, field, replace

import numpy as np

from core.model import Detection


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) against every box in b (M, 4), xyxy."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (ix2 - ix1).clip(0) * (iy2 - iy1).clip(0)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def greedy_match(iou: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Pairs (row, col) taken best IoU first, each row and column at most once."""
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    rows, cols = np.nonzero(iou >= min_iou)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return pairs


@dataclass
class Track:
    track_id: int
    box: np.ndarray  # last matched box, xyxy
    last_t: float
    first_t: float
    hits: int = 1
    missed: int = 0  # updates since the last match (0: matched in the previous update)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # px/s of each box edge
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=30))
    labels: Counter[str] = field(default_factory=Counter)
    class_ids: dict[str, int] = field(default_factory=dict)

    def predict(self, t: float, horizon_s: float) -> np.ndarray:
        dt = min(max(t - self.last_t, 0.0), horizon_s)  # never extrapolate far into a gap
        return self.box + self.velocity * dt

    @property
    def label(self) -> str:
        return self.labels.most_common(1)[0][0]

    @property
    def median_score(self) -> float:
        return statistics.median(self.scores) if self.scores else 0.0


class Tracker:
    def __init__(self, max_age_s: float = 30.0, high_score: float = 0.4, new_track_score: float = 0.4,
                 match_iou: float = 0.2, low_match_iou: float = 0.4, min_hits: int = 2,
                 predict_horizon_s: float = 1.0) -> None:
        self.max_age_s = max_age_s  # a track unseen this long is dropped
        self.high_score = high_score  # first-stage detections
        self.new_track_score = new_track_score  # an unmatched detection starts a track from this score
        self.match_iou = match_iou
        self.low_match_iou = low_match_iou  # low-score detections need a closer match
        self.min_hits = min_hits  # a track is reported once it has been matched this often
        self.predict_horizon_s = predict_horizon_s
        self.tracks: list[Track] = []
        self._next_id = 1

    def __len__(self) -> int:
        return len(self.tracks)

    def get(self, track_id: int) -> Track | None:
        return next((tr for tr in self.tracks if tr.track_id == track_id), None)

    def median_score(self, track_id: int) -> float:
        tr = self.get(track_id)
        return tr.median_score if tr else 0.0

    def update(self, detections: list[Detection], t: float) -> list[Detection]:
        """Associate this frame's detections (taken at time t, in seconds) with the tracks; return the
        detections of confirmed tracks with track_id set and the track's voted label."""
        self.tracks = [tr for tr in self.tracks if t - tr.last_t <= self.max_age_s]
        boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        scores = np.array([d.confidence for d in detections], dtype=np.float64)
        preds = np.array([tr.predict(t, self.predict_horizon_s) for tr in self.tracks]).reshape(-1, 4)
        live = np.array([tr.missed == 0 for tr in self.tracks], dtype=bool)

        high = np.nonzero(scores >= self.high_score)[0]
        low = np.nonzero(scores < self.high_score)[0]
        matched: dict[int, int] = {}  # detection index -> track index

        # stage 1: confident detections against every track
        for r, c in greedy_match(iou_matrix(boxes[high], preds), self.match_iou):
            matched[int(high[r])] = c
        # stage 2: doubtful detections only continue tracks matched in the previous update (ByteTrack's
        # "tracked" state; counted in updates, not seconds, so a gating gap does not turn it off)
        free = [i for i in range(len(self.tracks)) if i not in matched.values() and live[i]]
        for r, c in greedy_match(iou_matrix(boxes[low], preds[free]), self.low_match_iou):
            matched[int(low[r])] = free[c]

        hit = set(matched.values())
        for i, tr in enumerate(self.tracks):
            if i not in hit:
                tr.missed += 1
        out: list[Detection] = []
        for di, det in enumerate(detections):
            if di in matched:
                tr = self.tracks[matched[di]]
                self._advance(tr, det, t)
            elif det.confidence >= self.new_track_score:
                tr = Track(self._next_id, np.asarray(det.box, dtype=np.float64), last_t=t, first_t=t)
                self._next_id += 1
                tr.scores.append(det.confidence)
                tr.labels[det.label] += 1
                tr.class_ids[det.label] = det.class_id
                self.tracks.append(tr)
            else:
                continue
            if tr.hits >= self.min_hits:
                label = tr.label
                out.append(replace(det, label=label, class_id=tr.class_ids[label], track_id=tr.track_id))
        return out

    @staticmethod
    def _advance(tr: Track, det: Detection, t: float) -> None:
        box = np.asarray(det.box, dtype=np.float64)
        dt = t - tr.last_t
        if 0 < dt <= 2.0:  # velocity from close frames only; after a long gap it means nothing
            tr.velocity = 0.5 * tr.velocity + 0.5 * (box - tr.box) / dt
        elif dt > 2.0:
            tr.velocity = np.zeros(4)
        tr.box = box
        tr.last_t = t
        tr.hits += 1
        tr.missed = 0
        tr.scores.append(det.confidence)
        tr.labels[det.label] += 1
        tr.class_ids[det.label] = det.class_id
