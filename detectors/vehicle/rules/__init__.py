"""Vehicle rules (五车监管), one module each, all of one shape (see base.py)."""

from __future__ import annotations

from ..config import VehicleRulesConfig
from ..world import World
from .alarms import TerminalAlarms
from .base import Clock, Fix, Rule, Vehicle
from .coverage import Coverage
from .dumping import IllegalDumping
from .hours import OutsideHours
from .offline import Offline
from .route import OffRoute
from .speed import Overspeed
from .stop import LongStop
from .unregistered import Unregistered
from .zones import ForbiddenZones

__all__ = ["Clock", "Fix", "Rule", "Unregistered", "Vehicle", "build"]


def build(config: VehicleRulesConfig, world: World) -> list[Rule]:
    """The enabled rules, in the order each fix goes through them (and their alerts come out). Offline
    comes first: a vehicle back online is told before anything its first fix raises."""
    c = config
    return [rule(cfg, world) for cfg, rule in (
        (c.offline, Offline), (c.forbidden_zone, ForbiddenZones), (c.off_route, OffRoute),
        (c.outside_hours, OutsideHours), (c.overspeed, Overspeed), (c.illegal_dumping, IllegalDumping),
        (c.long_stop, LongStop), (c.terminal_alarm, TerminalAlarms), (c.coverage, Coverage),
    ) if cfg.enabled]
