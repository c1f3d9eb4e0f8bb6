"""Reviewed video cases as a labelled data set (YOLO format), for training a city's own model.

Layout written under the output folder::

    classes.txt                      one class name a line; the line number (from 0) is the class id
    confirmed/images/<case_id>.jpg   cases an operator confirmed: the object is real
    confirmed/labels/<case_id>.txt   "<class id> <cx> <cy> <w> <h>", normalised to 0..1
    rejected/images/ ...             cases an operator rejected: the detector's false positives
    rejected/labels/ ...             (the box the detector drew; use them as hard negatives or relabel)

What a video case holds (detectors/video/pipeline.py and rules.py): ``facts.object`` (the label),
``facts.box`` ([x1, y1, x2, y2] in pixels of the source frame) and the evidence ``snapshot.jpg`` (the
whole frame at its size, with the zone, box and caption drawn on it), ``crop.jpg`` and ``clip.avi``.
The image is an evidence item ``frame.jpg`` (the bare source frame) when a case keeps one, else the
snapshot; its size is read from the file. Skipped, and counted by reason: cases without a box or
label, without an image file, whose box does not fit the image, and patrol cases, whose snapshot
is two pictures side by side (``facts.first_seen``). A rerun into the same folder keeps the class
ids of its classes.txt and adds new classes at the end, so labels of earlier exports stay valid.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from gateway.outbox import CaseRecord
from gateway.web.evidence import EvidenceStore, find_item

SPLITS = {"confirmed": "confirmed", "rejected": "rejected"}  # review decision -> folder
IMAGE_NAMES = ("frame.jpg", "snapshot.jpg")  # preferred first


@dataclass
class ExportReport:
    exported: Counter = field(default_factory=Counter)  # per split
    skipped: Counter = field(default_factory=Counter)  # per reason
    classes: list[str] = field(default_factory=list)


def yolo_line(class_id: int, box: Iterable[float], width: int, height: int) -> str:
    """One YOLO label line: class id, centre x, centre y, width, height, each normalised to 0..1."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (f"{class_id} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")


def _box(facts: dict) -> tuple[float, float, float, float] | None:
    box = facts.get("box")
    if not isinstance(box, list | tuple) or len(box) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def export_dataset(records: Iterable[CaseRecord], evidence_root: Path, out: Path) -> ExportReport:
    """Write the reviewed video cases among `records` under `out` (created); see the module doc."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = EvidenceStore(Path(evidence_root))
    classes_file = out / "classes.txt"
    classes = [c for c in classes_file.read_text(encoding="utf-8").splitlines() if c] \
        if classes_file.exists() else []
    ids = {name: i for i, name in enumerate(classes)}
    report = ExportReport()
    for rec in records:
        decision = (rec.review or {}).get("decision")
        case = rec.case
        if decision not in SPLITS or case.get("source") != "video":
            continue
        facts = case.get("facts") or {}
        box, label = _box(facts), facts.get("object")
        if box is None or not isinstance(label, str) or not label:
            report.skipped["no box or label in the facts"] += 1
            continue
        if "first_seen" in facts:
            report.skipped["patrol side-by-side picture"] += 1
            continue
        path = next((p for name in IMAGE_NAMES
                     if (item := find_item(case, name)) is not None and (p := store.locate(item)) is not None), None)
        if path is None:
            report.skipped["no image file"] += 1
            continue
        try:
            with Image.open(path) as img:
                width, height = img.size
        except (OSError, UnidentifiedImageError):
            report.skipped["image unreadable"] += 1
            continue
        if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
            report.skipped["box outside the image"] += 1
            continue
        if label not in ids:
            ids[label] = len(classes)
            classes.append(label)
        split = out / SPLITS[decision]
        (split / "images").mkdir(parents=True, exist_ok=True)
        (split / "labels").mkdir(parents=True, exist_ok=True)
        stem = rec.case_id.replace("/", "_")
        shutil.copyfile(path, split / "images" / f"{stem}{path.suffix.lower() or '.jpg'}")
        (split / "labels" / f"{stem}.txt").write_text(yolo_line(ids[label], box, width, height) + "\n",
                                                      encoding="utf-8")
        report.exported[SPLITS[decision]] += 1
    classes_file.write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    report.classes = classes
    return report
