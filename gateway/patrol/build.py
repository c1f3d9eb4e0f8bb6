"""Wiring of patrol mode from a deployment config: this box's share of the inventory (loaded once, by
gateway/deployment.py) and the scheduler the runtime supervises."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.model import Alert, HealthChange
from detectors.video.backends import ObjectDetector
from gateway.patrol.inventory import PatrolCamera, load_inventory, my_share
from gateway.patrol.scheduler import PatrolScheduler

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


def patrol_share(config: GatewayConfig) -> list[PatrolCamera]:
    """This box's share of the inventory (raises InventoryError listing every problem)."""
    patrol = config.video.patrol
    assert patrol is not None
    return my_share(load_inventory(config.path(patrol.inventory), patrol), patrol.shard)


def build_patrol(config: GatewayConfig, cameras: list[PatrolCamera], detector: ObjectDetector,
                 submit: Callable[[Alert], None], *, clock: Callable[[], float] = time.time,
                 health: Callable[[HealthChange], None] | None = None) -> PatrolScheduler:
    """The patrol component over `cameras` (the deployment's share); `submit` and `health` (cameras'
    online/offline changes) are called on the event loop."""
    patrol = config.video.patrol
    assert patrol is not None
    return PatrolScheduler(cameras, patrol, detector, submit, clock=clock, timezone=config.tz, health=health)
