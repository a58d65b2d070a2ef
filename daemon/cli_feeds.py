"""``satchel feeds ...``: subscribe, list with health, remove, poll now, import and export OPML.

Every action is a client of the daemon's ``/feeds`` API (see `daemon.feeds`). ``import`` reads
the OPML file here, so a malformed file is reported before anything is sent, and sends its
feeds in batches with a progress bar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from daemon.client import Client, CLIError, bar, progress
from daemon.config import Config

__all__ = ["add_parser", "run"]

_BATCH: Final = 100  # feeds per import request


def add_parser(commands: Any) -> None:
    """Add ``feeds`` and its actions to the top-level subparsers."""
    feeds = commands.add_parser("feeds", help="RSS and Atom subscriptions")
    actions = feeds.add_subparsers(dest="feeds_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="subscribe to a feed, or to the feed a page announces")
    add.add_argument("url")
    add.add_argument("--title", help="a name for it (default: the feed's own title)")
    add.add_argument(
        "--full-text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fetch the page of entries that carry only a summary (default: [feeds] full_text)",
    )
    add.add_argument(
        "--no-discover", action="store_true", help="subscribe without fetching the URL first"
    )
    listing = actions.add_parser("list", help="every feed with its health")
    listing.add_argument("--json", action="store_true", help="one JSON object per feed")
    rm = actions.add_parser("rm", help="unsubscribe")
    rm.add_argument("url")
    rm.add_argument("--purge", action="store_true", help="delete its entries from Satchel too")
    refresh = actions.add_parser("refresh", help="poll one feed, or all, now")
    refresh.add_argument("url", nargs="?")
    refresh.add_argument("--json", action="store_true", help="print the raw JSON")
    imp = actions.add_parser("import", help="subscribe to every feed of an OPML file")
    imp.add_argument("file", type=Path, help="the OPML file ('-' for stdin)")
    exp = actions.add_parser("export", help="write every subscription as OPML")
    exp.add_argument("file", type=Path, nargs="?", default=Path("-"), help="default: stdout")


def run(config: Config, args: argparse.Namespace) -> int:
    """Run ``satchel feeds <action>``."""
    action = args.feeds_command
    # Adding fetches the URL; polling every feed takes as long as the slowest servers.
    client = Client(config, timeout=3600.0 if action == "refresh" else 120.0)
    if action == "add":
        return _add(client, args)
    if action == "list":
        return _list(client, args)
    if action == "rm":
        params = {"url": args.url, "purge": "true" if args.purge else "false"}
        answer = client.request("DELETE", "/feeds", params=params)
        kept = "deleted" if args.purge else "kept (rm --purge deletes them)"
        print(f"unsubscribed {answer['removed']}; its {answer['entries']} entries {kept}")
        return 0
    if action == "refresh":
        return _refresh(client, args)
    if action == "import":
        return _import(client, args)
    opml = client.request_raw("GET", "/feeds/export").decode("utf-8")
    if str(args.file) == "-":
        sys.stdout.write(opml)
        return 0
    try:
        args.file.write_text(opml, encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"{args.file}: {exc.strerror}") from None
    print(f"wrote {args.file}", file=sys.stderr)
    return 0


def _add(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"url": args.url, "discover": not args.no_discover}
    if args.title:
        body["title"] = args.title
    if args.full_text is not None:
        body["full_text"] = args.full_text
    answer = client.request("POST", "/feeds", json=body)
    feed = answer["feed"]
    if answer["added"]:
        print(f"subscribed to {feed['url']}" + (f" ({feed['title']})" if feed["title"] else ""))
    else:
        print(f"already subscribed to {feed['url']}")
    others = [d["url"] for d in answer["discovered"][1:]]
    if others:
        print("the page also announces: " + ", ".join(others))
    return 0


def _list(client: Client, args: argparse.Namespace) -> int:
    feeds = client.request("GET", "/feeds")["feeds"]
    for feed in feeds:
        if args.json:
            print(json.dumps(feed))
            continue
        error = f"\n    last error: {feed['last_error']}" if feed["last_error"] else ""
        print(
            f"{feed['health']:12} {feed['entry_count']:5} entries  "
            f"{feed['title'] or '(untitled)'}  {feed['url']}{error}"
        )
    if not feeds and not args.json:
        print("no feeds yet: satchel feeds add URL, or satchel feeds import FILE.opml")
    return 0


def _refresh(client: Client, args: argparse.Namespace) -> int:
    answer = client.request("POST", "/feeds/refresh", json={"url": args.url} if args.url else {})
    results = answer["results"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    failed = 0
    for result in results:
        if result["status"] == "error":
            failed += 1
            print(f"error         {result['url']}: {result['error']}")
        else:
            print(f"{result['status']:13} {result['queued']:4} queued  {result['url']}")
    total = sum(r["queued"] for r in results)
    print(f"{len(results)} polled, {total} entries queued, {failed} failed", file=sys.stderr)
    return 1 if failed and args.url else 0


def _import(client: Client, args: argparse.Namespace) -> int:
    from ingest.opml import InvalidOPML, read_opml  # noqa: PLC0415 - only this action needs it

    try:
        data = sys.stdin.buffer.read() if str(args.file) == "-" else args.file.read_bytes()
    except OSError as exc:
        raise CLIError(f"{args.file}: {exc.strerror}") from None
    try:
        subscriptions = read_opml(data)
    except InvalidOPML as exc:
        raise CLIError(f"{args.file}: not an OPML file: {exc}") from None
    if not subscriptions:
        raise CLIError(f"{args.file}: no feeds in it (no <outline xmlUrl=...>)")
    added = duplicates = 0
    invalid: list[dict[str, str]] = []
    for start in range(0, len(subscriptions), _BATCH):
        batch = subscriptions[start : start + _BATCH]
        feeds = [{"url": s.url, **({"title": s.title} if s.title else {})} for s in batch]
        answer = client.request("POST", "/feeds/import", json={"feeds": feeds})
        added += answer["added"]
        duplicates += answer["duplicates"]
        invalid += answer["invalid"]
        done = start + len(batch)
        progress(f"{bar(done, len(subscriptions))} {done}/{len(subscriptions)} feeds")
    progress("\n")
    for item in invalid:
        print(f"skipped {item['url']}: {item['error']}", file=sys.stderr)
    print(f"imported {added} feeds ({duplicates} already subscribed, {len(invalid)} invalid)")
    return 0
