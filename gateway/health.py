"""Online/offline state of every device, published as retained MQTT health states on each change.

A device comes online when it is first heard from and otherwise changes only on the detectors'
`HealthChange` events (the fleet's offline rule, the sensors' health rule), so the grace periods and
working hours those rules apply decide what "offline" means. Only changes are published, so
thousands of trucks cost nothing between changes; the retained message tells a late subscriber the
current state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from core.model import HealthChange

Publish = Callable[[str, str, dict], None]


class DeviceHealth:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._online: dict[tuple[str, str], bool] = {}

    def seen(self, kind: str, device: str, when: datetime) -> None:
        """A device was heard from; the first time, it is online."""
        if (kind, device) not in self._online:
            self.change(HealthChange(kind, device, True, when))

    def change(self, event: HealthChange) -> None:
        key = (event.kind, event.device)
        if self._online.get(key) == event.online:
            return
        self._online[key] = event.online
        self._publish(event.kind, event.device, {"online": event.online, "since": event.time.isoformat()})

    def online(self, kind: str, device: str) -> bool | None:
        """Whether the device is online now; None when it has never been heard from."""
        return self._online.get((kind, device))

    def snapshot(self) -> dict[str, int]:
        online = sum(self._online.values())
        return {"online": online, "offline": len(self._online) - online}
