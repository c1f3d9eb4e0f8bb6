"""`citygate run|check|replay|cases|simulate|user|command|bench`: the command line of the gateway."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import runpy
import signal
import sqlite3
import sys
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig
from gateway.deployment import Deployment, load_deployment
from gateway.logs import setup_logging
from gateway.outbox import STATUSES, ReviewError

log = logging.getLogger("citygate")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
EXIT_DATA_DIR = 3  # the data directory is a file, read-only or full: restarting cannot help (systemd unit)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging("INFO", json_lines=args.log_json)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe must surface here, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (`citygate cases list | head`): no traceback. As the Python docs on
        # SIGPIPE recommend, point stdout at devnull so the final flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="citygate", description="Ingestion gateway for digital city management.")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines instead of readable text")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway on a deployment config")
    run.add_argument("config", type=Path)
    run.add_argument("--for", dest="duration", type=float, default=None, metavar="SECONDS",
                     help="stop by itself after this many seconds (demos, smoke tests)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config: every problem with its path; exit 2 if any")
    check.add_argument("config", type=Path)
    check.set_defaults(func=cmd_check)

    replay = sub.add_parser("replay", help="run one camera's rules over a video file and print the cases")
    replay.add_argument("--camera", required=True, help="camera name in the config")
    replay.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    replay.add_argument("file", type=Path)
    replay.set_defaults(func=cmd_replay)

    cases = sub.add_parser("cases", help="the local case store: list, show, retry, withdraw, confirm, reject,"
                           " precision, export-dataset")
    cases.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    cases_sub = cases.add_subparsers(dest="action", required=True)
    lst = cases_sub.add_parser("list", help="recent cases")
    lst.add_argument("--status", choices=list(STATUSES), help="held: waiting for an operator's review")
    lst.add_argument("--limit", type=_positive, default=50, help="show the newest N cases (default 50)")
    lst.add_argument("--json", action="store_true",
                     help='print {"cases": [...], "total": N, "left_out": M}: M matching cases were not shown')
    lst.set_defaults(func=cmd_cases_list)
    show = cases_sub.add_parser("show", help="one case, its state, dead letters and event history with each"
                                " event's delivery state")
    show.add_argument("case_id")
    show.set_defaults(func=cmd_cases_show)
    retry = cases_sub.add_parser("retry", help="deliver a dead or stored case again")
    retry.add_argument("case_id")
    retry.set_defaults(func=cmd_cases_retry)
    withdraw = cases_sub.add_parser("withdraw", help="an operator rejects a case: a 'withdrawn' event goes to the"
                                    " central platform")
    withdraw.add_argument("case_id")
    withdraw.add_argument("--reason", required=True, help="why (sent to the central platform)")
    withdraw.add_argument("--by", help="who withdraws it (default: cli:<login name>)")
    withdraw.set_defaults(func=cmd_cases_withdraw)
    confirm = cases_sub.add_parser("confirm", help="review before dispatch: confirm a case (a held one is sent)")
    confirm.add_argument("case_id")
    confirm.add_argument("--reason", default="", help="a note kept with the review")
    confirm.add_argument("--by", help="who reviews it (default: cli:<login name>)")
    confirm.set_defaults(func=cmd_cases_confirm)
    reject = cases_sub.add_parser("reject", help="review before dispatch: reject a case (a held one is never sent,"
                                  " one already sent is withdrawn)")
    reject.add_argument("case_id")
    reject.add_argument("--reason", required=True, help="why it is not a case")
    reject.add_argument("--by", help="who reviews it (default: cli:<login name>)")
    reject.set_defaults(func=cmd_cases_reject)
    prec = cases_sub.add_parser("precision", help="each rule's precision (confirmed / reviewed), 7 and 30 days")
    prec.add_argument("--json", action="store_true")
    prec.set_defaults(func=cmd_cases_precision)
    export = cases_sub.add_parser("export-dataset", help="reviewed video cases as YOLO images and labels in"
                                  " confirmed/ and rejected/, with classes.txt")
    export.add_argument("dir", type=Path)
    export.add_argument("--since", type=_since, help="reviewed at or after: ISO 8601 date or time (no zone: the"
                        " site's), or Nd for the last N days")
    export.set_defaults(func=cmd_cases_export_dataset)

    simulate = sub.add_parser("simulate", help="a JT/T 808 terminal driving a recorded track into a gateway")
    simulate.add_argument("track", type=Path, help="CSV track: time,device,lon,lat[,speed_kmh,course,status,alarm]")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=6808)
    simulate.add_argument("--terminal", help="terminal number (default: the track's device)")
    simulate.add_argument("--speed", type=float, default=1.0, help="replay speed factor; 0 = as fast as answered")
    simulate.add_argument("--auth-code", help="the code an earlier registration handed out: authenticate with it "
                          "instead of registering (a terminal registers once)")
    simulate.set_defaults(func=cmd_simulate)

    user = sub.add_parser("user", help="console users: add or change one (password read from the terminal)")
    user_sub = user.add_subparsers(dest="action", required=True)
    add = user_sub.add_parser("add", help="set a user's role and password in web.users_file, or print the hash")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    add.add_argument("--config", type=Path, help="config whose web.users_file receives the user")
    add.add_argument("--users-file", type=Path, help="users file to write (instead of the config's)")
    add.set_defaults(func=cmd_user_add)

    from gateway.cli_command import add_parser as add_command_parser
    from gateway.cli_jt808 import add_parser as add_jt808_parser

    add_command_parser(sub)
    add_jt808_parser(sub)

    bench = sub.add_parser("bench", help="run a benchmark from bench/ (outbox, video, vehicles, patrol, detection, "
                           "sensors, rule_state)")
    bench.add_argument("name", choices=["outbox", "video", "vehicles", "patrol", "detection", "sensors", "rule_state"])
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark (e.g. detection's "
                       "--config C --camera NAME LABELS.yaml)")
    bench.set_defaults(func=cmd_bench)
    return parser


def _since(text: str):
    """`--since`: '7d' (the last 7 days) or an ISO 8601 date / time (naive: resolved with the config)."""
    from datetime import UTC, datetime, timedelta

    if text[:-1].isdigit() and text.endswith("d"):
        return datetime.now(UTC) - timedelta(days=int(text[:-1]))
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 date or time, or Nd, got {text!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _load(path: Path) -> Deployment | None:
    """The deployment at `path`, or None after printing every problem."""
    try:
        return load_deployment(path)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    deployment = _load(args.config)
    if deployment is None:
        return EXIT_CONFIG
    from gateway.storage import check_data_dir

    problem = check_data_dir(deployment.config.data_path)
    if problem is not None:
        print(f"{args.config}: 1 problem(s)\n  data_dir: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(summary(deployment.config))
    return EXIT_OK


def summary(config: GatewayConfig) -> str:
    v, fleet, s = config.video, config.vehicles.fleet, config.sensors
    lines = [
        f"{config.site}: config is valid (gateway id {config.id}, time zone {config.timezone})",
        f"  data dir      {config.data_path}",
        f"  cameras       {len(v.cameras)}"
        + (f"  detector {v.detector.backend} {config.path(v.detector.model).name}" if v.cameras else ""),
    ]
    for cam in v.cameras:
        rules = ", ".join(f"{r.name} ({r.kind}→{r.category or 'alert'})" for r in cam.rules) or "no rules"
        lines.append(f"    {cam.name:<12} {cam.detect_fps:g} fps  {len(cam.zones)} zone(s)  {rules}")
    lines += [
        f"  vehicles      {len(fleet.vehicles)}  routes {len(fleet.routes)}  zones {len(fleet.zones)}  "
        f"sites {len(fleet.sites)}  roads {len(fleet.roads)}",
        "  JT/T 808      " + (f"{config.vehicles.jt808.host}:{config.vehicles.jt808.port}"
                               if config.vehicles.jt808.enabled else "off"),
        f"  sensors       {len(s.devices)}  level rules {len(s.level_rules)}  rise rules {len(s.rise_rules)}  "
        f"rain rules {len(s.rain_rules)}",
        f"  NMEA          {len(config.vehicles.nmea)} receiver(s)/log(s)",
        f"  replays       {len(config.vehicles.replay)} track file(s), {len(config.sensors.replay)} sensor file(s)",
        f"  MQTT devices  {', '.join(config.mqtt_source.profiles) or 'none'}",
        f"  central       {config.central.url or 'none (cases kept in the local store)'}",
        "  MQTT alerts   " + (f"{config.mqtt.host}:{config.mqtt.port} under {config.mqtt.topic_prefix}/{config.site}/"
                               if config.mqtt.enabled else "off"),
        f"  time series   {config.timeseries.backend}"
        + (f" {config.timeseries.url}" if config.timeseries.backend == "influxdb" else ""),
        "  status page   " + (f"http://{config.web.host}:{config.web.port}/" if config.web.enabled else "off"),
    ]
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    deployment = _load(args.config)
    if deployment is None:
        return EXIT_CONFIG
    logging.getLogger().setLevel(deployment.config.log_level)
    from detectors.video.backends import ModelError
    from gateway.runtime import Gateway
    from gateway.storage import check_data_dir

    problem = check_data_dir(deployment.config.data_path, create=True)
    if problem is not None:
        log.error("cannot start: %s", problem)
        return EXIT_DATA_DIR
    try:
        gateway = Gateway(deployment)
    except ModelError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    except (OSError, sqlite3.Error) as exc:  # the disk filled or went read-only since the probe
        problem = check_data_dir(deployment.config.data_path, create=True)
        log.error("cannot start: %s", problem or f"{type(exc).__name__}: {exc}")
        return EXIT_DATA_DIR if problem else EXIT_FAILED
    return asyncio.run(_serve(gateway, args.duration))


async def _serve(gateway, duration: float | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await gateway.shutdown()
        return EXIT_FAILED
    await stop.wait()
    log.info("stop requested")
    return EXIT_OK if await gateway.shutdown() else EXIT_FAILED


def cmd_replay(args: argparse.Namespace) -> int:
    deployment = _load(args.config)
    if deployment is None:
        return EXIT_CONFIG
    config = deployment.config
    cameras = {c.name: c for c in config.video.cameras}
    if args.camera not in cameras:
        print(f"no camera named {args.camera!r} in {args.config} (cameras: {', '.join(cameras) or 'none'})",
              file=sys.stderr)
        return EXIT_CONFIG
    if not args.file.exists():
        print(f"{args.file}: no such video file", file=sys.stderr)
        return EXIT_CONFIG
    from detectors.video.backends import ModelError, load_detector
    from detectors.video.pipeline import CameraPipeline
    from gateway.camera_replay import replay_camera

    try:
        detector = load_detector(config.video.detector, config.path(config.video.detector.model))
    except ModelError as exc:
        print(f"cannot load the model: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    camera = cameras[args.camera]
    pipeline = CameraPipeline(camera, detector, timezone=config.tz)
    alerts = replay_camera(camera, detector, args.file, progress=not args.no_progress, pipeline=pipeline)
    cases = [a for a in alerts if a.state == "open" and a.category]
    print(f"{len(cases)} case(s) would be created from {args.file.name} by camera {args.camera}:")
    for a in cases:
        facts = ", ".join(f"{k}={v}" for k, v in a.facts.items() if k not in ("box",))
        print(f"  {a.time.isoformat(timespec='seconds')}  {a.rule:<20} {a.category:<18} zone={a.place or '-'} "
              f"track={a.track_id}  {facts}")
    others = [a for a in alerts if a not in cases]
    if others:
        print(f"and {len(others)} other alert(s) (closes, alert-only rules)")
    return EXIT_OK


def _outbox(args: argparse.Namespace, deployment: Deployment | None = None):
    deployment = deployment or _load(args.config)
    if deployment is None:
        return None
    config = deployment.config
    path = config.data_path / "cases.sqlite3"
    if not path.exists():
        print(f"no case store at {path} yet (run the gateway first)", file=sys.stderr)
        return None
    from gateway.outbox import Outbox

    return Outbox(path, max_cases=config.cases.max_outbox, deliver=bool(config.central.url))


def cmd_cases_list(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    if outbox is None:
        return EXIT_CONFIG
    with outbox:
        records = outbox.list(status=args.status, limit=args.limit)
        counts = outbox.counts()
    total = counts[args.status] if args.status else sum(counts.values())
    left_out = max(0, total - len(records))  # counted a moment later: a running gateway may have added one
    if args.json:
        print(json.dumps({"cases": [r.to_json() for r in records], "total": total, "left_out": left_out},
                         ensure_ascii=False, indent=1))
        return EXIT_OK
    print("  ".join(f"{k} {v}" for k, v in counts.items()))
    for r in records:
        case = r.to_case()
        print(f"{case.case_id}  {case.detected_at.isoformat(timespec='seconds')}  {r.status:<9} "
              f"{case.category.get('name', ''):<10} {case.rule:<22} {case.subject.get('id', '')}  "
              f"grid {case.location.get('grid_code') or '-'}  x{1 + r.recurrences}")
    if left_out:
        print(f"{left_out} more not shown (newest {len(records)} of {total}; --limit N shows more)")
    return EXIT_OK


def cmd_cases_show(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    if outbox is None:
        return EXIT_CONFIG
    with outbox:
        record = outbox.get(args.case_id)
        if record is None:
            print(f"no case {args.case_id}", file=sys.stderr)
            return EXIT_FAILED
        out = record.to_json()
        out["dead_letters"] = [{"at": d.at.isoformat(), "status_code": d.status_code,
                                "response_body": d.response_body} for d in outbox.dead_letters(args.case_id)]
        out["events"] = _event_history(outbox, record)
    print(json.dumps(out, ensure_ascii=False, indent=2))
    return EXIT_OK


def _event_history(outbox, record) -> list[dict]:
    """The case's events, ``opened`` (the case itself) first, each with its delivery state."""
    def iso(t):
        return None if t is None else t.isoformat()

    opened = {"seq": 1, "event_id": record.case_id, "kind": "opened", "status": record.status,
              "attempts": record.attempts, "created_at": iso(record.created_at),
              "delivered_at": iso(record.delivered_at), "last_error": record.last_error, "reply": record.reply}
    history = [opened]
    for e in outbox.events(record.case_id):
        entry = {"seq": e.seq, "event_id": e.event_id, "kind": e.kind, "status": e.status, "attempts": e.attempts,
                 "created_at": iso(e.created_at), "delivered_at": iso(e.delivered_at), "last_error": e.last_error,
                 "reply": e.reply, "at": e.body.get("at"), "reason": e.body.get("reason")}
        if e.status == "dead":
            entry["dead_letters"] = [{"at": d.at.isoformat(), "status_code": d.status_code,
                                      "response_body": d.response_body} for d in outbox.dead_letters(e.event_id)]
        history.append(entry)
    return history


