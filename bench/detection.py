"""Detection benchmark: do the configured rules open the cases that are really there?

    python bench/detection.py                               # every labelled clip of the project
    python bench/detection.py --config C --camera NAME [--clip FILE] LABELS.yaml
    python bench/detection.py --compare                     # both shipped models, with and without tiles

For each label file (format: gateway/detection_labels.py; `tests/fixtures/video/*.labels.yaml` and,
when the checkout has it, `../shared/samples/video/*.labels.yaml`) the camera's zones and rules run
over the clip in video time (gateway/camera_replay.replay_camera, the `citygate replay` runner), and
the cases they open are matched with the labelled ones by rule, zone and time window. Printed: per
rule precision and recall, the missed and the false cases, then the model on the labelled frames
(count-level agreement: per frame min(found, labelled) right, the surplus false, the shortfall
missed; detections above the detector's conf_threshold) with its milliseconds per frame.

`--backend/--model/--tiling` override the config's detector (e.g. to judge tiles on one's own
footage). `--compare` runs the labels with each shipped model, whole frame and 2x2 tiles.

The last line is machine-readable:
    precision=<p> recall=<r> cases=<n> expected=<n>
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detectors.video.backends import ModelError, load_detector  # noqa: E402
from detectors.video.config import CameraConfig, DetectorConfig, TilingConfig  # noqa: E402
from gateway.config import ConfigError  # noqa: E402
from gateway.deployment import load_deployment  # noqa: E402
from gateway.detection_labels import (  # noqa: E402
    CountScore,
    FoundCase,
    LabelError,
    Labels,
    Score,
    load_labels,
    score_cases,
)

START = datetime(2026, 1, 5, 2, 0, tzinfo=UTC)  # the wall time a clip's first frame is taken to show
LABEL_DIRS = (ROOT / "tests" / "fixtures" / "video", ROOT.parent / "shared" / "samples" / "video")
SHIPPED = (("onnxruntime", "models/yolov8n_int8.onnx"), ("openvino", "models/yolo11n_int8_openvino_model"))


class TimedDetector:
    """Counts the model's calls and their time, so the bench can state ms per analysed frame."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.names = inner.names
        self.calls = 0
        self.seconds = 0.0

    def detect(self, image):
        t0 = time.perf_counter()
        try:
            return self.inner.detect(image)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1

    @property
    def ms_per_frame(self) -> float:
        return 1000 * self.seconds / self.calls if self.calls else 0.0


@dataclass
class ClipResult:
    labels: Labels
    camera: str
    rules: dict[str, Score]
    counts: CountScore
    ms_per_frame: float
    frames: int
    notes: list[str] = field(default_factory=list)


def frames_at(clip: Path, seconds: list[float]) -> dict[float, np.ndarray]:
    """The first frame at or after each requested video second."""
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video file {clip}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    wanted = sorted(set(seconds))
    out: dict[float, np.ndarray] = {}
    i = 0
    try:
        while wanted:
            ok, image = cap.read()
            if not ok:
                break
            while wanted and i / fps >= wanted[0] - 1e-6:
                out[wanted.pop(0)] = image
            i += 1
    finally:
        cap.release()
    missing = [t for t in seconds if t not in out]
    if missing:
        raise ValueError(f"{clip}: no frame at {missing} s (the clip is shorter)")
    return out


def count_frames(labels: Labels, camera: CameraConfig, detector, clip: Path) -> list[tuple[str, int, list]]:
    """For each labelled count: (class group, labelled n, the detections of that group in its zone)."""
    zones = {z.name: Polygon(z.polygon) for z in camera.zones}
    if not labels.counts:
        return []
    images = frames_at(clip, [c.t for c in labels.counts])
    found_at = {t: detector.detect(image) for t, image in images.items()}
    out = []
    for i, c in enumerate(labels.counts):
        if c.zone is not None and c.zone not in zones:
            raise LabelError(f"{labels.path}: counts[{i}].zone: {c.zone!r} is not a zone of camera "
                             f"{camera.name!r} (zones: {sorted(zones)})")
        area = zones.get(c.zone) if c.zone else None
        found = [d for d in found_at[c.t] if d.label in c.classes
                 and (area is None or shapely.intersects_xy(area, *d.foot))]
        out.append(("/".join(c.classes), c.n, found))
    return out


def score_counts(labels: Labels, camera: CameraConfig, detector, clip: Path) -> CountScore:
    score = CountScore()
    for _, n, found in count_frames(labels, camera, detector, clip):
        score.add(len(found), n)
    return score


