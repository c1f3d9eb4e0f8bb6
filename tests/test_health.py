"""Device health: online at first sight, offline with the detector's offline alert, only changes published."""

from datetime import UTC, datetime, timedelta

from core.model import Alert
from gateway.health import DeviceHealth

T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def offline(state: str, t: datetime) -> Alert:
    return Alert(rule="offline", subject_kind="vehicle", subject_id="muck-01", state=state, time=t, source="vehicle")


def test_changes_are_published_once_each():
    published = []
    health = DeviceHealth(lambda kind, dev, state: published.append((kind, dev, state)),
                          lambda a: a.rule == "offline")
    for i in range(3):
        health.seen("vehicle", "muck-01", T0 + timedelta(seconds=i))
    health.on_alert(offline("open", T0 + timedelta(minutes=15)))
    health.on_alert(offline("open", T0 + timedelta(minutes=16)))  # a repeat changes nothing
    health.on_alert(Alert(rule="overspeed", subject_kind="vehicle", subject_id="muck-01", state="open",
                          time=T0, source="vehicle"))  # not a health alert
    health.on_alert(offline("closed", T0 + timedelta(minutes=20)))
    assert published == [
        ("vehicle", "muck-01", {"online": True, "since": T0.isoformat()}),
        ("vehicle", "muck-01", {"online": False, "since": (T0 + timedelta(minutes=15)).isoformat()}),
        ("vehicle", "muck-01", {"online": True, "since": (T0 + timedelta(minutes=20)).isoformat()}),
    ]
    assert health.snapshot() == {"online": 1, "offline": 0}
