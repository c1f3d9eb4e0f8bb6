"""Delivery of outbox cases to a (fake) central platform over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from central_receiver import CentralReceiver
from outbox_worker import make_case
from pydantic import ValidationError

from gateway.aio import backoff_delay
from gateway.outbox import Outbox
from gateway.sinks.central import (
    CentralConfig,
    CentralDelivery,
    is_retryable,
    parse_retry_after,
)

FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 5}


@pytest.fixture
def receiver():
    with CentralReceiver() as rx:
        yield rx


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(tmp_path / "outbox.db")
    yield ob
    ob.close()


async def deliver_until(delivery: CentralDelivery, done: Callable[[], bool], timeout_s: float = 20) -> None:
    """Run the worker until `done()` holds (or fail after `timeout_s`)."""
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.run(stop))
    deadline = time.monotonic() + timeout_s
    try:
        while not done():
            assert time.monotonic() < deadline, f"not done after {timeout_s} s; stats {delivery.stats()}"
            assert not task.done(), f"worker ended early: {task}"
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def status(outbox: Outbox, case_id: str) -> str:
    return outbox.get(case_id).status


async def test_delivers_with_idempotency_key_and_bearer_token(receiver, outbox):
    case = make_case("edge-07-0001")
    outbox.enqueue(case)
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, token="s3cret", evidence_mode="base64"))
    await deliver_until(delivery, lambda: status(outbox, "edge-07-0001") == "delivered")

    (req,) = receiver.requests()
    assert req.path == "/cases"
    assert req.headers["idempotency-key"] == "edge-07-0001"
    assert req.headers["authorization"] == "Bearer s3cret"
    assert req.headers["content-type"] == "application/json"
    assert req.case == case.to_json()
    assert delivery.stats()["delivered"] == 1
    assert outbox.get("edge-07-0001").attempts == 1


async def test_no_token_no_authorization_header(receiver, outbox):
    outbox.enqueue(make_case("c-1"))
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url))
    await deliver_until(delivery, lambda: status(outbox, "c-1") == "delivered")
    assert "authorization" not in receiver.requests()[0].headers


async def test_server_error_is_retried_then_delivered(receiver, outbox):
    receiver.fail_next(2, status=500, body=b"database down")
    outbox.enqueue(make_case("c-1"))
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, **FAST))
    await deliver_until(delivery, lambda: status(outbox, "c-1") == "delivered")

    assert [r.status for r in receiver.requests()] == [500, 500, 200]
    assert all(r.headers["idempotency-key"] == "c-1" for r in receiver.requests())
    rec = outbox.get("c-1")
    assert rec.attempts == 3
    assert delivery.stats() == {"delivered": 1, "failed_attempts": 2, "dead": 0, "evidence_missing": 0,
                              "errors": 0}


async def test_429_and_408_are_retried(receiver, outbox):
    receiver.fail_next(1, status=429, retry_after="0")
    receiver.fail_next(1, status=408)
    outbox.enqueue(make_case("c-1"))
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, **FAST))
    await deliver_until(delivery, lambda: status(outbox, "c-1") == "delivered")
    assert [r.status for r in receiver.requests()] == [429, 408, 200]


async def test_timeout_is_retried_then_delivered(receiver, outbox):
    receiver.fail_next(1, status=200, delay_s=1.5)  # answers too late for the client
    outbox.enqueue(make_case("c-1"))
    config = CentralConfig(url=receiver.url, **{**FAST, "timeout_s": 0.3})
    delivery = CentralDelivery(outbox, config)
    failures = []
    await deliver_until(
        delivery, lambda: failures.append(outbox.get("c-1").last_error) or status(outbox, "c-1") == "delivered"
    )
    assert outbox.get("c-1").attempts == 2
    assert delivery.stats()["failed_attempts"] == 1
    assert any(e and e.startswith("timeout") for e in failures)


async def test_unreachable_platform_keeps_case_pending(outbox):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outbox.enqueue(make_case("c-1"))
    delivery = CentralDelivery(outbox, CentralConfig(url=f"http://127.0.0.1:{port}/cases", **FAST))
    await deliver_until(delivery, lambda: outbox.get("c-1").attempts >= 2)
    rec = outbox.get("c-1")
    assert rec.status == "pending"
    assert "Cannot connect to host" in rec.last_error


async def test_422_goes_to_dead_letters_with_body_and_retry_redelivers(receiver, outbox):
    receiver.set_status(422, body=b'{"error": "grid_code 999 unknown"}')
    outbox.enqueue(make_case("c-1"))
    outbox.enqueue(make_case("c-2"))
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, **FAST))
    await deliver_until(delivery, lambda: outbox.counts()["dead"] == 2)

    rec = outbox.get("c-1")
    assert rec.attempts == 1  # never retried by itself
    assert rec.dead_letter.status_code == 422
    assert rec.dead_letter.response_body == '{"error": "grid_code 999 unknown"}'
    assert delivery.stats()["dead"] == 2

    receiver.set_status(200)  # the platform was fixed; the operator runs `citygate cases retry c-1`
    assert outbox.retry("c-1")
    await deliver_until(delivery, lambda: status(outbox, "c-1") == "delivered")
    assert status(outbox, "c-2") == "dead"


async def test_max_attempts_dead_letters_a_case(receiver, outbox):
    receiver.set_status(503, body=b"maintenance")
    outbox.enqueue(make_case("c-1"))
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, max_attempts=3, **FAST))
    await deliver_until(delivery, lambda: status(outbox, "c-1") == "dead")
    rec = outbox.get("c-1")
    assert rec.attempts == 3
    assert rec.dead_letter.status_code == 503
    assert "gave up after 3 attempts" in rec.dead_letter.response_body


def write_evidence(tmp_path, name: str, data: bytes, media_type: str) -> dict[str, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return {"name": name, "media_type": media_type, "sha256": hashlib.sha256(data).hexdigest(),
            "path": str(path)}


@pytest.fixture
def evidence(tmp_path):
    rng = random.Random(7)
    return [
        write_evidence(tmp_path, "snapshot.jpg", bytes(rng.randrange(256) for _ in range(50_000)), "image/jpeg"),
        write_evidence(tmp_path, "track.geojson", b'{"type": "LineString"}\r\n--x\r\n', "application/geo+json"),
    ]


async def test_multipart_evidence_arrives_intact(receiver, outbox, evidence):
    outbox.enqueue(make_case("c-1", evidence=evidence))
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, evidence_mode="multipart"))
    await deliver_until(delivery, lambda: status(outbox, "c-1") == "delivered")

    (req,) = receiver.requests()
    assert req.headers["content-type"].startswith("multipart/form-data")
    assert req.case["case_id"] == "c-1"
    assert req.parts["case"].content_type == "application/json"
    for i, entry in enumerate(evidence):
        part = req.parts[f"evidence[{i}]"]
        assert part.filename == entry["name"]
        assert part.content_type == entry["media_type"]
        assert hashlib.sha256(part.data).hexdigest() == entry["sha256"]
        assert req.case["evidence"][i]["sha256"] == entry["sha256"]


async def test_base64_evidence_arrives_intact(receiver, outbox, evidence):
    outbox.enqueue(make_case("c-1", evidence=evidence))
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, evidence_mode="base64"))
    await deliver_until(delivery, lambda: status(outbox, "c-1") == "delivered")

    (req,) = receiver.requests()
    for sent, entry in zip(req.case["evidence"], evidence, strict=True):
        assert hashlib.sha256(base64.b64decode(sent["data_base64"])).hexdigest() == entry["sha256"]
    # The stored case is unchanged: the bytes are read from the files at each attempt.
    assert "data_base64" not in outbox.get("c-1").case["evidence"][0]


async def test_missing_evidence_file_does_not_block_delivery(receiver, outbox, tmp_path):
    gone = {"name": "snap.jpg", "media_type": "image/jpeg", "sha256": "00", "path": str(tmp_path / "gone.jpg")}
    outbox.enqueue(make_case("c-1", evidence=[gone]))
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, evidence_mode="multipart"))
    await deliver_until(delivery, lambda: status(outbox, "c-1") == "delivered")

    (req,) = receiver.requests()
    assert "evidence[0]" not in req.parts
    assert "cannot read" in req.case["evidence"][0]["missing"]
    assert delivery.stats()["evidence_missing"] == 1


async def test_notify_wakes_the_worker_without_waiting_for_the_poll(receiver, outbox):
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, poll_s=3600))
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.run(stop))
    await asyncio.sleep(0.1)  # the worker polled an empty outbox and sleeps for an hour
    outbox.enqueue(make_case("c-1"))
    delivery.notify()
    try:
        await asyncio.wait_for(_until(lambda: status(outbox, "c-1") == "delivered"), 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_notify_from_another_thread(receiver, outbox):
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, poll_s=3600))
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.run(stop))
    await asyncio.sleep(0.1)

    def enqueue() -> None:
        outbox.enqueue(make_case("c-1"))
        delivery.notify()

    await asyncio.to_thread(enqueue)
    try:
        await asyncio.wait_for(_until(lambda: status(outbox, "c-1") == "delivered"), 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _until(done: Callable[[], bool]) -> None:
    while not done():
        await asyncio.sleep(0.01)


async def test_many_cases_each_delivered(receiver, outbox):
    for i in range(200):
        outbox.enqueue(make_case(f"c-{i:03d}"))
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, batch=20))
    await deliver_until(delivery, lambda: outbox.counts()["delivered"] == 200)
    assert sorted(receiver.accepted_ids()) == [f"c-{i:03d}" for i in range(200)]


def test_backoff_grows_is_capped_and_jittered():
    rng = random.Random(1)
    samples = {a: [backoff_delay(a, 1.0, 300.0, rng) for _ in range(200)] for a in range(1, 12)}
    for attempt, values in samples.items():
        ceiling = min(300.0, 2.0 ** (attempt - 1))
        assert all(ceiling / 2 <= v <= ceiling for v in values)
        assert len(set(values)) > 150  # jitter: gateways that failed together spread out
    assert min(samples[5]) > max(samples[3])  # grows
    assert max(samples[11]) <= 300.0
    assert backoff_delay(10_000, 1.0, 300.0, rng) <= 300.0  # no overflow on huge attempt counts


def test_which_statuses_are_retried():
    assert [c for c in (400, 401, 403, 404, 409, 413, 422) if is_retryable(c)] == []
    assert all(is_retryable(c) for c in (408, 429, 500, 502, 503, 504, 302))


def test_retry_after_header():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    later = format_datetime(datetime(2026, 11, 23, 9, 1, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(60.0)


def test_config_is_checked():
    assert CentralConfig().url is None
    assert CentralConfig(url="").url is None
    with pytest.raises(ValidationError, match="http"):
        CentralConfig(url="ftp://central")
    with pytest.raises(ValidationError, match="extra"):
        CentralConfig(url="http://central/cases", retries=3)
    with pytest.raises(ValidationError, match="evidence_mode"):
        CentralConfig(evidence_mode="zip")
    with pytest.raises(ValueError, match="central.url is not set"):
        CentralDelivery(Outbox(":memory:"), CentralConfig())
