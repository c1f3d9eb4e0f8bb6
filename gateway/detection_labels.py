"""Ground truth for a video clip, and how the analysis is scored against it (bench/detection.py).

A label file is a small YAML next to the clip (`<clip stem>.labels.yaml`)::

    clip: pedestrians_480x360_10fps.mp4     # relative to this file
    config: ../../../bench/detection.yaml   # the deployment whose camera's rules are scored
    camera: street                          # that camera's zones and rules run over the clip
    cases:                                  # EVERY case the rules should open, each once
      - {rule: kerb-parking, zone: kerb-north, from_s: 5, to_s: 15, note: white van}
    counts:                                 # objects seen in chosen frames (model comparison)
      - {t: 0, zone: road, classes: [person], n: 6}

A case found by the rules is right when an expected case of the same rule and zone is still unmatched
and the case opened within its window [from_s, to_s] (seconds of video time); each expected case
matches one case only, so a second case for the same van is a false one. Counts compare how many
detections of `classes` (foot point in `zone`, or anywhere) a model reports with `n`.

Loading raises LabelError naming the file and the field; scoring is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from core.schema import FieldError, StrictModel


class LabelError(ValueError):
    """A label file that cannot be used; the message names the file and the field."""


class ExpectedCase(StrictModel):
    rule: str = Field(description="Rule name in the camera's config.")
    zone: str | None = Field(None, description="Zone the case is in (the alert's place); None: no zone.")
    from_s: float = Field(ge=0.0, description="Earliest video second the case may open.")
    to_s: float = Field(ge=0.0, description="Latest video second the case may open.")
    note: str = Field("", description="What the labeller saw (free text).")

    @model_validator(mode="after")
    def _window(self) -> ExpectedCase:
        if self.to_s < self.from_s:
            raise FieldError("to_s", f"to_s {self.to_s} is before from_s {self.from_s}")
        return self


class ObjectCount(StrictModel):
    t: float = Field(ge=0.0, description="Video second of the frame (the first frame at or after it).")
    classes: list[str] = Field(min_length=1, description="Detector labels counted together, e.g. [car, truck].")
    n: int = Field(ge=0, description="How many such objects the labeller sees.")
    zone: str | None = Field(None, description="Count only objects whose foot point lies in this zone.")


class LabelFile(StrictModel):
    clip: str | None = Field(None, description="The clip, relative to the label file.")
    config: str | None = Field(None, description="Deployment config, relative to the label file.")
    camera: str | None = Field(None, description="Camera in that config whose rules are scored.")
    cases: list[ExpectedCase] = Field(default_factory=list)
    counts: list[ObjectCount] = Field(default_factory=list)


@dataclass(frozen=True)
class Labels:
    path: Path
    clip: Path | None
    config: Path | None
    camera: str | None
    cases: tuple[ExpectedCase, ...]
    counts: tuple[ObjectCount, ...]


def load_labels(path: str | Path) -> Labels:
    """Read and check a label file; raises LabelError('<file>: <field>: <sentence>')."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LabelError(f"{path}: cannot read the label file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise LabelError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LabelError(f"{path}: a label file is a mapping (clip, config, camera, cases, counts), "
                         f"got {type(raw).__name__}")
    try:
        data = LabelFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = list(err["loc"])
            ctx = err.get("ctx") or {}
            if isinstance(ctx.get("error"), FieldError):
                loc += list(ctx["error"].loc)
            where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
            msg = str(ctx["error"]) if isinstance(ctx.get("error"), FieldError) else err["msg"]
            problems.append(f"{path}: {where or 'file'}: {msg}")
        raise LabelError("\n".join(problems)) from None
    base = path.parent
    return Labels(path=path, clip=base / data.clip if data.clip else None,
                  config=base / data.config if data.config else None, camera=data.camera,
                  cases=tuple(data.cases), counts=tuple(data.counts))


# ---------------------------------------------------------------- scoring (pure)


@dataclass(frozen=True)
class FoundCase:
    """A case the rules opened: rule, zone and the video second it opened at."""

    rule: str
    zone: str | None
    t: float


@dataclass
class Score:
    right: int = 0  # found cases that match an expected one
    found: int = 0
    expected: int = 0
    missed: list[ExpectedCase] = field(default_factory=list)
    false: list[FoundCase] = field(default_factory=list)

    @property
    def precision(self) -> float:
        """Share of found cases that are right; 1.0 when none was found (nothing false was filed)."""
        return self.right / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        """Share of expected cases found; 1.0 when none was expected."""
        return self.right / self.expected if self.expected else 1.0

    def add(self, other: Score) -> None:
        self.right += other.right
        self.found += other.found
        self.expected += other.expected
        self.missed += other.missed
        self.false += other.false


def score_cases(expected: Sequence[ExpectedCase], found: Iterable[FoundCase]) -> dict[str, Score]:
    """Per rule: match found cases (in time order) to expected ones of the same rule and zone whose
    window holds the opening time, each expected case at most once, earliest-ending window first."""
    scores: dict[str, Score] = {}
    for e in expected:
        scores.setdefault(e.rule, Score()).expected += 1
    unmatched = sorted(expected, key=lambda e: (e.to_s, e.from_s))
    for case in sorted(found, key=lambda c: c.t):
        score = scores.setdefault(case.rule, Score())
        score.found += 1
        hit = next((e for e in unmatched if e.rule == case.rule and e.zone == case.zone
                    and e.from_s <= case.t <= e.to_s), None)
        if hit is None:
            score.false.append(case)
        else:
            unmatched.remove(hit)
            score.right += 1
    for e in unmatched:
        scores[e.rule].missed.append(e)
    return scores


@dataclass
class CountScore:
    """Count-level agreement of a detector with labelled frames: in each frame min(found, n) objects
    are taken as right, the surplus as false and the shortfall as missed."""

    right: int = 0
    false: int = 0
    missed: int = 0
    frames: int = 0

    def add(self, found: int, n: int) -> None:
        self.right += min(found, n)
        self.false += max(0, found - n)
        self.missed += max(0, n - found)
        self.frames += 1

    @property
    def precision(self) -> float:
        return self.right / (self.right + self.false) if self.right + self.false else 1.0

    @property
    def recall(self) -> float:
        return self.right / (self.right + self.missed) if self.right + self.missed else 1.0

    @property
    def false_per_frame(self) -> float:
        return self.false / self.frames if self.frames else 0.0