def run_clip(labels: Labels, config_path: Path, camera_name: str, clip: Path, detector_cfg: DetectorConfig | None,
             progress: bool = False) -> ClipResult:
    from detectors.video.pipeline import CameraPipeline
    from gateway.camera_replay import replay_camera

    deployment = load_deployment(config_path)
    config = deployment.config
    cameras = {c.name: c for c in config.video.cameras}
    if camera_name not in cameras:
        raise LabelError(f"{labels.path}: camera: no camera named {camera_name!r} in {config_path} "
                         f"(cameras: {', '.join(cameras) or 'none'})")
    camera = cameras[camera_name]
    known = {(r.name, r.zone) for r in camera.rules}
    for i, e in enumerate(labels.cases):
        if (e.rule, e.zone) not in known:
            raise LabelError(f"{labels.path}: cases[{i}]: camera {camera_name!r} has no rule {e.rule!r} on zone "
                             f"{e.zone!r} (rules: {sorted(f'{r}@{z}' for r, z in known)})")
    cfg = detector_cfg or config.video.detector
    model = Path(cfg.model) if detector_cfg is not None else config.path(cfg.model)
    detector = TimedDetector(load_detector(cfg, model if model.is_absolute() else ROOT / model))
    pipeline = CameraPipeline(camera, detector, timezone=config.tz)
    alerts = replay_camera(camera, detector, clip, progress=progress, start=START, pipeline=pipeline)
    alerts += pipeline.flush()
    found = [FoundCase(a.rule, a.place, (a.time - START).total_seconds()) for a in alerts if a.state == "open"]
    rules = score_cases(labels.cases, found)
    for r in camera.rules:  # a rule with no case expected and none found is scored too: 1/1
        rules.setdefault(r.name, Score())
    frames = detector.calls
    ms = detector.ms_per_frame
    counts = score_counts(labels, camera, detector, clip)
    return ClipResult(labels, camera_name, rules, counts, ms, frames)


def label_files(given: list[Path]) -> list[Path]:
    if given:
        return given
    return [p for d in LABEL_DIRS if d.is_dir() for p in sorted(d.glob("*.labels.yaml"))]


def detector_override(args: argparse.Namespace, base: DetectorConfig | None) -> DetectorConfig | None:
    if args.backend is None and args.model is None and args.tiling is None:
        return None
    data = (base or DetectorConfig()).model_dump()
    if args.backend:
        data["backend"] = args.backend
    if args.model:
        data["model"] = str(Path(args.model).resolve())
    if args.tiling is not None:
        data["tiling"] = TilingConfig(enabled=args.tiling != (1, 1), grid=args.tiling).model_dump()
    return DetectorConfig.model_validate(data)


