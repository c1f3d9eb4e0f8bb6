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
        # what start-up built (config, profiles, device tables: at 10,000 devices a third of the heap) lives
        # as long as the gateway: kept out of every full garbage collection, each then that much shorter
        gc.collect()
        gc.freeze()
        await self.runner.start()

    async def shutdown(self) -> bool:
        try:
            return await self.runner.shutdown()
        finally:
            gc.unfreeze()  # collectable again once dropped (tests run many gateways in one process)

    def snapshot(self) -> dict[str, Any]:
        return self.runner.snapshot()
