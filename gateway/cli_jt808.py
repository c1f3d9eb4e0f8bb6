"""`citygate jt808 --config C list | reset VEHICLE`: the fleet terminals' JT/T 808 registrations.

A fleet terminal is handed its auth code once; registering again is refused ("terminal already
registered") until an operator resets it here (a terminal replaced or re-flashed, a code lost or
leaked). `reset` revokes the terminal's code and lets it register again for `--hours`; a running
gateway takes the request when the terminal next registers or authenticates
(gateway/sources/jt808_registrations.py), one that is stopped when it starts and sees the terminal.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def add_parser(sub: Any) -> None:
    jt = sub.add_parser("jt808", help="fleet terminals' JT/T 808 registrations: list, reset")
    jt.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    actions = jt.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="each fleet terminal: registered (when, from where), never, or reset")
    reset = actions.add_parser("reset", help="revoke a terminal's auth code and let it register again")
    reset.add_argument("vehicle", help="fleet vehicle id or terminal number")
    reset.add_argument("--hours", type=float, default=24.0,
                       help="how long it may register again (default 24); then it is locked until the next reset")
    reset.add_argument("--by", help="who resets it (default cli:<user>)")
    jt.set_defaults(func=cmd_jt808)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else "-"


def _state(entry: dict[str, Any] | None, now: float) -> str:
    if entry is None:
        return "never registered (its configured code authenticates it)"
    if entry.get("code_sha256"):
        return (f"registered {_when(entry.get('registered_at'))} from {entry.get('peer', '?')} "
                f"({entry.get('how', 'registered')})")
    until = entry.get("reset_until") or 0.0
    verb = "may register until" if now <= until else "locked since"
    return f"reset by {entry.get('reset_by', '?')}: {verb} {_when(until)}"


def cmd_jt808(args: argparse.Namespace) -> int:
    from detectors.vehicle.identity import TerminalDirectory, terminal_key
    from gateway.cli import _load
    from gateway.sources.jt808_registrations import (
        REGISTRATIONS_FILE,
        can_reset,
        pending_resets,
        read_entries,
        request_reset,
    )

    deployment = _load(args.config)
    if deployment is None:
        return EXIT_CONFIG
    config = deployment.config
    vehicles = config.vehicles.fleet.vehicles
    path = config.data_path / REGISTRATIONS_FILE
    now = time.time()
    if args.action == "list":
        try:
            entries = read_entries(path)
        except (OSError, ValueError, KeyError) as exc:
            print(f"{path}: unreadable: {exc}", file=sys.stderr)
            return EXIT_FAILED
        pending = pending_resets(path)
        for v in vehicles:
            key = terminal_key(v.terminal)
            line = f"{v.id}\t{v.terminal}\t{_state(entries.get(key), now)}"
            if key in pending:
                line += f"\t(reset requested by {pending[key].get('by', '?')}, not yet taken)"
            print(line)
        if not config.vehicles.jt808.enabled:
            print(f"{args.config}: vehicles.jt808.enabled is false: no terminal registers here", file=sys.stderr)
        return EXIT_OK
    directory = TerminalDirectory.from_vehicles(vehicles)
    vehicle = args.vehicle if args.vehicle in directory.vehicle_ids else directory.vehicle(args.vehicle)
    if vehicle is None:
        print(f"{args.vehicle!r} is neither a fleet vehicle nor its terminal (vehicles.fleet.vehicles in "
              f"{args.config})", file=sys.stderr)
        return EXIT_FAILED
    terminal = next(v.terminal for v in vehicles if v.id == vehicle)
    key = terminal_key(terminal)
    if args.hours <= 0:
        print("citygate jt808 reset: --hours must be above 0", file=sys.stderr)
        return EXIT_CONFIG
    if not can_reset(key):
        print(f"citygate jt808 reset: terminal {terminal!r} of {vehicle} is not a JT/T 808 terminal number",
              file=sys.stderr)
        return EXIT_FAILED
    by = args.by or f"cli:{getpass.getuser()}"
    try:
        request_reset(path, key, vehicle, by, args.hours * 3600, now)
    except OSError as exc:
        print(f"cannot write the reset request beside {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"terminal {terminal} of {vehicle}: reset by {by}. Its auth code stops working when the gateway next "
          f"sees it register or authenticate; a registration matching the fleet config gets a new code until "
          f"{_when(now + args.hours * 3600)}.")
    return EXIT_OK
