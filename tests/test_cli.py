"""`citygate cases list|show|retry` on a real case store, and `citygate replay` on a real clip."""

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from core.model import Case
from gateway.cli import main
from gateway.outbox import Outbox

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "fixtures" / "video" / "pedestrians_480x360_10fps.mp4"


def case(case_id: str) -> Case:
    return Case(case_id=case_id, source="video", rule="no-parking", severity="warning",
                category={"key": "illegal_parking", "type": "event", "major": "05", "minor": "05",
                          "name": "机动车乱停放"},
                detected_at=datetime(2026, 11, 23, 1, 0, tzinfo=UTC), location={"grid_code": "11010100100101"},
                subject={"kind": "camera", "id": "cam-1"}, evidence=(), facts={"dwell_s": 300})


def site(tmp_path: Path) -> Path:
    config = tmp_path / "site.yaml"
    config.write_text("site: cli\ndata_dir: data\ncentral: {url: 'http://127.0.0.1:9/cases'}\n", encoding="utf-8")
    with Outbox(tmp_path / "data" / "cases.sqlite3") as outbox:
        outbox.enqueue(case("cli-A"))
        outbox.enqueue(case("cli-B"))
        outbox.mark_dead("cli-B", 422, '{"error": "grid_code unknown"}')
    return config


def test_cases_list_show_and_retry(tmp_path, capsys):
    config = str(site(tmp_path))
    assert main(["cases", "--config", config, "list"]) == 0
    out = capsys.readouterr().out
    assert "pending 1" in out and "dead 1" in out and "cli-A" in out and "机动车乱停放" in out

    assert main(["cases", "--config", config, "list", "--status", "dead", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    (listed,) = listing["cases"]
    assert listed["case_id"] == "cli-B" and listed["status"] == "dead"
    assert listing["total"] == 1 and listing["left_out"] == 0

    assert main(["cases", "--config", config, "show", "cli-B"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["dead_letters"][0]["status_code"] == 422
    assert "grid_code unknown" in shown["dead_letters"][0]["response_body"]

    assert main(["cases", "--config", config, "retry", "cli-B"]) == 0
    capsys.readouterr()
    with Outbox(tmp_path / "data" / "cases.sqlite3") as outbox:
        assert outbox.get("cli-B").status == "pending"
    assert main(["cases", "--config", config, "show", "nope"]) == 1
    assert "no case nope" in capsys.readouterr().err


def test_replay_prints_the_cases_a_camera_would_file(tmp_path, capsys):
    config = tmp_path / "site.yaml"
    config.write_text(textwrap.dedent(f"""
        data_dir: data
        video:
          detector: {{model: {REPO / "models" / "yolov8n_int8.onnx"}}}
          cameras:
            - name: cam-demo
              url: {CLIP}
              zones: [{{name: kerb, polygon: [[390, 15], [480, 15], [480, 75], [390, 75]]}}]
              rules:
                - {{name: no-parking, kind: dwell, zone: kerb, classes: [car, truck], min_seconds: 8,
                   category: illegal_parking}}
        """), encoding="utf-8")
    assert main(["replay", "--camera", "cam-demo", "--config", str(config), "--no-progress", str(CLIP)]) == 0
    out = capsys.readouterr().out
    assert "case(s) would be created" in out
    assert out.count("illegal_parking") >= 1 and "zone=kerb" in out
    assert main(["replay", "--camera", "nope", "--config", str(config), str(CLIP)]) == 2
    assert "no camera named 'nope'" in capsys.readouterr().err


def test_log_json_writes_one_json_object_per_line(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "site.yaml"
    config.write_text("site: logs\ndata_dir: data\nweb: {enabled: false}\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "--log-json", "run", str(config), "--for", "0.3"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any("citygate logs running" in e["message"] for e in entries)
    assert entries[-1]["message"] == "stopped"


def test_simulate_against_a_closed_port_says_so(capsys):
    from services import free_port

    track = REPO / "configs" / "data" / "tracks" / "mixer-01.csv"
    assert main(["simulate", "--port", str(free_port()), "--speed", "0", str(track)]) == 1
    assert "cannot talk to 127.0.0.1:" in capsys.readouterr().err
    assert main(["simulate", "--speed", "0", str(REPO / "README.md")]) == 2
    assert "missing column(s)" in capsys.readouterr().err


def test_cases_withdraw_and_show_the_event_history(tmp_path, capsys):
    config = str(site(tmp_path))
    with Outbox(tmp_path / "data" / "cases.sqlite3") as outbox:
        outbox.mark_delivered_many(["cli-A"], replies={"cli-A": '{"ok": true, "ticket": 4711}'})
        outbox.add_event("cli-A", "updated", datetime(2026, 11, 23, 1, 5, tzinfo=UTC), {"reason": "recurrence"},
                         recurrence=True)
    assert main(["cases", "--config", config, "withdraw", "cli-A", "--reason", "permit holder", "--by", "op-7"]) == 0
    assert "cli-A withdrawn by op-7 (event cli-A:3)" in capsys.readouterr().out
    assert main(["cases", "--config", config, "withdraw", "cli-A", "--reason", "twice"]) == 1
    assert "already withdrawn" in capsys.readouterr().err
    assert main(["cases", "--config", config, "withdraw", "nope", "--reason", "x"]) == 1
    assert "nope is unknown" in capsys.readouterr().err

    assert main(["cases", "--config", config, "show", "cli-A"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "withdrawn"
    history = [(e["seq"], e["kind"], e["status"], e["attempts"]) for e in shown["events"]]
    assert history == [(1, "opened", "delivered", 1), (2, "updated", "pending", 0), (3, "withdrawn", "pending", 0)]
    assert shown["events"][0]["reply"] == '{"ok": true, "ticket": 4711}'
    assert shown["events"][2]["reason"] == "permit holder"
