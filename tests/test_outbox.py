"""The durable outbox / local case store on its own (no HTTP)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from outbox_worker import make_case

from gateway.outbox import Outbox, OutboxFull


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(tmp_path / "outbox.db", max_cases=10)
    yield ob
    ob.close()


def test_enqueue_is_idempotent(outbox):
    assert outbox.enqueue(make_case("c-1")) is True
    assert outbox.enqueue(make_case("c-1")) is False
    assert outbox.counts() == {"pending": 1, "delivered": 0, "dead": 0, "stored": 0, "held": 0, "rejected": 0}
    assert [i.case_id for i in outbox.due()] == ["c-1"]


def test_cases_survive_closing_and_reopening(tmp_path):
    path = tmp_path / "outbox.db"
    case = make_case("c-1", evidence=[{"media_type": "image/jpeg", "sha256": "ab", "path": "/x.jpg"}])
    with Outbox(path) as ob:
        ob.enqueue(case)
        ob.enqueue(make_case("c-2"))
        ob.mark_delivered("c-2")
        ob.mark_failed("c-1", "HTTP 500", time.time() + 60)
    with Outbox(path) as ob:
        rec = ob.get("c-1")
        assert rec.status == "pending"
        assert rec.attempts == 1
        assert rec.last_error == "HTTP 500"
        assert rec.case == case.to_json()
        assert rec.to_case().to_json() == case.to_json()
        assert ob.get("c-2").status == "delivered"
        assert ob.get("c-2").delivered_at is not None
        assert ob.due() == []  # c-1 is due in a minute
        assert [i.case_id for i in ob.due(time.time() + 61)] == ["c-1"]


def test_due_respects_retry_time_and_order(outbox):
    for i in range(3):
        outbox.enqueue(make_case(f"c-{i}"), now=1000.0 + i)
    outbox.mark_failed("c-0", "timeout", retry_at=2000.0)
    assert [i.case_id for i in outbox.due(now=1500.0)] == ["c-1", "c-2"]
    assert [i.case_id for i in outbox.due(now=2000.0)] == ["c-1", "c-2", "c-0"]
    assert [i.case_id for i in outbox.due(now=2000.0, limit=1)] == ["c-1"]
    assert outbox.next_due_after(1500.0) == 2000.0
    assert outbox.next_due_after(2000.0) is None


def test_full_at_bound_and_near_full_at_80_percent(outbox):
    for i in range(7):
        outbox.enqueue(make_case(f"c-{i}"))
    assert outbox.fill_ratio() == pytest.approx(0.7)
    assert not outbox.is_near_full()
    outbox.enqueue(make_case("c-7"))
    assert outbox.is_near_full()
    outbox.enqueue(make_case("c-8"))
    outbox.enqueue(make_case("c-9"))
    with pytest.raises(OutboxFull, match="10 of 10"):
        outbox.enqueue(make_case("c-10"))
    assert outbox.get("c-10") is None
    outbox.mark_delivered("c-0")  # delivery makes room again
    assert outbox.enqueue(make_case("c-10"))
    outbox.mark_dead("c-1", 422, b"bad")
    assert outbox.fill_ratio() == pytest.approx(0.9)


def test_dead_letter_keeps_body_and_retry_moves_it_back(outbox):
    outbox.enqueue(make_case("c-1"))
    outbox.mark_dead("c-1", 422, b'{"error": "unknown grid code"}')
    rec = outbox.get("c-1")
    assert rec.status == "dead"
    assert rec.dead_letter.status_code == 422
    assert rec.dead_letter.response_body == '{"error": "unknown grid code"}'
    assert outbox.due() == []
    assert [r.case_id for r in outbox.list(status="dead")] == ["c-1"]

    assert outbox.retry("c-1") is True
    assert outbox.get("c-1").status == "pending"
    assert [i.case_id for i in outbox.due()] == ["c-1"]
    assert len(outbox.dead_letters("c-1")) == 1  # the history stays
    assert outbox.retry("nope") is False
    outbox.mark_delivered("c-1")
    assert outbox.retry("c-1") is False


def test_dead_letter_body_is_truncated(outbox):
    outbox.enqueue(make_case("c-1"))
    outbox.mark_dead("c-1", 400, b"x" * 200_000)
    assert len(outbox.get("c-1").dead_letter.response_body) == 64 * 1024


def test_recurrences_travel_with_a_pending_case(outbox):
    outbox.enqueue(make_case("c-1"))
    at = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

    def recur(case_id, facts, when=at):
        return outbox.add_event(case_id, "updated", when, {"reason": "recurrence"}, recurrence=True,
                                recurrence_facts=facts)

    assert recur("c-1", {"dwell_s": 900}).seq == 2
    assert recur("c-1", None).seq == 3
    assert recur("unknown", None) is None
    (item,) = outbox.due()
    assert item.payload["recurrences"] == 2
    assert item.payload["last_recurrence_at"] == at.isoformat()
    assert item.payload["recurrence_facts"] == {"dwell_s": 900}
    assert outbox.get("c-1").recurrences == 2
    with pytest.raises(ValueError, match="timezone-aware"):
        recur("c-1", None, when=datetime(2026, 1, 1))


def test_list_newest_first_and_counts(outbox):
    for i in range(4):
        outbox.enqueue(make_case(f"c-{i}"), now=1000.0 + i)
    outbox.mark_delivered("c-1")
    assert [r.case_id for r in outbox.list()] == ["c-3", "c-2", "c-1", "c-0"]
    assert [r.case_id for r in outbox.list(limit=2)] == ["c-3", "c-2"]
    assert [r.case_id for r in outbox.list(status="delivered")] == ["c-1"]
    assert outbox.counts()["pending"] == 3
    with pytest.raises(ValueError, match="unknown case status"):
        outbox.list(status="lost")


def test_delivered_cases_are_pruned_but_pending_never(tmp_path):
    with Outbox(tmp_path / "o.db", keep_done=5) as ob:
        for i in range(130):
            ob.enqueue(make_case(f"c-{i:03d}"), now=1000.0 + i)
        for i in range(120):
            ob.mark_delivered(f"c-{i:03d}", now=2000.0 + i)
        counts = ob.counts()
        assert counts["pending"] == 10
        assert counts["delivered"] < 120
        assert ob.get("c-119").status == "delivered"  # the newest are kept
        assert ob.get("c-000") is None


def test_without_central_platform_cases_are_stored(tmp_path):
    with Outbox(tmp_path / "o.db", max_cases=2, deliver=False) as ob:
        for i in range(5):  # not bounded: nothing waits for delivery
            ob.enqueue(make_case(f"c-{i}"))
        assert ob.counts()["stored"] == 5
        assert ob.due() == [] and ob.fill_ratio() == 0
        assert ob.retry("c-0")
        assert [i.case_id for i in ob.due()] == ["c-0"]


def test_concurrent_enqueue_from_threads(outbox):
    outbox.max_cases = 1000

    def put(k: int) -> None:
        for i in range(25):
            outbox.enqueue(make_case(f"t{k}-{i}"))

    threads = [threading.Thread(target=put, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outbox.counts()["pending"] == 100
    assert outbox.fill_ratio() == pytest.approx(0.1)


def test_another_process_view_sees_committed_cases(tmp_path):
    # The CLI opens the same file while the gateway runs.
    path = tmp_path / "o.db"
    with Outbox(path) as gateway, Outbox(path) as cli:
        gateway.enqueue(make_case("c-1"))
        assert cli.get("c-1").status == "pending"
        assert cli.retry("c-1")
