"""`video.patrol`: the camera inventory, shared zone/rule presets, groups, credentials and sharding.

Preset zone polygons and rule lines are in relative coordinates (0..1 of the picture's width and
height) by default, so one preset serves 1080p and 720p cameras alike; `coordinates: pixels` takes
them as pixels of the camera's picture instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.schema import StrictModel, repeated
from detectors.video.config import EvidenceConfig, ScheduleConfig, VideoRuleConfig, ZoneConfig


class PatrolAuth(StrictModel):
    scheme: Literal["auto", "basic", "digest"] = Field(
        "auto", description="auto: answer the camera's 401 challenge with the scheme it asks for "
        "(digest or basic) and remember it; basic / digest: only that scheme.")
    username: str = Field(description="User name.")
    password: str = Field(description="Password; use ${VAR} to take it from the environment.")


class PatrolPreset(StrictModel):
    coordinates: Literal["relative", "pixels"] = Field(
        "relative", description="relative: polygons in 0..1 of the picture's width and height (one preset "
        "for every resolution); pixels: in pixels of the camera's picture.")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Rule zones and masks.")
    rules: list[VideoRuleConfig] = Field(default_factory=list, description="Rules, judged across visits: an "
                                         "object at the same place on consecutive visits spanning min_seconds.")
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig, description="Evidence attached to cases.")

    @model_validator(mode="after")
    def _check(self) -> PatrolPreset:
        zones = [z.name for z in self.zones]
        if dup := repeated(zones):
            raise ValueError(f"duplicate zone names {dup}")
        if dup := repeated(r.name for r in self.rules):
            raise ValueError(f"duplicate rule names {dup}")
        masks = {z.name for z in self.zones if z.mask}
        for r in self.rules:
            if r.kind == "line_crossing":
                raise ValueError(f"rule {r.name!r}: line_crossing needs a continuous stream, not patrol visits")
            if r.zone is not None and r.zone not in zones:
                raise ValueError(f"rule {r.name!r}: unknown zone {r.zone!r} (zones: {zones})")
            if r.zone in masks:
                raise ValueError(f"rule {r.name!r}: zone {r.zone!r} is a mask")
        if self.evidence.clip_s > 0:
            raise ValueError("evidence.clip_s: patrol visits take single pictures, there is no clip")
        if self.coordinates == "relative":
            for z in self.zones:
                bad = [p for p in z.polygon if not (0 <= p[0] <= 1 and 0 <= p[1] <= 1)]
                if bad:
                    raise ValueError(f"zone {z.name!r}: relative coordinates must lie in 0..1, got {bad[:3]} "
                                     "(or set coordinates: pixels)")
        return self


class PatrolGroup(StrictModel):
    interval_s: float = Field(600.0, ge=1.0, description="Visit every camera of the group this often "
                              "(key streets 120, the rest 600).")
    schedule: ScheduleConfig | None = Field(None, description="Days and hours the group is patrolled; "
                                            "None: always.")
    auth: str | None = Field(None, description="Name of the `credentials` entry its cameras use unless "
                             "their inventory row names one.")


class PatrolShard(StrictModel):
    index: int = Field(ge=0, description="This box's share, 0 .. count-1.")
    count: int = Field(ge=1, description="How many boxes split the inventory.")

    @model_validator(mode="after")
    def _index(self) -> PatrolShard:
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} must be below count {self.count}")
        return self


class PatrolConfig(StrictModel):
    inventory: str = Field(description="Camera inventory, a .csv or .yaml file (relative to the config file): "
                           "id, name, url (http(s) snapshot or rtsp), lon, lat, address, group, preset, auth.")
    presets: dict[str, PatrolPreset] = Field(default_factory=dict, description="Zone/rule presets by name, "
                                             "shared by many cameras.")
    groups: dict[str, PatrolGroup] = Field(default_factory=lambda: {"default": PatrolGroup()},
                                           description="Camera groups by name: visit interval, hours, credentials.")
    credentials: dict[str, PatrolAuth] = Field(default_factory=dict, description="Named credentials, used by "
                                               "groups or by inventory rows (column `auth`).")
    concurrency: int = Field(32, ge=1, le=1024, description="Most picture fetches in flight at once.")
    prefetch: int | None = Field(None, ge=1, le=256, description="Pictures fetched ahead of the inference "
                                 "workers; None: enough to cover one fetch time at the model's measured rate.")
    inference_workers: int | None = Field(None, ge=1, le=64, description="Inference workers shared by all "
                                          "groups, round-robin; None: one per CPU core.")
    timeout_s: float = Field(5.0, gt=0, description="A visit that has no picture after this long fails.")
    connect_timeout_s: float = Field(2.0, gt=0, description="TCP connect timeout of a visit.")
    verify_tls: bool = Field(True, description="Check the certificates of https:// cameras; false for cameras "
                             "with self-signed certificates on a closed camera network.")
    max_picture_bytes: int = Field(8_000_000, ge=1024, description="A larger picture fails the visit.")
    offline_after: int = Field(3, ge=1, description="Consecutive failed visits that report the camera offline "
                               "(a camera_offline alert; closed by the next good visit).")
    clear_after_visits: float = Field(1.5, ge=1.0, description="An object unseen for this many visit intervals "
                                      "is gone (1.5: one missed sighting is tolerated).")
    evidence_memory_mb: int = Field(256, ge=1, description="Memory for first-sighting pictures kept for "
                                    "evidence, all cameras together; beyond it a case shows the latest only.")
    shard: PatrolShard | None = Field(None, description="{index: i, count: n}: this box patrols the cameras whose "
                                      "id hashes to share i of n (no coordinator); None: all.")

    @model_validator(mode="after")
    def _references(self) -> PatrolConfig:
        if not self.groups:
            raise ValueError("groups: at least one group is needed")
        for name, group in self.groups.items():
            if group.auth is not None and group.auth not in self.credentials:
                raise ValueError(f"group {name!r}: unknown credentials {group.auth!r} "
                                 f"(credentials: {sorted(self.credentials)})")
        return self
