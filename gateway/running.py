"""Runs a component graph: binds listening ports, starts every component under the supervisor,
serves the status snapshot, and shuts down stage by stage within `shutdown_deadline_s`:
sources stop, queued alerts become cases, sinks flush, the web server goes last, stores close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from gateway.component import STAGES, Listens
from gateway.supervisor import Supervisor
from gateway.wiring import Graph

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, graph: Graph, supervisor: Supervisor | None = None) -> None:
        self.graph = graph
        self.supervisor = supervisor or Supervisor()
        self.started_at = datetime.now(UTC)
        self._stops = {stage: asyncio.Event() for stage in STAGES}
        graph.snapshot = self.snapshot

    async def start(self) -> None:
        """Bind every listening port first (a port in use raises OSError here, before anything runs
        half-way), then start the stages from the last to stop (web) to the first (sources)."""
        for component in self.graph.components:
            if isinstance(component, Listens):
                await component.listen()
        for stage in reversed(STAGES):
            for component in self.graph.stages[stage]:
                self.supervisor.spawn(component.name, _runner(component, self._stops[stage]),
                                      backoff=getattr(component, "restart_backoff_s", None))
        config = self.graph.deployment.config
        cameras = sum(c.name.startswith("camera:") for c in self.graph.components)
        log.info("citygate %s running: %d camera(s), %d vehicle(s), %d sensor(s); cases in %s", config.site,
                 cameras, len(config.vehicles.fleet.vehicles), len(config.sensors.devices), self.graph.outbox.path)

    async def shutdown(self, deadline_s: float | None = None) -> bool:
        """Stop stage by stage; True when every stage ended within the deadline."""
        deadline = time.monotonic() + (deadline_s or self.graph.deployment.config.shutdown_deadline_s)
        clean = True
        for stage in STAGES:
            self._stops[stage].set()
            names = [c.name for c in self.graph.stages[stage]]
            if not await self.supervisor.wait(names, timeout=max(0.1, deadline - time.monotonic())):
                clean = False
                waiting = (f"{self.graph.bus.pending} alert(s) not yet filed as cases" if stage == "alerts"
                           else ", ".join(names))
                log.error("shutdown: %s did not stop before the deadline (%s)", stage, waiting)
        await self.supervisor.stop(timeout=2.0)
        self.graph.bus.close()
        self.graph.timeseries.close()
        self.graph.desk.close()
        self.graph.outbox.close()
        log.info("stopped")
        return clean

    def snapshot(self) -> dict[str, Any]:
        """Every component's stats under its name (cameras grouped under "cameras"), plus the outbox,
        device health, task states and the newest alerts."""
        graph = self.graph
        config = graph.deployment.config
        components = {c.name: c.stats() for c in graph.components}
        cameras = {name.removeprefix("camera:"): stats for name, stats in components.items()
                   if name.startswith("camera:")}
        return {
            "site": config.site,
            "gateway_id": config.id,
            "started_at": self.started_at.isoformat(),
            "uptime_s": round((datetime.now(UTC) - self.started_at).total_seconds()),
            "outbox": {**graph.outbox.counts(), "fill_ratio": round(graph.outbox.fill_ratio(), 4)},
            "devices": graph.router.health.snapshot(),
            "cameras": cameras,
            **{name: stats for name, stats in components.items() if not name.startswith("camera:")},
            "tasks": self.supervisor.snapshot(),
            "recent_alerts": [_recent(a) for a in list(graph.bus.recent)[:50]],
        }


def _runner(component: Any, stop: asyncio.Event):
    return lambda: component.run(stop)


def _recent(a: Any) -> dict[str, Any]:
    return {"rule": a.rule, "state": a.state, "subject_kind": a.subject_kind, "subject_id": a.subject_id,
            "place": a.place, "severity": a.severity, "time": a.time.isoformat(), "message": a.message,
            "category": a.category}
