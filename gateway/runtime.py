"""The gateway as one object for the CLI and tests: a component graph built from a deployment
(gateway/wiring.py) and run by a `Runner` (gateway/running.py). Observations are routed by
gateway/routing.py; the shape every part shares is in gateway/component.py.
"""

from __future__ import annotations

import gc
from typing import Any

from gateway.deployment import Deployment
from gateway.running import Runner
from gateway.wiring import build_graph

# Young collections after 10,000 allocations rather than 700: a message's objects are gone long before, while
# those held a little longer (a message waiting in the source's queue, a device's latest reading in the
# console's index) were otherwise promoted to the oldest generation, bringing on a full collection every
# ~10,000 messages (80-120 ms each at 10,000 devices; bench/sensors.py: 9 in 80,000 messages, 1 after).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """The collector's settings for a gateway process (process-wide): GC_THRESHOLDS, and what start-up built
    (config, profiles, device tables: a third of the heap at 10,000 devices) frozen out of every full
    collection, since it lives as long as the gateway."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.collect()
    gc.freeze()


class Gateway:
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.config = deployment.config
        self.graph = build_graph(deployment)  # ModelError, bad files: raised here, before anything runs
        self.runner = Runner(self.graph)
        self.outbox, self.desk, self.bus = self.graph.outbox, self.graph.desk, self.graph.bus
        self.supervisor = self.runner.supervisor

    def component(self, name: str) -> Any:
        return self.graph.find(name)

    async def start(self) -> None:
        tune_gc()
        await self.runner.start()

    async def shutdown(self) -> bool:
        try:
            return await self.runner.shutdown()
        finally:
            gc.unfreeze()  # collectable again once dropped (tests run many gateways in one process)

    def snapshot(self) -> dict[str, Any]:
        return self.runner.snapshot()
