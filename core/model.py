"""The typed observations and results that flow through the gateway.

Sources produce Frame, Position and Reading; detectors turn them into Alert; the case desk
(gateway/cases.py) turns open alerts that name a catalog entry into Case. All times are
timezone-aware; constructors reject naive datetimes so that a local-time bug fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

Severity = Literal["info", "warning", "critical"]
SourceKind = Literal["video", "vehicle", "sensor", "system"]

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")


def require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value!r}")


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One decoded camera image (BGR, as OpenCV gives it)."""

    camera: str
    index: int  # frame number since the stream (re)opened
    time: datetime
    image: Any  # numpy.ndarray HxWx3 uint8, BGR

    def __post_init__(self) -> None:
        require_aware(self.time, "Frame.time")

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.image.shape[:2]
        return w, h


@dataclass(frozen=True, slots=True)
class Detection:
    """One object found by a detector in one frame; box is (x1, y1, x2, y2) in frame pixels."""

    label: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]
    track_id: int | None = None

    @property
    def foot(self) -> tuple[float, float]:
        """Bottom-centre of the box: where the object touches the ground, used for zone tests."""
        x1, _, x2, y2 = self.box
        return (x1 + x2) / 2, y2

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class _PositionFields(NamedTuple):
    lat: float
    lon: float
    time: datetime
    speed_kmh: float
    course: float
    altitude_m: float
    alarm: int
    status: int
    device: str
    valid: bool
    extras: Mapping[str, Any]
    history: bool


class Position(_PositionFields):
    """One GNSS fix of a vehicle terminal or tracker, in WGS-84 degrees.

    Immutable. A NamedTuple rather than a frozen dataclass because a gateway builds tens of
    thousands per second and a tuple is about four times cheaper to make (a frozen dataclass sets
    every field through object.__setattr__). Copy with changes via `p._replace(field=...)`.
    """

    __slots__ = ()

    def __new__(
        cls,
        lat: float,
        lon: float,
        time: datetime,
        speed_kmh: float = 0.0,
        course: float = 0.0,
        altitude_m: float = 0.0,
        alarm: int = 0,  # JT/T 808 alarm flag bits (0 for sources that have none)
        status: int = 0,  # JT/T 808 status bits; bit 1 = fix valid
        device: str = "",  # terminal number / device id
        valid: bool = True,  # the fix is a real satellite fix
        extras: Mapping[str, Any] | None = None,  # additional items (mileage_km, fuel_l, ...); None -> {}
        history: bool = False,  # a blind-area supplement (JT/T 808 0x0704 type 1): store, never re-alarm
    ) -> Position:
        if time.utcoffset() is None:  # one C call; also catches a tzinfo that gives no offset
            require_aware(time, "Position.time")
        return tuple.__new__(cls, (lat, lon, time, speed_kmh, course, altitude_m, alarm, status, device,
                                   valid, {} if extras is None else extras, history))

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Position:  # _replace goes through here: keep the check
        return cls(*iterable)


class _ReadingFields(NamedTuple):
    device: str
    time: datetime
    values: Mapping[str, float]
    profile: str
    units: Mapping[str, str]


