"""Config sections of the video analysis: the detector, and per camera its zones, rules and evidence.

Coordinates are pixels of the source frame (x right, y down). Relative model paths are resolved by
the caller against the config file's directory; the backends receive an absolute path.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.schema import FieldError, StrictModel, TimeZoneName, repeated, valid_polygon
from detectors.vehicle.config import VehicleType

Point = tuple[float, float]

_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class TilingConfig(StrictModel):
    """Run the model on overlapping tiles too, so that small and distant objects reach it at a size it
    was trained on (a 30 px person on a 720p frame is 15 px after letterboxing to 640)."""

    enabled: bool = Field(False, description="Detect on tiles as well as on the whole frame (costs one "
                          "inference per tile more; see README, Detection quality).")
    grid: tuple[int, int] = Field((2, 2), description="Tiles across and down, [cols, rows]; each tile is "
                                  "resized to the model's input like a whole frame.")
    overlap: float = Field(0.2, ge=0.0, lt=0.5, description="Share of a tile that overlaps its neighbour, so "
                           "an object cut by one tile's edge lies whole in the next.")
    full_frame: bool = Field(True, description="Also detect on the whole frame (large objects that no tile "
                             "holds whole).")
    merge_containment: float = Field(0.7, gt=0.0, le=1.0, description="Two boxes of one class are one object "
                                     "when the smaller lies this much inside the larger (a half box at a tile "
                                     "edge), or when their IoU exceeds detector.iou_threshold.")

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not (1 <= v[0] <= 8 and 1 <= v[1] <= 8):
            raise ValueError(f"grid is [cols, rows], each 1 to 8, got {list(v)}")
        return v


class DetectorConfig(StrictModel):
    backend: Literal["onnxruntime", "openvino", "ultralytics"] = Field(
        "onnxruntime",
        description="Inference runtime: onnxruntime (default, CPU), openvino (fastest on Intel CPUs) "
        "or ultralytics (optional extra `citygate[ultralytics]`; also .pt / TensorRT engines).",
    )
    model: str = Field(
        "models/yolov8n_int8.onnx",
        description="Model file (.onnx, OpenVINO .xml or its folder, .pt/.engine for ultralytics); "
        "relative to the config file's directory.",
    )
    input_size: int = Field(640, ge=32, description="Square network input size in pixels (a model "
                            "with a fixed input size uses its own).")
    conf_threshold: float = Field(0.25, ge=0.0, le=1.0, description="Minimum class score a detection needs.")
    iou_threshold: float = Field(0.45, gt=0.0, le=1.0, description="IoU above which non-max suppression "
                                 "drops the weaker of two boxes of one class.")
    classes: list[str] | None = Field(None, description="Labels to keep (after class_map); None keeps all.")
    threads: int = Field(2, ge=1, description="CPU threads for one inference.")
    class_map: dict[str, str] = Field(
        default_factory=dict,
        description="Rename model class names, e.g. {'motorcycle': 'motorbike'}; a city's own model's "
        "classes are named in its metadata and mapped to catalog entries by the rules.",
    )
    tiling: TilingConfig = Field(default_factory=TilingConfig, description="Tiled detection for small, "
                                 "distant objects (off by default).")


class MotionConfig(StrictModel):
    enabled: bool = Field(True, description="Skip inference while nothing in the picture changes.")
    threshold: float = Field(0.002, ge=0.0, le=1.0, description="Fraction of changed pixels (on the "
                             "downscaled grey frame) that counts as motion.")
    pixel_delta: int = Field(25, ge=1, le=255, description="Grey-level difference that counts a pixel as changed.")
    downscale_width: int = Field(160, ge=16, description="Width the frame is shrunk to before the comparison.")
    recheck_s: float = Field(10.0, gt=0.0, description="Run inference at least this often while objects are "
                             "tracked or cases are open, so that a parked car keeps its track.")


class ZoneConfig(StrictModel):
    name: str = Field(description="Zone name; used as the alert's place.")
    polygon: list[Point] = Field(description="Polygon [[x, y], ...] in source-frame pixels, ≥ 3 points.")
    mask: bool = Field(False, description="True: a privacy / ignore mask: detections whose foot point lies "
                       "here are dropped before tracking.")

    @field_validator("polygon")
    @classmethod
    def _three_points(cls, v: list[Point]) -> list[Point]:
        if len(v) < 3:
            raise ValueError(f"a zone polygon needs at least 3 points, got {len(v)}")
        return valid_polygon(v, "zone polygon")


class ScheduleConfig(StrictModel):
    """When a rule is active. Day and time are both read from the local time in `timezone`."""

    days: list[int] = Field(default_factory=lambda: list(range(7)),
                            description="Weekdays the rule is active, Monday=0 ... Sunday=6.")
    hours: list[str] = Field(default_factory=list, description="Windows 'HH:MM-HH:MM' (local); one that "
                             "ends before it starts runs over midnight, e.g. '22:00-06:00'. Empty: all day.")
    timezone: TimeZoneName = Field("Asia/Shanghai", description="IANA time zone the days and hours are in; default: the top-level `timezone`.")

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[int]) -> list[int]:
        bad = [d for d in v if not 0 <= d <= 6]
        if bad:
            raise ValueError(f"days are 0 (Monday) to 6 (Sunday), got {bad}")
        return v

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: list[str]) -> list[str]:
        for w in v:
            if not _HOURS.match(w.strip()):
                raise ValueError(f"hour window {w!r} is not 'HH:MM-HH:MM'")
        return v


RuleKind = Literal["dwell", "presence", "count", "class_presence", "line_crossing"]


class VideoRuleConfig(StrictModel):
    """One rule of one camera.

    - dwell: an object stays within `max_motion_px` of where it stopped, in the zone, ≥ min_seconds.
    - presence: an object is in the zone (moving or not) ≥ min_seconds while the schedule is active.
    - count: ≥ min_count objects are in the zone for ≥ min_seconds (one case per zone, not per object).
    - class_presence: like presence, for a city's own model; `class_categories` maps each label to
      its catalog entry (e.g. garbage → exposed_garbage, ad → illegal_ad).
    - line_crossing: an object's foot point crosses `line` in `direction`.

    Line direction convention: the line is directed from its first point A to its second point B;
    "left" and "right" are as seen standing on A looking at B, in the image (y down). For a line
    drawn left-to-right across the picture, its left side is the upper part of the image, so
    "left_to_right" means moving down the picture.
    """

    name: str = Field(description="Rule name, unique per camera; becomes Alert.rule.")
    kind: RuleKind = Field("dwell", description="dwell | presence | count | class_presence | line_crossing.")
    zone: str | None = Field(None, description="Zone name the rule watches; None: the whole frame.")
    line: tuple[Point, Point] | None = Field(None, description="line_crossing only: [[x, y], [x, y]] from A to B.")
    direction: Literal["any", "left_to_right", "right_to_left"] = Field(
        "any", description="line_crossing only: which crossings count (see the class doc for left/right).")
    classes: list[str] = Field(default_factory=list, description="Labels the rule applies to; empty: all.")
    min_confidence: float = Field(0.4, ge=0.0, le=1.0, description="Minimum MEDIAN score of the object's track "
                                  "(one confident frame among many doubtful ones does not count).")
    min_area_px: float = Field(0.0, ge=0.0, description="Minimum box area in pixels.")
    min_seconds: float = Field(60.0, ge=0.0, description="How long the condition must hold before a case opens.")
    max_motion_px: float | None = Field(None, gt=0.0, description="dwell: how far (px) the foot point may wander "
                                        "and still count as stationary; None: 3% of the frame diagonal.")
    min_count: int = Field(5, ge=1, description="count: number of objects that makes a crowd.")
    clear_after_s: float = Field(30.0, gt=0.0, description="An object (or crowd) unseen this long resets its "
                                 "timer and closes its case; keep it above motion.recheck_s.")
    schedule: ScheduleConfig | None = Field(None, description="When the rule is active; None: always.")
    category: str | None = Field(None, description="Catalog key of the case to open, e.g. 'illegal_parking'; "
                                 "None: alert only.")
    class_categories: dict[str, str] = Field(default_factory=dict, description="Per-label catalog key, "
                                             "overriding `category` (class_presence with a city's own model).")
    severity: Literal["info", "warning", "critical"] = Field("warning", description="Alert severity.")
    cooldown_s: float = Field(0.0, ge=0.0, description="After a case closes, no new case opens on the same spot "
                              "(overlapping box) for this long.")

    @model_validator(mode="after")
    def _kind_fields(self) -> VideoRuleConfig:
        if self.kind == "line_crossing" and self.line is None:
            raise FieldError("line", f"rule {self.name!r}: line_crossing needs `line: [[x, y], [x, y]]`")
        if self.kind != "line_crossing" and self.line is not None:
            raise FieldError("line", f"rule {self.name!r}: `line` is only for line_crossing rules")
        return self


class EvidenceConfig(StrictModel):
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of snapshots and crops.")
    crop: bool = Field(True, description="Attach a clean crop of the object.")
    clip_s: float = Field(0.0, ge=0.0, description="Attach an MJPEG clip of the last clip_s seconds of analysed "
                          "frames before the case opened; 0: off.")
    clip_post_s: float = Field(0.0, ge=0.0, le=60.0, description="Also include this many seconds after the case "
                               "opened (needs clip_s > 0); the case is filed that much later, or as soon as the "
                               "object leaves or the stream stops.")


class CheckpointConfig(StrictModel):
    """The camera is a checkpoint (卡口) for unregistered trucks (黑头车): a truck seen here at time T while
    no registered vehicle of `vehicle_types` reported a fix within `radius_m` of the camera between
    T - window_s and T + window_s is a suspected unregistered truck. Decided at T + window_s, so a fix
    that arrives late (GPS lag, a blind-area supplement) still counts. Needs the camera's lon/lat."""

    classes: list[str] = Field(default_factory=lambda: ["truck"], min_length=1,
                               description="Detector labels that count as a truck.")
    radius_m: float = Field(150.0, gt=0.0, description="A registered vehicle's fix this close to the camera "
                            "(WGS-84 distance) accounts for the truck.")
    window_s: float = Field(120.0, gt=0.0, le=3600.0, description="How far before and after the sighting a fix "
                            "may be; the decision waits this long.")
    vehicle_types: list[VehicleType] = Field(default_factory=lambda: ["muck_truck"], min_length=1,
                                             description="Fleet vehicle types whose fixes account for a truck.")
    zone: str | None = Field(None, description="Camera zone a truck's foot point must be in (the lanes "
                             "through the checkpoint); None: the whole picture.")
    min_confidence: float = Field(0.4, ge=0.0, le=1.0, description="Minimum detector score of the sighting.")
    rule: str = Field("black_truck", description="Rule name put on alerts.")
    category: str | None = Field("unregistered_vehicle", description="Case catalog key; None: alert only.")
    severity: Literal["info", "warning", "critical"] = Field("warning", description="Alert severity.")
    max_pending: int = Field(32, ge=1, le=1000, description="Sightings waiting for their decision at most "
                             "(each holds one JPEG of its frame); further ones are dropped and counted.")


