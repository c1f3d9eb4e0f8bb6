"""Case desk: catalog lookup, grid codes, evidence files, dedup and recurrences."""

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.model import Alert, Evidence
from gateway.cases import CaseDesk
from gateway.catalog import Catalog, CatalogError
from gateway.geo import GridIndex

GRID = Path(__file__).resolve().parent.parent / "gateway" / "data" / "demo_grid.geojson"
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=CST)


class MemoryOutbox:
    def __init__(self):
        self.cases = {}
        self.recurrences = []

    def enqueue(self, case):
        if case.case_id in self.cases:
            return False
        self.cases[case.case_id] = case
        return True

    def add_recurrence(self, case_id, at, facts=None):
        self.recurrences.append((case_id, at))


def parking(t, state="open", track=7, lon=116.3925, lat=39.9025, **kw):
    return Alert(rule="no-parking-east-gate", subject_kind="camera", subject_id="cam-01", state=state, time=t,
                 source="video", category="illegal_parking", place="east-gate", lon=lon, lat=lat, track_id=track,
                 facts={"dwell_s": 310, "object": "car"},
                 evidence=(Evidence("snapshot.jpg", "image/jpeg", b"\xff\xd8jpegbytes"),), **kw)


@pytest.fixture
def desk(tmp_path):
    outbox = MemoryOutbox()
    d = CaseDesk(catalog=Catalog.load(), grid=GridIndex.load(GRID), outbox=outbox, evidence_dir=tmp_path / "ev",
                 state_path=tmp_path / "state.sqlite3", gateway_id="edge-07", timezone=CST, cooldown_s=600)
    yield d, outbox
    d.close()


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
    assert d.handle(parking(T0 + timedelta(seconds=30))).kind == "recurrence"
    d.handle(parking(T0 + timedelta(seconds=60), state="closed"))
    again = d.handle(parking(T0 + timedelta(seconds=300)))  # 4 min after it cleared: within cooldown
    assert again.kind == "recurrence" and again.case_id == first.case_id
    assert len(outbox.cases) == 1 and len(outbox.recurrences) == 2


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
    outbox = MemoryOutbox()
    kwargs = dict(catalog=Catalog.load(), grid=GridIndex.load(GRID), outbox=outbox, evidence_dir=tmp_path / "ev",
                  state_path=tmp_path / "state.sqlite3", gateway_id="edge-07", timezone=CST)
    d1 = CaseDesk(**kwargs)
    d1.handle(parking(T0))
    d1.close()
    d2 = CaseDesk(**kwargs)
    assert d2.handle(parking(T0 + timedelta(seconds=20))).kind == "recurrence"
    d2.close()


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
