"""Vehicle supervision (五车监管): position filters, then one module per rule (rules/: zones, route, hours,
speed, dumping, stop, alarms, coverage, offline, unregistered) over places loaded once (world.py).

Entry point: `FleetMonitor(FleetConfig)`, with `process(position)` per fix and `tick(now)` every few
seconds; both return `list[Alert]` (and `HealthChange` when a terminal goes offline or comes back).
"""

from .config import FleetConfig
from .monitor import FleetMonitor

__all__ = ["FleetConfig", "FleetMonitor"]
