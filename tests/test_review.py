"""Review before dispatch: a held case reaches the local receiver (tests/central_receiver.py) only once
an operator confirms it in the console, a rejected one never does, a rejection of a case already
sent is a withdrawn event; roles and CSRF guard the forms and API; each rule's precision; the
labelled data set of reviewed video cases; a review entry naming no rule is a config error."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from central_receiver import CentralReceiver
from PIL import Image

from core.model import Alert, Case
from gateway.cli import main
from gateway.config import ConfigError
from gateway.deployment import load_deployment
from gateway.outbox import Outbox, ReviewError
from gateway.runtime import Gateway
from gateway.web.auth import hash_password

PASSWORDS = {"vera": "viewer-pass-1", "otto": "operator-pass-2"}
OP_TOKEN = "op-token-" + "x" * 24


def site_config(tmp_path: Path, central_url: str, review: str = "{forbidden_zone: review}") -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""
        site: review
        data_dir: data
        central: {{url: '{central_url}', poll_s: 0.2, backoff_initial_s: 0.2, backoff_max_s: 1}}
        cases:
          review: {{default: auto, rules: {review}}}
        web:
          host: 127.0.0.1
          port: 0
          users:
            - {{name: vera, role: viewer, password_hash: '{hash_password(PASSWORDS["vera"])}'}}
            - {{name: otto, role: operator, password_hash: '{hash_password(PASSWORDS["otto"])}'}}
          tokens: [{{name: dispatch, role: operator, token: {OP_TOKEN}}}]
        """), encoding="utf-8")
    return path


def truck_alert(rule: str, vehicle: str, state: str = "open") -> Alert:
    category = {"forbidden_zone": "muck_truck_forbidden_zone", "overspeed": "vehicle_overspeed"}[rule]
    return Alert(rule=rule, subject_kind="vehicle", subject_id=vehicle, state=state, time=datetime.now(UTC),
                 source="vehicle", category=category, place="school", lon=116.40, lat=39.91,
                 message=f"{vehicle} {rule}", facts={"zone": "school"})


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def login(c: httpx.AsyncClient, user: str) -> None:
    page = await c.get("/login")
    r = await c.post("/login", data={"user": user, "password": PASSWORDS[user], "csrf": csrf_of(page.text),
                                     "next": "/"})
    assert r.status_code == 303


