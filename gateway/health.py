"""Online/offline state of every device, published as retained MQTT health states on each change.

A device comes online when it is first heard from, goes offline when a detector raises its offline
alert (the fleet's offline rule, the sensors' health rule with place "offline") and comes back when
that alert closes. Only changes are published, so thousands of trucks cost nothing
between changes; the retained message tells a late subscriber the current state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core.model import Alert

Publish = Callable[[str, str, dict], None]
IsOffline = Callable[[Alert], bool]


class DeviceHealth:
    def __init__(self, publish: Publish, is_offline_alert: IsOffline) -> None:
        self._publish = publish
        self._is_offline_alert = is_offline_alert
        self._online: dict[tuple[str, str], bool] = {}

    def seen(self, kind: str, device: str, when: datetime) -> None:
        """A device was heard from; the first time, it is online."""
        if (kind, device) not in self._online:
            self._set(kind, device, True, when)

    def on_alert(self, alert: Alert) -> None:
        if self._is_offline_alert(alert):
            self._set(alert.subject_kind, alert.subject_id, alert.state == "closed", alert.time)

    def _set(self, kind: str, device: str, online: bool, when: datetime) -> None:
        if self._online.get((kind, device)) == online:
            return
        self._online[(kind, device)] = online
        self._publish(kind, device, {"online": online, "since": when.isoformat()})

    def snapshot(self) -> dict[str, int]:
        online = sum(self._online.values())
        return {"online": online, "offline": len(self._online) - online}