def _grid(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected COLSxROWS such as 2x2 (1x1: no tiles), got {text!r}") from exc
    return cols, rows


def run_all(files: list[Path], args: argparse.Namespace, detector_cfg_for) -> list[ClipResult]:
    results = []
    for path in files:
        labels = load_labels(path)
        config = Path(args.config) if args.config else labels.config
        camera = args.camera or labels.camera
        clip = Path(args.clip) if args.clip else labels.clip
        for what, value in (("config", config), ("camera", camera), ("clip", clip)):
            if value is None:
                raise LabelError(f"{path}: {what}: not set in the label file nor given with --{what}")
        base = load_deployment(config).config.video.detector
        results.append(run_clip(labels, Path(config), camera, Path(clip), detector_cfg_for(base),
                                progress=args.progress))
    return results


def print_results(results: list[ClipResult], verbose: bool = True) -> tuple[Score, CountScore, float]:
    total, counts = Score(), CountScore()
    print(f"{'clip':<34} {'camera':<9} {'rule':<14} {'expected':>8} {'cases':>6} {'right':>6} "
          f"{'precision':>9} {'recall':>7}")
    calls = ms = 0.0
    for res in results:
        for rule, s in sorted(res.rules.items()):
            print(f"{res.labels.path.name.removesuffix('.labels.yaml'):<34} {res.camera:<9} {rule:<14} "
                  f"{s.expected:>8} {s.found:>6} {s.right:>6} {s.precision:>9.3f} {s.recall:>7.3f}")
            if verbose:
                for e in s.missed:
                    print(f"    missed: {e.zone or '-'} {e.from_s:g}-{e.to_s:g} s  {e.note}")
                for f in s.false:
                    print(f"    false:  {f.zone or '-'} at {f.t:.1f} s")
            total.add(s)
        c = res.counts
        counts.right += c.right
        counts.false += c.false
        counts.missed += c.missed
        counts.frames += c.frames
        calls += res.frames
        ms += res.ms_per_frame * res.frames
    ms_per_frame = ms / calls if calls else 0.0
    print(f"objects, {counts.frames} labelled counts (count-level): precision {counts.precision:.3f} "
          f"recall {counts.recall:.3f}, {counts.false_per_frame:.2f} false per frame; "
          f"model {ms_per_frame:.1f} ms per analysed frame")
    return total, counts, ms_per_frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labels", nargs="*", type=Path, help="label YAML files (default: every *.labels.yaml of "
                        "tests/fixtures/video and ../shared/samples/video)")
    parser.add_argument("--config", help="deployment config (default: the label file's `config`)")
    parser.add_argument("--camera", help="camera in that config (default: the label file's `camera`)")
    parser.add_argument("--clip", help="video file (default: the label file's `clip`)")
    parser.add_argument("--backend", choices=["onnxruntime", "openvino", "ultralytics"], help="override the detector")
    parser.add_argument("--model", help="override the model file")
    parser.add_argument("--tiling", type=_grid, help="detect on COLSxROWS tiles too, e.g. 2x2 (1x1: off)")
    parser.add_argument("--compare", action="store_true", help="each shipped model, whole frame and 2x2 tiles")
    parser.add_argument("--progress", action="store_true", help="a progress bar per clip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    files = label_files(args.labels)
    if not files:
        print("no label files found", file=sys.stderr)
        return 2
    print(f"label files: {', '.join(str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f) for f in files)}")
    try:
        if args.compare:
            compare(files, args)
        results = run_all(files, args, lambda base: detector_override(args, base))
    except (LabelError, ConfigError, ModelError, FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    total, _, _ = print_results(results)
    print(f"precision={total.precision:.3f} recall={total.recall:.3f} cases={total.found} expected={total.expected}")
    return 0


def compare(files: list[Path], args: argparse.Namespace) -> None:
    rows = []
    for backend, model in SHIPPED:
        for grid in ((1, 1), (2, 2)):
            def cfg_for(base: DetectorConfig, backend=backend, model=model, grid=grid) -> DetectorConfig:
                data = base.model_dump()
                data.update(backend=backend, model=str(ROOT / model),
                            tiling=TilingConfig(enabled=grid != (1, 1), grid=grid).model_dump())
                return DetectorConfig.model_validate(data)

            print(f"--- {backend} {Path(model).name} tiles {grid[0]}x{grid[1]}")
            total, counts, ms = print_results(run_all(files, args, cfg_for), verbose=False)
            rows.append((f"{backend} {Path(model).name}", f"{grid[0]}x{grid[1]}", total, counts, ms))
    print(f"\n{'model':<44} {'tiles':<5} {'case P':>6} {'case R':>6} {'obj P':>6} {'obj R':>6} "
          f"{'false/frame':>11} {'ms/frame':>8}")
    for name, grid, total, counts, ms in rows:
        print(f"{name:<44} {grid:<5} {total.precision:>6.3f} {total.recall:>6.3f} {counts.precision:>6.3f} "
              f"{counts.recall:>6.3f} {counts.false_per_frame:>11.2f} {ms:>8.1f}")
    sweep(files, args)
    print(f"--- configured detector{' (with overrides)' if args.backend or args.model or args.tiling else ''}")


SWEEP = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6)
FALSE_PER_FRAME = 0.1  # the stated false-positive rate the models are compared at


def sweep(files: list[Path], args: argparse.Namespace) -> None:
    """Object recall of each shipped model, per class group, over score thresholds; and the best
    recall at no more than FALSE_PER_FRAME false objects per labelled frame."""
    print(f"\nobjects on labelled frames by score threshold (count-level; best recall at <= {FALSE_PER_FRAME} "
          "false per frame marked *)")
    for backend, model in SHIPPED:
        for grid in ((1, 1), (2, 2)):
            cfg = DetectorConfig(backend=backend, model=str(ROOT / model), conf_threshold=min(SWEEP),
                                 tiling=TilingConfig(enabled=grid != (1, 1), grid=grid))
            detector = load_detector(cfg, ROOT / model)
            rows: list[tuple[str, int, list]] = []
            for path in files:
                labels = load_labels(path)
                config = load_deployment(Path(args.config) if args.config else labels.config).config
                camera = {c.name: c for c in config.video.cameras}[args.camera or labels.camera]
                rows += count_frames(labels, camera, detector, Path(args.clip) if args.clip else labels.clip)
            for group in sorted({g for g, _, _ in rows}):
                scores = []
                for t in SWEEP:
                    s = CountScore()
                    for g, n, found in rows:
                        if g == group:
                            s.add(sum(1 for d in found if d.confidence >= t), n)
                    scores.append(s)
                ok = [i for i, s in enumerate(scores) if s.false_per_frame <= FALSE_PER_FRAME]
                best = max(ok, key=lambda i: (scores[i].recall, -i)) if ok else None
                cells = " ".join(f"{t:.2f}:{s.recall:.2f}/{s.false_per_frame:.2f}{'*' if i == best else ' '}"
                                 for i, (t, s) in enumerate(zip(SWEEP, scores, strict=True)))
                print(f"{backend:<11} {grid[0]}x{grid[1]} {group:<20} recall/false-per-frame {cells}")


if __name__ == "__main__":
    sys.exit(main())