async def until(predicate, what: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_held_cases_wait_for_an_operator_rejected_ones_are_never_sent(tmp_path):
    with CentralReceiver() as rx:
        gateway = Gateway(load_deployment(site_config(tmp_path, rx.url)))
        await gateway.start()
        try:
            base = f"http://127.0.0.1:{gateway.component('web').port}"
            for vehicle in ("A", "B", "C"):
                gateway.bus.submit(truck_alert("forbidden_zone", f"京A0000{vehicle}"))
            gateway.bus.submit(truck_alert("overspeed", "京A0000D"))
            await until(lambda: gateway.desk.stats["cases"] == 4, "four cases filed")
            ids = {r.case["subject"]["id"][-1]: r.case_id for r in gateway.outbox.list(limit=10)}
            a, b, c, d = ids["A"], ids["B"], ids["C"], ids["D"]
            # the auto case is sent; the held ones, filed before it, are not
            await until(lambda: d in rx.accepted_ids(), "the auto case delivered")
            assert not {a, b, c} & set(rx.accepted_ids())
            assert {gateway.outbox.get(x).status for x in (a, b, c)} == {"held"}

            async with (httpx.AsyncClient(base_url=base, timeout=20) as viewer,
                        httpx.AsyncClient(base_url=base, timeout=20) as operator,
                        httpx.AsyncClient(base_url=base, timeout=20,
                                          headers={"Authorization": f"Bearer {OP_TOKEN}"}) as dispatch):
                await login(viewer, "vera")
                await login(operator, "otto")
                todo = await operator.get("/review")
                assert todo.status_code == 200 and "To review (3)" in todo.text and a in todo.text
                page = await viewer.get(f"/cases/{a}")
                assert "Held for review" in page.text and "Confirm and send" not in page.text
                assert "An operator can confirm or reject" in page.text
                r = await viewer.post(f"/cases/{a}/confirm", data={"csrf": csrf_of(page.text)})
                assert r.status_code == 403 and "needs the operator role" in r.text
                r = await viewer.post(f"/api/cases/{a}/confirm", headers={"X-CSRF-Token": csrf_of(page.text)})
                assert r.status_code == 403
                page = await operator.get(f"/cases/{a}")
                assert "Confirm and send" in page.text and "Reject" in page.text
                assert (await operator.post(f"/cases/{a}/confirm", data={})).status_code == 403  # no CSRF token
                assert (await operator.post(f"/api/cases/{a}/confirm")).status_code == 403
                assert gateway.outbox.get(a).status == "held"

                # an operator confirms A in the console: it is sent, and its later events follow
                r = await operator.post(f"/cases/{a}/confirm", data={"csrf": csrf_of(page.text), "reason": "seen"})
                assert r.status_code == 303 and r.headers["location"].endswith("?reviewed=confirmed")
                await until(lambda: a in rx.accepted_ids(), "the confirmed case delivered")
                gateway.bus.submit(truck_alert("forbidden_zone", "京A0000A", state="closed"))
                await until(lambda: [e.kind for e in rx.accepted_events(a)] == ["opened", "cleared"],
                            "the confirmed case's cleared event")
                r = await dispatch.post(f"/api/cases/{a}/confirm")
                assert r.status_code == 409 and "already confirmed by otto" in r.json()["error"]

                # B is rejected (a reason is required); its later events are never sent either
                page = await operator.get(f"/cases/{b}")
                r = await operator.post(f"/cases/{b}/reject", data={"csrf": csrf_of(page.text)})
                assert r.status_code == 400 and gateway.outbox.get(b).status == "held"
                r = await operator.post(f"/cases/{b}/reject", data={"csrf": csrf_of(page.text),
                                                                      "reason": "a parked sweeper, not a muck truck"})
                assert r.status_code == 303
                gateway.bus.submit(truck_alert("forbidden_zone", "京A0000B", state="closed"))
                # C, confirmed through the API after that, goes out; B and its events never do
                r = await dispatch.post(f"/api/cases/{c}/confirm", json={"reason": "checked on camera"})
                assert r.status_code == 200 and r.json() == {"case_id": c, "review": "confirmed", "status": "pending"}
                await until(lambda: c in rx.accepted_ids(), "the second confirmed case delivered")
                assert b not in rx.accepted_ids()
                rec = gateway.outbox.get(b)
                assert rec.status == "rejected" and rec.state == "withdrawn"
                assert rec.review["by"] == "otto" and rec.review["reason"] == "a parked sweeper, not a muck truck"
                await until(lambda: gateway.desk.stats["closed"] == 2, "B's close handled")
                assert gateway.outbox.events(b) == []  # withdrawn: its clearing is not even an event
                assert (await dispatch.post(f"/api/cases/{b}/retry")).status_code == 409  # never sent, even so

                # D was sent at once: rejecting it withdraws it through a lifecycle event
                r = await dispatch.post(f"/api/cases/{d}/reject", json={"reason": "speedometer glitch"})
                assert r.status_code == 200 and r.json()["event_id"] == f"{d}:2"
                await until(lambda: [e.kind for e in rx.accepted_events(d)] == ["opened", "withdrawn"],
                            "the withdrawal of a delivered case")
                withdrawn = rx.accepted_events(d)[1].case
                assert withdrawn["reason"] == "speedometer glitch" and withdrawn["by"] == "dispatch"

                precision = (await viewer.get("/api/review/precision")).json()
                assert precision["windows_days"] == [7, 30]
                assert precision["rules"]["forbidden_zone"]["7"] == {"confirmed": 2, "rejected": 1, "reviewed": 3,
                                                                     "precision": 0.6667}
                assert precision["rules"]["overspeed"]["30"]["precision"] == 0.0
                todo = await viewer.get("/review")
                assert "To review (0)" in todo.text and "67%" in todo.text
                doc = (await viewer.get("/api/openapi.json")).json()
                assert {"/api/cases/{case_id}/confirm", "/api/cases/{case_id}/reject",
                        "/api/review/precision"} <= set(doc["paths"])
        finally:
            assert await gateway.shutdown()
    assert sorted(set(rx.accepted_ids())) == sorted({a, c, d})


def case(case_id: str, when: datetime, rule: str = "forbidden_zone") -> Case:
    return Case(case_id=case_id, source="vehicle", rule=rule, severity="warning",
                category={"key": "muck_truck_forbidden_zone", "name": "渣土车闯禁区"}, detected_at=when,
                location={}, subject={"kind": "vehicle", "id": case_id}, evidence=(), facts={})


def test_review_in_the_store_holds_confirms_rejects_and_counts(tmp_path):
    now = datetime.now(UTC)
    with Outbox(tmp_path / "cases.sqlite3", max_cases=3) as ob:
        ob.enqueue(case("h-1", now), held=True)
        ob.enqueue(case("h-2", now), held=True)
        ob.enqueue(case("p-1", now, rule="overspeed"))
        assert [i.case_id for i in ob.due(now + timedelta(minutes=1))] == ["p-1"]
        assert not ob.has_room()  # held cases count against the bound: they are still to be sent
        assert ob.add_event("h-1", "updated", now, {"reason": "recurrence"}).status == "pending"
        assert ob.due_events(now + timedelta(minutes=1)) == []  # it waits with its case
        assert ob.retry("h-1") is False  # only a review releases a held case
        assert ob.confirm("h-1", "otto") == "pending"
        assert {i.case_id for i in ob.due(now + timedelta(minutes=1))} == {"h-1", "p-1"}
        ob.mark_delivered("h-1")
        assert [e.event_id for e in ob.due_events(now + timedelta(minutes=1))] == ["h-1:2"]
        with pytest.raises(ValueError, match="needs a reason"):
            ob.reject("h-2", " ", "otto")
        assert ob.reject("h-2", "not a truck", "otto") == ("rejected", None)
        assert ob.add_event("h-2", "cleared", now, {}).status == "rejected"  # a late event of it stays local
        with pytest.raises(ReviewError, match="already rejected by otto"):
            ob.reject("h-2", "again", "ada")
        with pytest.raises(ReviewError, match="already rejected"):
            ob.confirm("h-2", "ada")
        status, event = ob.reject("p-1", "glitch", "ada")  # pending: perhaps in flight, so withdrawn
        assert status == "pending" and event.kind == "withdrawn"
        assert ob.confirm("nope", "otto") is None and ob.reject("nope", "x", "otto") is None
        assert ob.counts()["held"] == 0 and ob.counts()["rejected"] == 1
        assert ob.review_counts(now - timedelta(days=7)) == {"forbidden_zone": (1, 1), "overspeed": (0, 1)}
        assert ob.review_counts(now + timedelta(days=1)) == {}
        assert ob.get("h-1").to_json()["review"]["decision"] == "confirmed"
    # another process (the CLI) sees the same review state
    with Outbox(tmp_path / "cases.sqlite3") as ob:
        assert [r.case_id for r in ob.reviewed(source="vehicle")] == ["h-1", "h-2", "p-1"]


def jpeg(size=(640, 360)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(buf, "JPEG")
    return buf.getvalue()


def video_case(root: Path, case_id: str, when: datetime, facts: dict, files=("snapshot.jpg",)) -> Case:
    folder = root / when.strftime("%Y%m%d") / case_id
    folder.mkdir(parents=True)
    evidence = []
    for name in files:
        data = jpeg()
        (folder / name).write_bytes(data)
        evidence.append({"name": name, "media_type": "image/jpeg", "path": str(folder / name),
                         "sha256": hashlib.sha256(data).hexdigest(), "size": str(len(data))})
    return Case(case_id=case_id, source="video", rule="no-parking", severity="warning",
                category={"key": "illegal_parking", "name": "机动车乱停放"}, detected_at=when, location={},
                subject={"kind": "camera", "id": "cam-1"}, evidence=tuple(evidence), facts=facts)


def test_reviewed_video_cases_export_as_a_yolo_data_set(tmp_path, capsys):
    config = tmp_path / "site.yaml"
    config.write_text("site: ds\ndata_dir: data\n", encoding="utf-8")
    root = tmp_path / "data" / "evidence"
    now = datetime.now(UTC)
    cases = [
        video_case(root, "v-car", now, {"object": "car", "box": [64.0, 36.0, 192.0, 144.0]}),
        video_case(root, "v-person", now, {"object": "person", "box": [320, 0, 640, 360]}),
        video_case(root, "v-truck", now, {"object": "truck", "box": [0, 0, 64, 36]}, files=("frame.jpg", "snapshot.jpg")),
        video_case(root, "v-nobox", now, {"object": "car"}),
        video_case(root, "v-patrol", now, {"object": "car", "box": [1, 1, 9, 9], "first_seen": now.isoformat()}),
        video_case(root, "v-outside", now, {"object": "car", "box": [600, 300, 700, 400]}),
        video_case(root, "v-unreviewed", now, {"object": "car", "box": [1, 1, 9, 9]}),
    ]
    with Outbox(tmp_path / "data" / "cases.sqlite3", deliver=False) as ob:
        ob.enqueue_many(cases, held=True)
        ob.enqueue(case("vehicle-1", now), held=True)
        for cid in ("v-car", "v-truck", "v-nobox", "v-patrol", "v-outside", "vehicle-1"):
            assert ob.confirm(cid, "otto") == "stored"  # no central platform: kept locally
        assert ob.reject("v-person", "a statue", "otto") == ("rejected", None)
    out = tmp_path / "set"
    assert main(["cases", "--config", str(config), "export-dataset", str(out), "--since", "1d"]) == 0
    printed = capsys.readouterr().out
    assert "2 confirmed, 1 rejected" in printed and "skipped 1: patrol side-by-side picture" in printed
    assert "skipped 1: box outside the image" in printed and "skipped 1: no box or label" in printed
    classes = (out / "classes.txt").read_text().split()
    assert sorted(classes) == ["car", "person", "truck"]
    assert sorted(p.name for p in (out / "confirmed" / "images").iterdir()) == ["v-car.jpg", "v-truck.jpg"]
    assert [p.name for p in (out / "rejected" / "labels").iterdir()] == ["v-person.txt"]
    car = (out / "confirmed" / "labels" / "v-car.txt").read_text().split()
    assert car == [str(classes.index("car")), "0.200000", "0.250000", "0.200000", "0.300000"]
    person = (out / "rejected" / "labels" / "v-person.txt").read_text().split()
    assert person == [str(classes.index("person")), "0.750000", "0.500000", "0.500000", "1.000000"]
    # the bare frame is preferred to the annotated snapshot when a case keeps one
    truck_dir = root / now.strftime("%Y%m%d") / "v-truck"
    assert (out / "confirmed" / "images" / "v-truck.jpg").read_bytes() == (truck_dir / "frame.jpg").read_bytes()
    # a later export into the same folder keeps the class ids
    (out / "classes.txt").write_text("bus\n" + "".join(f"{c}\n" for c in classes))
    assert main(["cases", "--config", str(config), "export-dataset", str(out)]) == 0
    assert (out / "classes.txt").read_text().split() == ["bus", *classes]
    assert (out / "confirmed" / "labels" / "v-car.txt").read_text().split()[0] == str(1 + classes.index("car"))
    assert main(["cases", "--config", str(config), "precision", "--json"]) == 0
    capsys.readouterr()


def test_cli_confirms_and_rejects_held_cases(tmp_path, capsys):
    config = site_config(tmp_path, "http://127.0.0.1:9/cases")
    now = datetime.now(UTC)
    with Outbox(tmp_path / "data" / "cases.sqlite3") as ob:
        ob.enqueue(case("c-1", now), held=True)
        ob.enqueue(case("c-2", now), held=True)
    assert main(["cases", "--config", str(config), "list", "--status", "held", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 2
    assert main(["cases", "--config", str(config), "confirm", "c-1", "--by", "otto"]) == 0
    assert "confirmed by otto, now pending" in capsys.readouterr().out
    assert main(["cases", "--config", str(config), "reject", "c-2", "--reason", "duplicate", "--by", "otto"]) == 0
    assert "never sent" in capsys.readouterr().out
    assert main(["cases", "--config", str(config), "reject", "c-2", "--reason", "again"]) == 1
    with Outbox(tmp_path / "data" / "cases.sqlite3") as ob:
        ob.enqueue(case("c-3", now), held=True)
    assert main(["cases", "--config", str(config), "withdraw", "c-3", "--reason", "dup", "--by", "ada"]) == 0
    assert "never sent" in capsys.readouterr().out  # withdrawing a held case rejects it
    assert main(["cases", "--config", str(config), "precision", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forbidden_zone"]["7"]["reviewed"] == 3


def test_a_review_entry_naming_no_rule_is_a_config_error(tmp_path):
    config = site_config(tmp_path, "http://127.0.0.1:9/cases", review="{overspeeed: review}")
    with pytest.raises(ConfigError) as err:
        load_deployment(config)
    assert any(p.startswith("cases.review.rules.overspeeed: no configured rule") and "'overspeed'" in p
               for p in err.value.problems)
