"""`citygate command --config C VEHICLE text "..." | query | params KEY=VALUE... | list`: platform
commands to a vehicle's JT/T 808 terminal, through the running gateway's JSON API
(`/api/vehicles/{id}/commands`, operator role). The console address comes from the config's `web`
section; the token from `--token` or the CITYGATE_TOKEN environment variable (a `web.tokens` entry)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TOKEN_ENV = "CITYGATE_TOKEN"
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
PENDING = ("queued", "sent")


def add_parser(sub: Any) -> None:
    command = sub.add_parser("command", help="send a command to a vehicle's JT/T 808 terminal through the running "
                             "gateway: driver text, position query, parameters; or list its commands")
    command.add_argument("--config", type=Path, default=Path("configs/demo.yaml"),
                         help="the running gateway's config (its web section gives the console address)")
    command.add_argument("--token", help=f"console API token (web.tokens, operator role); default ${TOKEN_ENV}")
    command.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                         help="wait this long for the terminal's answer and print the final state")
    command.add_argument("vehicle", help="fleet vehicle id (or terminal number)")
    actions = command.add_subparsers(dest="action", required=True)
    text = actions.add_parser("text", help="show (and read aloud) a text on the driver's display (0x8300)")
    text.add_argument("text")
    text.add_argument("--emergency", action="store_true", help="mark the text as an emergency")
    actions.add_parser("query", help="ask the terminal for its position now (0x8201)")
    params = actions.add_parser("params", help="set terminal parameters (0x8103), e.g. default_report_interval_s=10")
    params.add_argument("params", nargs="+", metavar="KEY=VALUE",
                        help="a parameter name (default_report_interval_s, sleep_report_interval_s, ...) or hex id "
                        "(0x0029) and its value")
    actions.add_parser("list", help="the vehicle's commands, newest first, with their state")
    command.set_defaults(func=cmd_command)


def console_url(config: Any) -> str:
    """The console's base URL from a config's web section (a wildcard address is reached on loopback)."""
    host = config.web.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.web.port}"


def _params(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not KEY=VALUE")
        out[key] = int(value) if value.isdigit() else value
    return out


def _call(url: str, token: str, data: dict | None = None) -> tuple[int, Any]:
    body = json.dumps(data, ensure_ascii=False).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method="POST" if data is not None else "GET",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, {"error": exc.reason}


def _print(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=1))


def cmd_command(args: argparse.Namespace) -> int:
    from gateway.cli import _load

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        print(f"citygate command: needs an operator token: --token or ${TOKEN_ENV}", file=sys.stderr)
        return EXIT_CONFIG
    deployment = _load(args.config)
    if deployment is None:
        return EXIT_CONFIG
    config = deployment.config
    if not config.web.enabled:
        print(f"{args.config}: web.enabled is false: the gateway has no API to send commands through", file=sys.stderr)
        return EXIT_CONFIG
    url = f"{console_url(config)}/api/vehicles/{urllib.parse.quote(args.vehicle, safe='')}/commands"
    if args.action == "list":
        request: dict[str, Any] | None = None
    elif args.action == "text":
        request = {"kind": "text", "text": args.text, "emergency": args.emergency}
    elif args.action == "query":
        request = {"kind": "query"}
    else:
        try:
            request = {"kind": "params", "params": _params(args.params)}
        except ValueError as exc:
            print(f"citygate command params: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        status, data = _call(url, token, request)
        if status >= 400:
            print(f"citygate command: {status}: {(data or {}).get('error', data)}", file=sys.stderr)
            return EXIT_FAILED
        if request is not None and args.wait > 0:
            data = _wait(url, token, data["id"], args.wait) or data
    except (urllib.error.URLError, OSError) as exc:
        print(f"citygate command: cannot reach the gateway at {url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print(data)
    if request is not None and args.wait > 0 and not (data["state"] == "acknowledged" and data["result"] == 0):
        return EXIT_FAILED  # waited, and it did not succeed (still pending, failed, expired or refused by the terminal)
    return EXIT_OK


def _wait(url: str, token: str, command_id: str, seconds: float) -> dict | None:
    deadline = time.monotonic() + seconds
    while True:
        status, data = _call(url, token)
        mine = next((c for c in (data or {}).get("commands", []) if c["id"] == command_id), None) if status == 200 else None
        if mine is None or mine["state"] not in PENDING or time.monotonic() >= deadline:
            return mine
        time.sleep(0.2)
