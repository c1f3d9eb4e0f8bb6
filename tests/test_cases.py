"""Case desk: catalog lookup, grid codes, evidence files, dedup and recurrences."""

import hashlib
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.model import Alert, Evidence
from gateway.cases import CaseDesk
from gateway.catalog import Catalog, CatalogError
from gateway.geo import GridIndex
from gateway.outbox import Outbox

GRID = Path(__file__).resolve().parent.parent / "gateway" / "data" / "demo_grid.geojson"
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=CST)


class Store:
    """The real outbox, with the views these tests read."""

    def __init__(self, path, **kw):
        self.outbox = Outbox(path, **kw)

    @property
    def cases(self):
        return {r.case_id: r.to_case() for r in self.outbox.list(limit=1000)}

    def events(self, case_id):
        return [(e.kind, e.body.get("reason")) for e in self.outbox.events(case_id)]


def parking(t, state="open", track=7, lon=116.3925, lat=39.9025, **kw):
    return Alert(rule="no-parking-east-gate", subject_kind="camera", subject_id="cam-01", state=state, time=t,
                 source="video", category="illegal_parking", place="east-gate", lon=lon, lat=lat, track_id=track,
                 facts={"dwell_s": 310, "object": "car"},
                 evidence=(Evidence("snapshot.jpg", "image/jpeg", b"\xff\xd8jpegbytes"),), **kw)


def make_desk(tmp_path, **outbox_kw):
    store = Store(tmp_path / "cases.sqlite3", **outbox_kw)
    d = CaseDesk(catalog=Catalog.load(), grid=GridIndex.load(GRID), outbox=store.outbox,
                 evidence_dir=tmp_path / "ev", state_path=tmp_path / "state.sqlite3", gateway_id="edge-07",
                 timezone=CST, cooldown_s=600)
    return d, store


@pytest.fixture
def desk(tmp_path):
    d, store = make_desk(tmp_path)
    yield d, store
    d.close()
    store.outbox.close()


def test_open_alert_becomes_a_case_with_category_grid_and_evidence(desk):
    d, outbox = desk
    outcome = d.handle(parking(T0))
    assert outcome.kind == "new"
    case = outbox.cases[outcome.case_id]
    assert case.case_id.startswith("edge-07-") and len(case.case_id) == len("edge-07-") + 26
    assert case.category["name"] == "机动车乱停放" and case.category["type"] == "event"
    assert case.location["grid_code"] == "11010100100101"
    assert case.location["street"] == "东华门街道"
    assert case.subject == {"kind": "camera", "id": "cam-01", "place": "east-gate", "track_id": 7}
    assert case.detected_at.utcoffset() == timedelta(hours=8)
    (evidence,) = case.evidence
    stored = Path(evidence["path"]).read_bytes()
    assert stored == b"\xff\xd8jpegbytes"
    assert evidence["sha256"] == hashlib.sha256(stored).hexdigest()
    assert case.to_json()["category"]["code"] == "0505"


def test_repeat_while_open_and_within_cooldown_is_a_recurrence(desk):
    d, outbox = desk
    first = d.handle(parking(T0))
    assert d.handle(parking(T0 + timedelta(seconds=30))).kind == "updated"
    assert d.handle(parking(T0 + timedelta(seconds=60), state="closed")).kind == "cleared"
    again = d.handle(parking(T0 + timedelta(seconds=300)))  # 4 min after it cleared: within cooldown
    assert again.kind == "updated" and again.case_id == first.case_id
    assert len(outbox.cases) == 1 and outbox.outbox.get(first.case_id).recurrences == 2
    assert outbox.events(first.case_id) == [("updated", "recurrence"), ("cleared", "condition_ended"),
                                            ("updated", "reopened")]
    assert outbox.outbox.case_state(first.case_id) == ("open", "warning")
    # the reopening alert's snapshot is new evidence: it goes with the event, beside the case's files
    (snap,) = outbox.outbox.events(first.case_id)[-1].body["evidence"]
    assert Path(snap["path"]).name.startswith("updated-") and Path(snap["path"]).parent.name == first.case_id
    assert Path(snap["path"]).read_bytes() == b"\xff\xd8jpegbytes"


def test_after_cooldown_a_new_case_opens(desk):
    d, outbox = desk
    d.handle(parking(T0))
    d.handle(parking(T0 + timedelta(seconds=60), state="closed"))
    later = d.handle(parking(T0 + timedelta(seconds=60 + 601)))
    assert later.kind == "new" and len(outbox.cases) == 2


def test_different_cell_or_object_is_a_different_case(desk):
    d, outbox = desk
    d.handle(parking(T0))
    assert d.handle(parking(T0, track=8)).kind == "new"
    assert d.handle(parking(T0, lon=116.4075, lat=39.9175)).kind == "new"
    assert len(outbox.cases) == 3


def test_alert_without_category_makes_no_case(desk):
    d, outbox = desk
    alert = Alert(rule="camera_offline", subject_kind="camera", subject_id="cam-01", state="open", time=T0,
                  source="video")
    assert d.handle(alert) is None and not outbox.cases


