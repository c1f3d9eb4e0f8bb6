"""Later events of a case (updated, cleared, withdrawn) through the outbox to a (fake) central
platform over real HTTP: order per case, idempotency keys, dead letters, retries, counters."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from central_receiver import CentralReceiver
from outbox_worker import make_case
from test_central import FAST, deliver_until

from gateway.outbox import Outbox
from gateway.sinks.central import CentralConfig, CentralDelivery

T0 = datetime(2026, 11, 23, 9, 41, 7, tzinfo=UTC)


@pytest.fixture
def receiver():
    with CentralReceiver() as rx:
        yield rx


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(tmp_path / "outbox.db")
    yield ob
    ob.close()


def lifecycle(outbox: Outbox, case_id: str) -> list[str]:
    """A case that recurs, escalates, clears and is withdrawn: returns its event ids in order."""
    outbox.enqueue(make_case(case_id))
    ids = [case_id]
    ids.append(outbox.add_event(case_id, "updated", T0 + timedelta(minutes=1), {"reason": "recurrence"},
                                recurrence=True).event_id)
    ids.append(outbox.add_event(case_id, "updated", T0 + timedelta(minutes=2),
                                {"reason": "escalated", "severity": "critical"}, severity="critical").event_id)
    ids.append(outbox.add_event(case_id, "cleared", T0 + timedelta(minutes=3), {"reason": "condition_ended"},
                                state="cleared").event_id)
    ids.append(outbox.withdraw(case_id, "false alarm", by="op-1", at=T0 + timedelta(minutes=4)).event_id)
    return ids


def test_events_have_their_own_ids_and_sequence_numbers(outbox):
    ids = lifecycle(outbox, "c-1")
    assert ids == ["c-1", "c-1:2", "c-1:3", "c-1:4", "c-1:5"]
    events = outbox.events("c-1")
    assert [(e.seq, e.kind) for e in events] == [(2, "updated"), (3, "updated"), (4, "cleared"), (5, "withdrawn")]
    assert events[-1].body == {"event_id": "c-1:5", "case_id": "c-1", "seq": 5, "kind": "withdrawn",
                               "at": (T0 + timedelta(minutes=4)).isoformat(), "reason": "false alarm",
                               "by": "op-1", "state": "withdrawn"}
    record = outbox.get("c-1")
    assert (record.state, record.severity, record.recurrences) == ("withdrawn", "critical", 1)
    assert outbox.withdraw("c-1", "again", by="op-1") is None
    assert outbox.add_event("nope", "cleared", T0, {}) is None
    with pytest.raises(ValueError, match="kind"):
        outbox.add_event("c-1", "opened", T0, {})
    assert outbox.event_counts()["pending"] == 4


async def test_events_arrive_in_order_after_their_case_with_their_own_keys(receiver, outbox):
    ids = lifecycle(outbox, "c-1")
    receiver.fail_next(1, status=503)  # the case itself fails once: no event may overtake it
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, **FAST))
    await deliver_until(delivery, lambda: outbox.event_counts()["delivered"] == 4)

    accepted = receiver.accepted_events("c-1")
    assert [r.key for r in accepted] == ids
    assert [r.kind for r in accepted] == ["opened", "updated", "updated", "cleared", "withdrawn"]
    assert accepted[0].path == "/cases"
    assert {r.path for r in accepted[1:]} == {"/cases/c-1/events"}
    assert accepted[3].case == outbox.events("c-1")[2].body  # the stored body is what was sent
    # each event went out only after the previous one was acknowledged
    times = [r.time for r in accepted]
    assert times == sorted(times)
    assert all(e.status == "delivered" and e.attempts == 1 for e in outbox.events("c-1"))
    assert '"ok": true' in outbox.events("c-1")[0].reply


async def test_a_failing_event_holds_back_only_its_own_case(receiver, outbox):
    lifecycle(outbox, "c-1")
    receiver.fail_key("c-1:3", 4, status=503, body=b"busy")
    outbox.enqueue(make_case("c-2"))
    outbox.add_event("c-2", "cleared", T0, {"reason": "condition_ended"}, state="cleared")
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, **FAST))
    accepted_when_c2_went = []

    def c2_delivered_then_all() -> bool:  # one run of the worker: stopping it would abandon an attempt
        if not accepted_when_c2_went and outbox.events("c-2")[0].status == "delivered":
            accepted_when_c2_went.append([r.key for r in receiver.accepted_events("c-1")])
        return outbox.event_counts()["pending"] == 0

    await deliver_until(delivery, c2_delivered_then_all)
    # c-1 was stuck at event 3 (retrying) while c-2 went through; nothing of c-1 after 3 had been sent
    assert accepted_when_c2_went == [["c-1", "c-1:2"]]
    keys = [r.key for r in receiver.requests() if r.case_id == "c-1"]
    assert keys == ["c-1", "c-1:2"] + ["c-1:3"] * 5 + ["c-1:4", "c-1:5"]
    assert outbox.events("c-1")[1].attempts == 5


async def test_a_rejected_event_is_a_dead_letter_and_a_retry_sends_it_and_the_rest(receiver, outbox):
    lifecycle(outbox, "c-1")
    receiver.fail_key("c-1:4", 1, status=422, body=b'{"error": "case already closed"}')
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, **FAST))
    await deliver_until(delivery, lambda: outbox.event_counts()["dead"] == 1)
    dead = outbox.events("c-1")[2]
    assert (dead.event_id, dead.status, dead.last_error) == ("c-1:4", "dead", "rejected with HTTP 422")
    (letter,) = outbox.dead_letters("c-1:4")
    assert letter.response_body == '{"error": "case already closed"}'
    assert outbox.dead_letters("c-1") == []  # the case itself was accepted
    assert outbox.events("c-1")[3].status == "pending"  # waits behind the dead one

    assert outbox.retry("c-1")  # `citygate cases retry c-1`: its undelivered events go again
    await deliver_until(delivery, lambda: outbox.event_counts()["pending"] == 0)
    assert [r.key for r in receiver.accepted_events("c-1")] == ["c-1", "c-1:2", "c-1:3", "c-1:4", "c-1:5"]


async def test_a_case_and_its_events_are_redelivered_with_the_same_keys(receiver, tmp_path):
    """At least once: an acknowledgement lost before it was recorded means the same key again."""
    path = tmp_path / "outbox.db"
    with Outbox(path) as ob:
        lifecycle(ob, "c-1")
        ob.mark_delivered_many(["c-1", "c-1:2"])
    with sqlite3.connect(path) as db:  # as if the process died after sending c-1:3 but before recording it
        db.execute("UPDATE events SET attempts = 1 WHERE event_id = 'c-1:3'")
    with Outbox(path) as ob:
        delivery = CentralDelivery(ob, CentralConfig(url=receiver.url, **FAST))
        await deliver_until(delivery, lambda: ob.event_counts()["pending"] == 0)
    assert [r.key for r in receiver.accepted_events("c-1")] == ["c-1:3", "c-1:4", "c-1:5"]
    assert [r.headers["idempotency-key"] for r in receiver.requests()] == ["c-1:3", "c-1:4", "c-1:5"]


async def test_events_url_template_and_evidence_as_multipart(receiver, outbox, tmp_path):
    snapshot = tmp_path / "cleared-snapshot.jpg"
    snapshot.write_bytes(b"\xff\xd8 empty kerb")
    outbox.enqueue(make_case("c-1"))
    outbox.add_event("c-1", "cleared", T0, {"reason": "condition_ended", "evidence": [
        {"name": snapshot.name, "media_type": "image/jpeg", "path": str(snapshot)}]}, state="cleared")
    url = receiver.url.removesuffix("/cases") + "/api/v2/case/{case_id}/lifecycle"
    delivery = CentralDelivery(outbox, CentralConfig(url=receiver.url, events_url=url, **FAST))
    await deliver_until(delivery, lambda: outbox.event_counts()["delivered"] == 1)
    _, cleared = receiver.accepted_events("c-1")
    assert cleared.path == "/api/v2/case/c-1/lifecycle"
    assert cleared.parts["evidence[0]"].data == b"\xff\xd8 empty kerb"
    assert cleared.case["kind"] == "cleared" and cleared.case["state"] == "cleared"


def test_counters_follow_every_change_without_scanning(tmp_path):
    path = tmp_path / "outbox.db"
    with Outbox(path, max_cases=3) as ob:
        ob.enqueue_many([make_case(f"c-{i}") for i in range(3)])
        assert not ob.has_room() and ob.fill_ratio() == 1.0
        ob.mark_delivered("c-0")
        ob.mark_dead("c-1", 422, "no")
        assert ob.counts() == {"pending": 1, "delivered": 1, "dead": 1, "stored": 0, "held": 0, "rejected": 0}
        assert ob.has_room(2) and not ob.has_room(3)
    with Outbox(path, max_cases=3) as other:  # another process (the CLI) retries a case
        assert other.retry("c-1")
    with Outbox(path, max_cases=3) as ob:
        assert ob.counts() == {"pending": 2, "delivered": 1, "dead": 0, "stored": 0, "held": 0, "rejected": 0}


def test_an_old_store_is_upgraded_in_place(tmp_path):
    """A store written before case events existed keeps its cases and gets counters and states."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE cases (case_id TEXT PRIMARY KEY, created_at REAL NOT NULL, json TEXT NOT NULL,
              status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
              last_error TEXT, delivered_at REAL, recurrences INTEGER NOT NULL DEFAULT 0,
              last_recurrence_at REAL, recurrence_facts TEXT, updated_at REAL NOT NULL);
            CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, case_id TEXT NOT NULL,
              at REAL NOT NULL, status_code INTEGER NOT NULL, response_body TEXT NOT NULL);
        """)
        js = make_case("old-1").to_json()
        db.execute("INSERT INTO cases VALUES ('old-1', 1.0, ?, 'pending', 0, 1.0, NULL, NULL, 0, NULL, NULL, 1.0)",
                   (json.dumps(js),))
    with Outbox(path) as ob:
        assert ob.counts()["pending"] == 1
        assert ob.get("old-1").state == "open"
        assert ob.add_event("old-1", "cleared", T0, {}, state="cleared").event_id == "old-1:2"
