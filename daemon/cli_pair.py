"""``satchel pair``: pair the browser extension, list paired browsers, revoke one.

It speaks to the daemon over the Unix socket, which only the owner can reach, so only the owner
can start a pairing. The code it prints goes into the extension's options page.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from daemon.client import Client
from daemon.config import Config

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``pair`` to the top-level subparsers."""
    pair = commands.add_parser(
        "pair", help="pair the browser extension (prints a one-time code for its options page)"
    )
    what = pair.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the paired browsers")
    what.add_argument("--revoke", metavar="ORIGIN", help="forget a paired browser's token")
    pair.add_argument("--json", action="store_true", help="print the raw JSON")


def run(config: Config, args: argparse.Namespace) -> int:
    """Run ``satchel pair``."""
    client = Client(config)
    if args.revoke:
        answer = client.request("DELETE", "/pairing", params={"origin": args.revoke})
        print(json.dumps(answer) if args.json else f"revoked {answer['revoked']}")
        return 0
    if args.list:
        answer = client.request("GET", "/pairing")
        if args.json:
            print(json.dumps(answer))
            return 0
        for browser in answer["browsers"]:
            used = browser["last_used"]
            print(
                f"{browser['origin']}  paired {_when(browser['paired_at'])}"
                f"  last used {_when(used) if used else 'never'}"
            )
        if not answer["browsers"]:
            print("no browser is paired: run `satchel pair` and enter the code in the extension")
        return 0
    answer = client.request("POST", "/pairing")
    if args.json:
        print(json.dumps(answer))
        return 0
    endpoint = answer["endpoint"]
    minutes = max(1, round((answer["expires_at"] - time.time()) / 60))
    print(f"pairing code: {answer['code']}")
    print(
        f"Enter it in the Satchel extension's options page within {minutes} minutes. "
        "It works once; running `satchel pair` again replaces it."
    )
    if endpoint.get("state") == "listening":
        print(f"The extension's port: {endpoint['port']}")
    else:
        print(f"warning: the browser endpoint is not listening: {endpoint.get('error', 'off')}")
    return 0


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(moment))
