"""A crashing task is restarted with backoff and counted; the others keep running."""

import asyncio

from gateway.supervisor import Supervisor


async def test_crashing_task_restarts_and_others_keep_running():
    sup = Supervisor(backoff_initial_s=0.01, backoff_max_s=0.05)
    runs = {"flaky": 0, "steady": 0}
    stop = asyncio.Event()

    async def flaky():
        runs["flaky"] += 1
        if runs["flaky"] <= 3:
            raise RuntimeError(f"boom {runs['flaky']}")
        await stop.wait()

    async def steady():
        while not stop.is_set():
            runs["steady"] += 1
            await asyncio.sleep(0.005)

    sup.spawn("flaky", flaky)
    sup.spawn("steady", steady)
    async with asyncio.timeout(10):
        while runs["flaky"] < 4:
            await asyncio.sleep(0.01)
    snapshot = sup.snapshot()
    assert snapshot["flaky"]["restarts"] == 3
    assert snapshot["flaky"]["last_error"] == "RuntimeError: boom 3"
    assert snapshot["flaky"]["state"] == "running"
    assert snapshot["steady"]["restarts"] == 0 and runs["steady"] > 0
    stop.set()
    assert await sup.wait(["flaky", "steady"], timeout=5)
    assert sup.snapshot()["steady"]["state"] == "finished"


async def test_task_without_restart_is_marked_failed():
    sup = Supervisor()

    async def broken():
        raise ValueError("bad config")

    sup.spawn("once", broken, restart=False)
    assert await sup.wait(["once"], timeout=5)
    assert sup.snapshot()["once"] == {"state": "failed", "restarts": 1, "last_error": "ValueError: bad config"}
