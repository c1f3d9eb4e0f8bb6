"""What the console's devices view needs that no component keeps for it: each device's last
observation as it arrived, and the alerts open now, by subject.

Fed by the router (every Position and Reading: one dict assignment, nothing copied) and by the alert
bus (a listener, called after the case desk has handled the alert, so an open violation shown has its
case id). Bounded: at most `max_devices` devices of each kind and `max_open` open alerts; beyond that,
newcomers are counted and left out, never the ones already kept. Event-loop thread only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.model import Alert, Position, Reading


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """A condition open now: from its first opening alert, updated by later ones (an escalation)."""

    rule: str
    place: str
    track_id: int | None
    severity: str
    since: datetime  # when it opened
    latest: datetime  # its latest alert
    message: str
    category: str | None
    case_id: str | None  # the case it filed (or recurs on), if any

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "place": self.place, "track_id": self.track_id, "severity": self.severity,
                "since": self.since.isoformat(), "latest": self.latest.isoformat(), "message": self.message,
                "category": self.category, "case_id": self.case_id}


class DeviceIndex:
    def __init__(self, *, max_devices: int = 100_000, max_open: int = 50_000) -> None:
        self.max_devices, self.max_open = max_devices, max_open
        self.positions: dict[str, Position] = {}  # device (vehicle id or unknown terminal's key) -> last fix
        self.readings: dict[str, Reading] = {}  # sensor id -> last reading
        self._open: dict[tuple[str, str], dict[tuple[str, str, int | None], OpenAlert]] = {}
        self._open_count = 0
        self.counters: Counter[str] = Counter(devices_left_out=0, alerts_left_out=0)

    def stats(self) -> dict[str, int]:
        return {"vehicles": len(self.positions), "sensors": len(self.readings), "open_alerts": self._open_count,
                **self.counters}

    # -- fed by the router and the bus ------------------------------------------------------------

    def observed(self, observation: Position | Reading) -> None:
        """The device's newest observation (a late blind-area supplement does not replace a newer fix)."""
        kept = self.positions if isinstance(observation, Position) else self.readings
        known = kept.get(observation.device)
        if known is None:
            if len(kept) >= self.max_devices:
                self.counters["devices_left_out"] += 1
                return
        elif observation.time < known.time:
            return
        kept[observation.device] = observation

    def after_alert(self, alert: Alert, outcome: Any = None) -> None:
        """A bus listener: an open alert opens (or updates) its condition, a closing one ends it."""
        subject = (alert.subject_kind, alert.subject_id)
        key = (alert.rule, alert.place, alert.track_id)
        conditions = self._open.get(subject)
        if alert.state == "closed":
            if conditions is not None and conditions.pop(key, None) is not None:
                self._open_count -= 1
                if not conditions:
                    del self._open[subject]
            return
        case_id = getattr(outcome, "case_id", None) or None
        known = conditions.get(key) if conditions is not None else None
        if known is None:
            if self._open_count >= self.max_open:
                self.counters["alerts_left_out"] += 1
                return
            self._open_count += 1
        self._open.setdefault(subject, {})[key] = OpenAlert(
            rule=alert.rule, place=alert.place, track_id=alert.track_id, severity=alert.severity,
            since=known.since if known is not None else alert.time, latest=alert.time, message=alert.message,
            category=alert.category or (known.category if known is not None else None),
            case_id=case_id or (known.case_id if known is not None else None))

    # -- read by the devices view -----------------------------------------------------------------

    def open_alerts(self, kind: str, subject: str) -> list[OpenAlert]:
        """The subject's open conditions, oldest first."""
        found = self._open.get((kind, subject))
        return sorted(found.values(), key=lambda a: a.since) if found else []
