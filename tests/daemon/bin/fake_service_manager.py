#!/usr/bin/env python3
"""A stand-in for `launchctl` and `systemctl --user` that records each call and keeps state.

Run as `fake_service_manager.py launchctl|systemctl ARGS...` (the tests put small wrappers named
`launchctl` and `systemctl` first on PATH). Each call appends `{"tool": ..., "args": [...]}` as a
JSON line to $FAKE_SERVICE_LOG. $FAKE_SERVICE_STATE names a JSON file with what the manager
knows, which tests may seed:

    loaded      launchd: the label bootstrapped in the gui domain, or null
    linger      launchd: how many `print` calls still see the service after a bootout
    enabled     systemd: the unit is enabled
    active      systemd: the unit runs
    fail        {verb: {"code": int, "stderr": str, "times": int}}: fail the next `times` calls
                of `verb` (-1: always)
    hang        {verb: seconds}: sleep before answering

The canned answers follow the real tools' formats and exit codes closely enough for
daemon/service.py to parse them: `launchctl print` exits 113 for an unknown service, and a
bootstrap of a loaded label exits 5 with an I/O error, as launchd does.
"""

from __future__ import annotations

import json
import os
import plistlib
import sys
import time
from pathlib import Path
from typing import Any

LAUNCHD_PID = 4242
SYSTEMD_PID = 4343


def load_state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = {"loaded": None, "linger": 0, "enabled": False, "active": False}
    if path.exists():
        state.update(json.loads(path.read_text()))
    return state


def failure(state: dict[str, Any], verb: str) -> tuple[int, str] | None:
    """The scripted failure for this call of `verb`, if any (and count it)."""
    plan = state.get("fail", {}).get(verb)
    if not plan or plan["times"] == 0:
        return None
    if plan["times"] > 0:
        plan["times"] -= 1
    return int(plan["code"]), str(plan["stderr"])


def launchctl(args: list[str], state: dict[str, Any]) -> int:
    verb = args[0]
    if verb == "print":
        label = args[1].rsplit("/", 1)[-1]
        if state["loaded"] == label:
            print(
                f"{args[1]} = {{\n\tactive count = 1\n\tpath = /fake/{label}.plist\n"
                f"\ttype = LaunchAgent\n\tstate = running\n\n\tprogram = /usr/bin/python3\n"
                f"\targuments = {{\n\t\t/usr/bin/python3\n\t\tpid = 1\n\t}}\n\n"
                f"\tevent triggers = {{\n\t\tx = {{\n\t\t\tpid = 2\n\t\t}}\n\t}}\n"
                f"\tpid = {LAUNCHD_PID}\n\tlast exit code = (never exited)\n}}"
            )
            return 0
        if state["linger"] > 0:
            state["linger"] -= 1
            print(f"{args[1]} = {{\n\tstate = not running\n}}")
            return 0
        sys.stderr.write(
            f'Bad request.\nCould not find service "{label}" in domain for user gui: '
            f"{os.getuid()}\n"
        )
        return 113
    if verb == "bootstrap":
        label = plistlib.loads(Path(args[2]).read_bytes())["Label"]
        if state["loaded"] == label or state["linger"] > 0:
            sys.stderr.write("Bootstrap failed: 5: Input/output error\n")
            return 5
        state["loaded"] = label
        return 0
    if verb == "bootout":
        label = args[1].rsplit("/", 1)[-1]
        if state["loaded"] != label:
            sys.stderr.write(f"Boot-out failed: 113: Could not find service {label!r}\n")
            return 113
        state["loaded"] = None
        state["linger"] = state.get("linger_after_bootout", 0)
        return 0
    sys.stderr.write(f"fake launchctl: unknown verb {verb!r}\n")
    return 64


def unit_file(unit: str) -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    config = Path(xdg) if os.path.isabs(xdg) else Path(os.environ["HOME"]) / ".config"
    return config / "systemd" / "user" / unit


def systemctl(args: list[str], state: dict[str, Any]) -> int:
    if args[:1] != ["--user"]:
        sys.stderr.write("fake systemctl: only --user is faked\n")
        return 64
    verb, rest = args[1], args[2:]
    if verb == "daemon-reload":
        return 0
    if verb in {"enable", "disable"}:
        unit = rest[-1]
        if not unit_file(unit).exists():
            sys.stderr.write(f"Failed to {verb} unit: Unit file {unit} does not exist.\n")
            return 1
        state["enabled"] = verb == "enable"
        if "--now" in rest:
            state["active"] = verb == "enable"
        return 0
    if verb == "stop":
        state["active"] = False
        return 0
    if verb == "show":
        unit = rest[0]
        found = unit_file(unit).exists()
        values = {
            "MainPID": str(SYSTEMD_PID if state["active"] else 0),
            "LoadState": "loaded" if found else "not-found",
            "ActiveState": "active" if state["active"] else "inactive",
            "SubState": "running" if state["active"] else "dead",
            "UnitFileState": ("enabled" if state["enabled"] else "disabled") if found else "",
        }
        wanted = next(a for a in rest if a.startswith("--property=")).split("=", 1)[1]
        for key, value in values.items():  # systemd's own order, not the order asked for
            if key in wanted.split(","):
                print(f"{key}={value}")
        return 0
    sys.stderr.write(f"fake systemctl: unknown verb {verb!r}\n")
    return 64


def main(argv: list[str]) -> int:
    tool, args = argv[0], argv[1:]
    with open(os.environ["FAKE_SERVICE_LOG"], "a") as log:
        log.write(json.dumps({"tool": tool, "args": args}) + "\n")
    state_path = Path(os.environ["FAKE_SERVICE_STATE"])
    state = load_state(state_path)
    verb = args[1] if tool == "systemctl" and len(args) > 1 else args[0]
    time.sleep(state.get("hang", {}).get(verb, 0))
    failed = failure(state, verb)
    if failed is not None:
        code, message = failed
        sys.stderr.write(message)
    else:
        code = (launchctl if tool == "launchctl" else systemctl)(args, state)
    state_path.write_text(json.dumps(state))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
