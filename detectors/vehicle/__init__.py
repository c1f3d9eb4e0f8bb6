"""Vehicle supervision (五车监管): position filters, zone/route/time-window/speed/load rules, coverage.

Entry point: `FleetMonitor(FleetConfig)`, with `process(position)` per fix and `tick(now)` every few
seconds; both return `list[Alert]`.
"""

from .config import FleetConfig
from .monitor import FleetMonitor

__all__ = ["FleetConfig", "FleetMonitor"]