def test_dedup_state_survives_a_restart(tmp_path):
    d1, store = make_desk(tmp_path)
    d1.handle(parking(T0))
    d1.close()
    d2 = CaseDesk(catalog=Catalog.load(), grid=GridIndex.load(GRID), outbox=store.outbox,
                  evidence_dir=tmp_path / "ev", state_path=tmp_path / "state.sqlite3", gateway_id="edge-07",
                  timezone=CST)
    assert d2.handle(parking(T0 + timedelta(seconds=20))).kind == "updated"
    d2.close()
    store.outbox.close()


def test_point_outside_grid_still_makes_a_case_without_grid_code(desk):
    d, outbox = desk
    outcome = d.handle(parking(T0, lon=100.0, lat=30.0))
    assert outbox.cases[outcome.case_id].location["grid_code"] is None


def test_city_catalog_file_overrides_and_extends(tmp_path):
    city = tmp_path / "city.yaml"
    city.write_text("entries:\n  illegal_parking: {type: event, major: '05', minor: '15', name: 机动车违停}\n"
                    "  shared_bikes: {type: event, major: '05', minor: '16', name: 共享单车乱停放}\n")
    catalog = Catalog.load([city])
    assert catalog["illegal_parking"].minor == "15"
    assert catalog["shared_bikes"].major_name == "街面秩序"
    city.write_text("entries:\n  x: {type: event, major: '77', minor: '01', name: 未知}\n")
    with pytest.raises(CatalogError, match=r"entries\.x\.major"):
        Catalog.load([city])


def level(t, severity, state="open", value=25.0):
    return Alert(rule="underpass-flooding", subject_kind="sensor", subject_id="wl-01", state=state, time=t,
                 source="sensor", severity=severity, category="road_flooding", place="underpass-flooding",
                 lon=116.3925, lat=39.9025, facts={"value": value, "unit": "cm"})


def test_escalation_raises_the_case_severity_and_a_clear_records_its_evidence(desk):
    d, store = desk
    opened = d.handle(level(T0, "warning"))
    up = d.handle(level(T0 + timedelta(minutes=5), "critical", value=40.0))
    assert up.kind == "updated" and up.event.body["reason"] == "escalated"
    assert up.event.body["severity"] == "critical" and up.event.body["previous_severity"] == "warning"
    assert store.outbox.case_state(opened.case_id) == ("open", "critical")
    assert store.outbox.get(opened.case_id).to_json()["current_severity"] == "critical"
    # a repeat at the same (or lower) severity is a recurrence, not another escalation
    assert d.handle(level(T0 + timedelta(minutes=6), "warning")).event.body["reason"] == "recurrence"
    close = replace(level(T0 + timedelta(minutes=30), "critical", state="closed", value=3.0),
                    evidence=(Evidence("snapshot.jpg", "image/jpeg", b"empty kerb"),))
    cleared = d.handle(close)
    assert cleared.kind == "cleared" and [e.seq for e in store.outbox.events(opened.case_id)] == [2, 3, 4]
    (ev,) = cleared.event.body["evidence"]
    assert Path(ev["path"]).read_bytes() == b"empty kerb" and Path(ev["path"]).name.startswith("cleared-")
    assert Path(ev["path"]).parent.name == opened.case_id  # beside the case's own evidence
    assert store.outbox.case_state(opened.case_id)[0] == "cleared"


def test_a_withdrawn_case_sends_nothing_more(desk):
    d, store = desk
    opened = d.handle(parking(T0))
    event = d.withdraw(opened.case_id, "a delivery van with a permit", by="operator-7")
    assert event.kind == "withdrawn" and event.body["reason"] == "a delivery van with a permit"
    assert event.body["by"] == "operator-7" and event.seq == 2
    assert d.withdraw(opened.case_id, "again", by="operator-7") is None  # already withdrawn
    again = d.handle(parking(T0 + timedelta(seconds=30)))
    assert again.kind == "recurrence" and again.event is None and not again.committed
    assert d.handle(parking(T0 + timedelta(seconds=60), state="closed")) is None
    assert store.events(opened.case_id) == [("withdrawn", "a delivery van with a permit")]
    assert d.stats["withdrawn_recurrences"] == 1


def test_full_outbox_refuses_a_case_before_writing_its_evidence(tmp_path):
    d, store = make_desk(tmp_path, max_cases=2)
    assert d.handle(parking(T0)).kind == "new"
    assert d.handle(parking(T0, track=8)).kind == "new"
    folders = sorted((tmp_path / "ev").rglob("edge-07-*"))
    refused = d.handle(parking(T0, track=9))
    assert refused.kind == "refused" and not refused.committed
    assert sorted((tmp_path / "ev").rglob("edge-07-*")) == folders  # no orphan evidence folder
    assert d.stats["refused_full"] == 1 and len(store.cases) == 2
    d.close()
    store.outbox.close()


def test_a_failed_evidence_write_leaves_no_folder_and_a_retry_files_the_case_once(tmp_path, monkeypatch):
    import errno

    import gateway.cases as cases_module

    d, store = make_desk(tmp_path)
    real = cases_module.write_durably
    full = {"on": True}

    def write(path, data):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(cases_module, "write_durably", write)
    alert = parking(T0)
    with pytest.raises(OSError):
        d.handle(alert)
    assert not list((tmp_path / "ev").rglob("edge-07-*")) and not store.cases
    full["on"] = False
    assert d.handle(alert).kind == "new" and len(store.cases) == 1
    d.close()
    store.outbox.close()