class CameraConfig(StrictModel):
    name: str = Field(description="Camera id; becomes the alert's subject id.")
    url: str = Field(description="rtsp://, http:// or a video file path.")
    detect_fps: float = Field(2.0, gt=0.0, description="Frames per second handed to the analysis.")
    realtime: bool = Field(True, description="Replay files at real time (False: as fast as analysed).")
    lon: float | None = Field(None, ge=-180, le=180, description="Camera position, WGS-84 longitude.")
    lat: float | None = Field(None, ge=-90, le=90, description="Camera position, WGS-84 latitude.")
    heading: float | None = Field(None, ge=0, lt=360, description="Viewing direction, degrees from north.")
    address: str | None = Field(None, description="Street address shown in cases.")
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gating.")
    offline_after_s: float = Field(30.0, gt=0.0, description="No frame for this long: the camera is offline.")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Rule zones and masks.")
    rules: list[VideoRuleConfig] = Field(default_factory=list, description="Rules of this camera.")
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig, description="Evidence attached to alerts.")
    checkpoint: CheckpointConfig | None = Field(None, description="Checkpoint (卡口) for unregistered trucks: "
                                                "trucks seen here are checked against the fleet's positions.")

    @model_validator(mode="after")
    def _references(self) -> CameraConfig:
        zones = [z.name for z in self.zones]
        if dup := repeated(zones):
            raise FieldError("zones", f"camera {self.name!r}: duplicate zone names {dup}")
        if dup := repeated(r.name for r in self.rules):
            raise FieldError("rules", f"camera {self.name!r}: duplicate rule names {dup}")
        masks = {z.name for z in self.zones if z.mask}
        for i, r in enumerate(self.rules):
            if r.zone is not None and r.zone not in zones:
                raise FieldError(("rules", i, "zone"),
                                 f"camera {self.name!r} rule {r.name!r}: unknown zone {r.zone!r} (zones: {zones})")
            if r.zone in masks:
                raise FieldError(("rules", i, "zone"), f"camera {self.name!r} rule {r.name!r}: zone {r.zone!r} is a mask")
        if (cp := self.checkpoint) is not None:
            if self.lon is None or self.lat is None:
                raise FieldError("checkpoint", f"camera {self.name!r}: a checkpoint needs the camera's lon and lat")
            if cp.zone is not None and cp.zone not in zones:
                raise FieldError(("checkpoint", "zone"), f"camera {self.name!r}: unknown zone {cp.zone!r} (zones: {zones})")
            if cp.zone in masks:
                raise FieldError(("checkpoint", "zone"), f"camera {self.name!r}: zone {cp.zone!r} is a mask")
        return self
