"""`citygate cases list`: says how many cases it left out (text and --json), and survives a reader
that stops early (`| head`) without a broken-pipe traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.model import Case
from gateway.cli import main
from gateway.outbox import Outbox

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def case(i: int) -> Case:
    return Case(case_id=f"lst-{i:05d}", source="vehicle", rule="forbidden-zone", severity="warning",
                category={"key": "muck_truck_forbidden_zone", "type": "event", "major": "90", "minor": "02",
                          "name": "渣土车闯禁区"},
                detected_at=T0 + timedelta(seconds=i), location={"grid_code": "11010100100101"},
                subject={"kind": "vehicle", "id": f"京A{i:05d}"}, evidence=(), facts={"zone": "school"})


def site(tmp_path: Path, n: int) -> Path:
    config = tmp_path / "site.yaml"
    config.write_text("site: lst\ndata_dir: data\ncentral: {url: 'http://127.0.0.1:9/cases'}\n", encoding="utf-8")
    with Outbox(tmp_path / "data" / "cases.sqlite3") as outbox:
        outbox.enqueue_many([case(i) for i in range(n)], now=T0.timestamp())
        outbox.mark_delivered_many([f"lst-{i:05d}" for i in range(0, n, 2)])
    return config


def test_json_says_how_many_cases_it_left_out(tmp_path, capsys):
    config = str(site(tmp_path, 7))
    assert main(["cases", "--config", config, "list", "--limit", "3", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert (len(listing["cases"]), listing["total"], listing["left_out"]) == (3, 7, 4)
    assert main(["cases", "--config", config, "list", "--status", "delivered", "--limit", "3", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert (len(listing["cases"]), listing["total"], listing["left_out"]) == (3, 4, 1)
    assert {c["status"] for c in listing["cases"]} == {"delivered"}
    assert main(["cases", "--config", config, "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["left_out"] == 0


def test_text_listing_ends_with_what_it_did_not_show(tmp_path, capsys):
    config = str(site(tmp_path, 7))
    assert main(["cases", "--config", config, "list", "--limit", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pending 3  delivered 4")
    assert len([line for line in lines if line.startswith("lst-")]) == 5
    assert lines[-1] == "2 more not shown (newest 5 of 7; --limit N shows more)"
    assert main(["cases", "--config", config, "list"]) == 0
    assert "not shown" not in capsys.readouterr().out


def test_piping_the_list_into_head_prints_no_traceback(tmp_path):
    config = site(tmp_path, 1500)  # ~200 KB of text: far more than a pipe buffer holds
    for extra in ([], ["--json"]):
        result = subprocess.run(
            ["bash", "-c", f'"{sys.executable}" -m gateway.cli cases --config "{config}" list --limit 1500 '
             f'{" ".join(extra)} | head -n 3'], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert len(result.stdout.splitlines()) == 3
        assert result.stderr == "", result.stderr