def cmd_cases_withdraw(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    if outbox is None:
        return EXIT_CONFIG
    by = args.by or f"cli:{getpass.getuser()}"
    with outbox:
        record = outbox.get(args.case_id)
        if record is not None and record.status == "held":  # never sent: withdrawing it is rejecting it
            return _reject(outbox, args.case_id, args.reason, by)
        try:
            event = outbox.withdraw(args.case_id, args.reason, by)
        except ValueError as exc:
            print(f"case {args.case_id}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        state = outbox.case_state(args.case_id)
    if event is None:
        why = "is unknown" if state is None else "is already withdrawn"
        print(f"case {args.case_id} {why}", file=sys.stderr)
        return EXIT_FAILED
    print(f"case {args.case_id} withdrawn by {by} (event {event.event_id}); a running gateway sends it to the"
          " central platform at its next poll")
    return EXIT_OK


def cmd_cases_confirm(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    if outbox is None:
        return EXIT_CONFIG
    by = args.by or f"cli:{getpass.getuser()}"
    with outbox:
        try:
            status = outbox.confirm(args.case_id, by, args.reason)
        except ReviewError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAILED
    if status is None:
        print(f"no case {args.case_id}", file=sys.stderr)
        return EXIT_FAILED
    tail = "; a running gateway sends it at its next poll" if status == "pending" else ""
    print(f"case {args.case_id} confirmed by {by}, now {status}{tail}")
    return EXIT_OK


def cmd_cases_reject(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    if outbox is None:
        return EXIT_CONFIG
    with outbox:
        return _reject(outbox, args.case_id, args.reason, args.by or f"cli:{getpass.getuser()}")


def _reject(outbox, case_id: str, reason: str, by: str) -> int:
    try:
        done = outbox.reject(case_id, reason, by)
    except (ReviewError, ValueError) as exc:
        print(f"case {case_id}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if done is None:
        print(f"no case {case_id}", file=sys.stderr)
        return EXIT_FAILED
    status, event = done
    how = (f"withdrawn (event {event.event_id}; a running gateway sends it at its next poll)" if event is not None
           else "never sent" if status == "rejected" else f"already withdrawn, {status}")
    print(f"case {case_id} rejected by {by}: {how}")
    return EXIT_OK


def cmd_cases_precision(args: argparse.Namespace) -> int:
    import time

    from gateway.review import WINDOWS_DAYS, precision

    deployment = _load(args.config)
    outbox = _outbox(args, deployment) if deployment is not None else None
    if outbox is None:
        return EXIT_CONFIG
    now = time.time()
    with outbox:
        counts = {days: outbox.review_counts(now - days * 86400) for days in WINDOWS_DAYS}
    review = deployment.config.cases.review.rules
    table = precision(counts, [r for r, mode in review.items() if mode == "review"])
    if args.json:
        print(json.dumps({rule: {str(d): p.to_json() for d, p in per.items()} for rule, per in table.items()},
                         ensure_ascii=False, indent=1))
        return EXIT_OK
    print(f"{'rule':<28}" + "".join(f"{f'{d} d confirmed/reviewed':>26}{'precision':>11}" for d in WINDOWS_DAYS))
    for rule, per in table.items():
        cells = "".join(f"{f'{p.confirmed}/{p.reviewed}':>26}"
                        f"{'-' if p.precision is None else f'{p.precision:.0%}':>11}" for p in per.values())
        print(f"{rule:<28}{cells}")
    return EXIT_OK


def cmd_cases_export_dataset(args: argparse.Namespace) -> int:
    from gateway.dataset import export_dataset

    deployment = _load(args.config)
    outbox = _outbox(args, deployment) if deployment is not None else None
    if outbox is None:
        return EXIT_CONFIG
    since = args.since
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=deployment.config.tz)
    with outbox:
        records = outbox.reviewed(since, source="video")
    try:
        report = export_dataset(records, deployment.config.evidence_path, args.dir)
    except OSError as exc:
        print(f"{args.dir}: cannot write the data set: {exc}", file=sys.stderr)
        return EXIT_FAILED
    done = ", ".join(f"{n} {split}" for split, n in sorted(report.exported.items())) or "no case"
    print(f"{args.dir}: {done}; {len(report.classes)} classes ({', '.join(report.classes)})")
    for reason, n in sorted(report.skipped.items()):
        print(f"  skipped {n}: {reason}")
    return EXIT_OK


def cmd_cases_retry(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    if outbox is None:
        return EXIT_CONFIG
    with outbox:
        ok = outbox.retry(args.case_id)
    if not ok:
        print(f"case {args.case_id} is unknown or already delivered", file=sys.stderr)
        return EXIT_FAILED
    print(f"case {args.case_id} is due for delivery again; a running gateway sends it at its next poll")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.protocols.tracks_csv import TrackError
    from gateway.simulator import load_track, simulate

    try:
        track = load_track(args.track)
    except (OSError, TrackError) as exc:
        print(f"{args.track}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        acknowledged = asyncio.run(simulate(args.host, args.port, track, terminal=args.terminal, speed=args.speed,
                                              auth_code=args.auth_code))
    except (OSError, ConnectionError, TimeoutError) as exc:
        print(f"cannot talk to {args.host}:{args.port}: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if acknowledged == len(track) else EXIT_FAILED


def cmd_user_add(args: argparse.Namespace) -> int:
    import getpass

    from gateway.web.auth import UsersFileError, hash_password, user_line, write_user

    target = args.users_file
    if target is None and args.config is not None:
        deployment = _load(args.config)
        if deployment is None:
            return EXIT_CONFIG
        config = deployment.config
        target = config.path(config.web.users_file) if config.web.users_file else None
    try:
        user_line(args.name, args.role, "$argon2id$")  # a bad name fails before the password is asked
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        password = getpass.getpass(f"password for {args.name}: ")
        again = getpass.getpass("again: ")
    except (EOFError, KeyboardInterrupt):
        print("\nno password given", file=sys.stderr)
        return EXIT_FAILED
    if password != again:
        print("the passwords differ; nothing changed", file=sys.stderr)
        return EXIT_FAILED
    if len(password) < 8:
        print("a password needs at least 8 characters; nothing changed", file=sys.stderr)
        return EXIT_FAILED
    hashed = hash_password(password)
    if target is None:
        print("no users file (give --users-file, or --config with web.users_file); add this to web.users:")
        print(f"  - {{name: {args.name}, role: {args.role}, password_hash: '{hashed}'}}")
        return EXIT_OK
    try:
        added = write_user(target, args.name, args.role, hashed)
    except (UsersFileError, OSError) as exc:
        print(f"{target}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{'added' if added else 'updated'} {args.role} {args.name} in {target}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parent.parent / "bench" / f"{args.name}.py"
    if not script.exists():
        print(f"{script}: benchmarks run from a source checkout", file=sys.stderr)
        return EXIT_FAILED
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