class Reading(_ReadingFields):
    """One sensor report: named numeric values already scaled to their units.

    Immutable; a NamedTuple like Position, for the same reason: one per sensor message, and a tuple is
    several times cheaper to make than a frozen dataclass. Copy with changes via `r._replace(...)`.
    """

    __slots__ = ()

    def __new__(cls, device: str, time: datetime, values: Mapping[str, float], profile: str = "",
                units: Mapping[str, str] | None = None) -> Reading:  # units: None -> {}
        if time.utcoffset() is None:  # one C call; also catches a tzinfo that gives no offset
            require_aware(time, "Reading.time")
        return tuple.__new__(cls, (device, time, values, profile, {} if units is None else units))

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Reading:  # _replace goes through here: keep the check
        return cls(*iterable)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Evidence produced by a detector, still in memory; the case desk stores it and hashes it."""

    name: str  # e.g. "snapshot.jpg", "crop.jpg", "track.geojson", "map.png"
    media_type: str
    data: bytes


def condition_key(rule: str, subject_kind: str, subject_id: str, place: str) -> str:
    """An alert's `key`, from its parts (what the case desk files a condition's cases under)."""
    return f"{rule}|{subject_kind}:{subject_id}|{place}"


@dataclass(frozen=True, slots=True)
class Alert:
    """A rule's verdict about one subject: a violation opens, later it clears.

    `category` names a catalog entry; an opening alert with a category becomes (or recurs) a case.
    `place` distinguishes several violations of one rule by one subject (a zone name, a road).
    `render_evidence`, when set, makes evidence that is costly to draw (a map, a track excerpt) only
    if the case desk files a new case, on the desk's thread: recurrences and alert-only uses never pay
    for it, and the detector's hot path stays short. It must capture what it draws (no live state).
    """

    rule: str
    subject_kind: str  # camera | vehicle | terminal | sensor | gateway
    subject_id: str
    state: Literal["open", "closed"]
    time: datetime
    source: SourceKind
    severity: Severity = "warning"
    message: str = ""
    category: str | None = None
    place: str = ""
    lon: float | None = None
    lat: float | None = None
    track_id: int | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    evidence: tuple[Evidence, ...] = ()
    render_evidence: Callable[[], tuple[Evidence, ...]] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        require_aware(self.time, "Alert.time")

    def all_evidence(self) -> tuple[Evidence, ...]:
        """The evidence attached now plus what `render_evidence` draws (called once, by the case desk)."""
        return self.evidence + (self.render_evidence() if self.render_evidence is not None else ())

    @property
    def key(self) -> str:
        """Identity of the condition, the same for its open and its close."""
        return condition_key(self.rule, self.subject_kind, self.subject_id, self.place)


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A device went offline or came back, as its detector judged it (after its own grace period,
    working hours and so on). Detectors emit it beside their offline alert; the runtime keeps the
    device-health table and the retained MQTT health topics from these events alone."""

    kind: str  # vehicle | sensor | camera
    device: str
    online: bool
    time: datetime

    def __post_init__(self) -> None:
        require_aware(self.time, "HealthChange.time")


# What a detector returns: verdicts (alerts) and device-health changes, in the order they happened.
DetectorOutput = Alert | HealthChange


@dataclass(frozen=True, slots=True)
class Case:
    """A case (案件) as the central platform receives it; see DESIGN.md 'Cases'."""

    case_id: str
    source: SourceKind
    category: Mapping[str, str]  # type, major, minor, name, name_en
    rule: str
    severity: Severity
    detected_at: datetime
    location: Mapping[str, Any]  # lon, lat, grid_code, street, community, address
    subject: Mapping[str, Any]  # kind, id, track_id
    evidence: tuple[Mapping[str, str], ...]  # media_type, sha256, path, name
    facts: Mapping[str, Any]
    message: str = ""

    def __post_init__(self) -> None:
        require_aware(self.detected_at, "Case.detected_at")

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "source": self.source,
            "category": dict(self.category),
            "rule": self.rule,
            "severity": self.severity,
            "detected_at": self.detected_at.isoformat(),
            "location": dict(self.location),
            "subject": dict(self.subject),
            "evidence": [dict(e) for e in self.evidence],
            "facts": dict(self.facts),
            "message": self.message,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Case:
        return cls(
            case_id=data["case_id"],
            source=data["source"],
            category=data["category"],
            rule=data["rule"],
            severity=data["severity"],
            detected_at=datetime.fromisoformat(data["detected_at"]),
            location=data.get("location", {}),
            subject=data.get("subject", {}),
            evidence=tuple(data.get("evidence", ())),
            facts=data.get("facts", {}),
            message=data.get("message", ""),
        )
