"""The `satchel` command line.

``satchel run`` is the daemon itself. ``service`` manages the login service and ``doctor``
checks the installation locally; every other command is a client of the daemon's socket API
and says how to start the daemon when it is not running. Errors go to stderr as one line
naming the problem; exit status 0 means success, 1 an error, 2 a usage error, 3 "the daemon is
not running".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from daemon import __version__, cli_feeds, cli_pair
from daemon.client import Client, CLIError, bar, duration, progress
from daemon.config import Config, ConfigError, load_config, usable_socket_path

__all__ = ["build_parser", "main"]

# -- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every `satchel` command."""
    parser = argparse.ArgumentParser(
        prog="satchel",
        description=(
            "Satchel keeps what you read (feeds, pages from your browser) as embedded chunks "
            "and answers semantic queries from local programs."
        ),
    )
    parser.add_argument("--version", action="version", version=f"satchel {__version__}")
    parser.add_argument(
        "--config", type=Path, help="the config file (default: in Satchel's config directory)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser("run", help="run the daemon in the foreground")

    status = commands.add_parser("status", help="what the daemon is doing")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    search = commands.add_parser("search", help="search what Satchel holds")
    search.add_argument("query", help="what to look for")
    search.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    search.add_argument("--filter", help="a filter, e.g. \"source_type = 'page'\"")
    search.add_argument("--table", help="the table (default from the config)")
    search.add_argument("--json", action="store_true", help="print the raw JSON")

    add = commands.add_parser("add", help="add a file, a web page, or text from stdin ('-')")
    add.add_argument("source", help="a file path, an http(s) URL, or - for stdin")
    add.add_argument("--title", help="a title")
    add.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    add.add_argument("--html", action="store_true", help="the content is HTML")

    sources = commands.add_parser("sources", help="list or remove sources")
    sources_commands = sources.add_subparsers(dest="sources_command", metavar="ACTION")
    sources_list = sources_commands.add_parser("list", help="list sources")
    sources_list.add_argument("--json", action="store_true", help="one JSON object per line")
    sources_rm = sources_commands.add_parser("rm", help="remove a source and its chunks")
    sources_rm.add_argument("source_id")

    export = commands.add_parser("export", help="write every record (with vectors) as NDJSON")
    export.add_argument("file", type=Path, help="where to write (- for stdout)")
    export.add_argument("--table", help="the table (default from the config)")

    import_ = commands.add_parser("import", help="load records from an export")
    import_.add_argument("file", type=Path, help="an export file")
    import_.add_argument("--table", help="the table (default from the config)")

    migrate = commands.add_parser(
        "migrate", help="move the vectors from SQLite to LanceDB (or back), while serving"
    )
    what = migrate.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="say what it would do; change nothing")
    what.add_argument("--status", action="store_true", help="show the migration's progress")
    what.add_argument("--rollback", action="store_true", help="serve from SQLite again")
    migrate.add_argument(
        "--no-wait", action="store_true", help="start it and return (no progress bar)"
    )
    migrate.add_argument("--json", action="store_true", help="print the raw JSON")

    cli_feeds.add_parser(commands)
    cli_pair.add_parser(commands)

    commands.add_parser("doctor", help="check the installation and say how to fix problems")

    service = commands.add_parser("service", help="the login service (launchd / systemd)")
    service.add_argument("action", choices=["install", "uninstall", "status"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `satchel` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        config = load_config(args.config)
        return _COMMANDS[args.command](config, args)
    except ConfigError as exc:
        return _fail(str(exc), 1)
    except CLIError as exc:
        return _fail(str(exc), exc.status)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, status: int) -> int:
    print(f"satchel: {message}", file=sys.stderr)
    return status


# -- the commands -----------------------------------------------------------------------------


def _run(config: Config, args: argparse.Namespace) -> int:
    # Imported here: the client commands need none of the daemon's weight (numpy, uvicorn).
    import anyio  # noqa: PLC0415

    from daemon.main import AlreadyRunning, run, setup_logging  # noqa: PLC0415
    from daemon.stores import StoreUnavailable  # noqa: PLC0415

    setup_logging(config)
    try:
        return anyio.run(run, config)
    except AlreadyRunning as exc:
        print(f"satchel: {exc}", file=sys.stderr)
        return 0 if exc.healthy else 1
    except BaseExceptionGroup as group:  # raised inside the daemon's task groups
        unavailable, rest = group.split(StoreUnavailable)
        if unavailable is None or rest is not None:
            raise
        first: BaseException = unavailable
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"satchel: {first}", file=sys.stderr)
        return 1


def _status(config: Config, args: argparse.Namespace) -> int:
    status = Client(config).request("GET", "/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    embedder = status["embedder"]
    queue = status["queue"]
    latency = status["search_latency"]
    lines = [
        f"Satchel {status['version']}, up {duration(status['uptime_seconds'])}, "
        f"backend {status['backend']}",
        f"embedder: {embedder['provider']} {embedder['model'] or ''} ({embedder['state']})",
    ]
    if embedder.get("warning"):
        lines.append(f"  warning: {embedder['warning']}")
    detail = embedder.get("detail") or {}
    if detail.get("pull_total"):
        done = detail.get("pull_completed") or 0
        lines.append(f"  pulling {detail.get('model')}: {bar(done, detail['pull_total'])}")
    sidecar = status.get("sidecar")
    if sidecar:
        runner = "run by the daemon" if sidecar["managed"] else "run by someone else"
        lines.append(f"LanceDB sidecar: {sidecar['url']} ({runner})")
    for name, table in status["tables"].items():
        if table["count"] is None:
            lines.append(f"table {name}: unavailable: {table['error']}")
            continue
        line = f"table {name}: {table['count']:,} records"
        index = table.get("index")
        if index:
            line += f", index {index['kind']}"
            if index["kind"] != "exact":
                line += f" ({index['state']}, {index['unindexed_rows']:,} rows not yet in it)"
            elif index["state"] != "exact":
                line += f" ({index['state']})"
        lines.append(line)
        if index and index.get("error"):
            lines.append(f"  index maintenance failed: {index['error']}")
    lines.append(
        f"queue: {queue['pending']} pending, {queue['in_flight']} in flight, "
        f"{queue['failed']} failed, {queue['done']} done"
    )
    if queue.get("oldest_pending_age") is not None:
        lines.append(f"  oldest pending: {duration(queue['oldest_pending_age'])}")
    if queue.get("waiting_reason"):
        lines.append(f"  waiting: {queue['waiting_reason']}")
    if queue.get("last_error"):
        lines.append(f"  last failure: {queue['last_error']}")
    if latency["count"]:
        lines.append(
            f"search: p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms "
            f"over {latency['count']} searches"
        )
    if status.get("migration"):
        lines.extend(_migration_lines(status["migration"]))
    feeds = status.get("feeds")
    if feeds and feeds["count"]:
        lines.append(f"feeds: {feeds['count']} subscribed, {feeds['failing']} failing")
        for failing in feeds["errors"]:
            lines.append(
                f"  {failing['url']}: {failing['consecutive_errors']} errors in a row: "
                f"{failing['error']}"
            )
    browser = status.get("browser") or {}
    if browser.get("state") == "listening":
        paired = browser.get("paired") or 0
        lines.append(
            f"browser endpoint: 127.0.0.1:{browser['port']}, {paired} browser(s) paired"
            + ("" if paired else " (satchel pair)")
        )
    elif browser.get("state") == "failed":
        lines.append(f"browser endpoint: not listening: {browser['error']}")
    for child in status["children"]:
        lines.append(
            f"child {child['name']}: {child['state']} (pid {child['pid']}, "
            f"{child['restarts']} restarts)"
        )
    print("\n".join(lines))
    return 0


def _migrate(config: Config, args: argparse.Namespace) -> int:
    client = Client(config)
    if args.status or args.rollback or args.dry_run:
        if args.status:
            answer = client.request("GET", "/migration")
        elif args.rollback:
            answer = client.request("POST", "/migration/rollback")
        else:
            answer = client.request("POST", "/migration", json={"dry_run": True})
        if args.json:
            print(json.dumps(answer, indent=2))
        elif args.dry_run:
            print("\n".join(_plan_lines(answer)))
        else:
            print("\n".join(_migration_lines(answer)))
        return 0
    answer = client.request("POST", "/migration", json={})
    if args.no_wait or args.json:
        print(json.dumps(answer, indent=2) if args.json else "migration started")
        return 0
    try:
        while answer["running"]:
            progress(_migration_lines(answer)[0].ljust(100))
            time.sleep(0.5)
            answer = client.request("GET", "/migration")
    except KeyboardInterrupt:
        print("\nthe migration goes on in the daemon: `satchel migrate --status`", file=sys.stderr)
        return 130
    progress("\n")
    print("\n".join(_migration_lines(answer)))
    return 0 if answer["phase"] == "done" else 1


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    lines = [
        f"would {'resume' if plan['resumes'] else 'start'} a migration of {plan['rows']:,} "
        f"records to {plan['target']}, {plan['batch']:,} per batch",
    ]
    for name, table in plan["tables"].items():
        lines.append(f"  table {name}: {table['rows']:,} records of {table['dim']} dimensions")
    need, free = plan["estimated_bytes"], plan["free_bytes"]
    lines.append(f"needs about {need / 2**20:,.0f} MiB; {free / 2**20:,.0f} MiB free")
    if need > free:
        lines.append("  not enough free disk space")
    if plan["blocker"]:
        lines.append(f"cannot start: {plan['blocker']}")
    return lines


def _migration_lines(m: dict[str, Any]) -> list[str]:
    if m["phase"] is None:
        auto = "automatic" if m["automatic"] else "by hand only"
        return [f"migration: none yet ({auto}); serving from {m['serving']}"]
    line = f"migration: {m['phase']}"
    if m["phase"] == "copy":
        line += f" {bar(m['copied'], m['total'])} {m['copied']:,} of {m['total']:,} rows"
        line += f", {m['rate']:,.0f} rows/s"
        if m["eta_s"] is not None:
            line += f", ETA {duration(m['eta_s'])}"
    lines = [line, f"  why: {m['reason']}; serving from {m['serving']}"]
    if m["waiting"]:
        lines.append(f"  waiting: {m['waiting']}")
    if m["error"]:
        lines.append(f"  stopped: {m['error']}")
    verify = m.get("verify") or {}
    if "recall" in verify:
        lines.append(
            f"  verified: recall@10 {verify['recall']:.3f}; search p95 SQLite "
            f"{verify['source_p95_ms']:.1f} ms, LanceDB {verify['target_p95_ms']:.1f} ms"
        )
    if m["phase"] == "done":
        at = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["cutover_at"]))
        lines.append(f"  cutover {at}, writes paused {m['pause_ms']:.0f} ms")
        if m["discarded_at"] is not None:
            lines.append("  SQLite's copy is discarded: no rollback")
        elif m["rollback_until"] is None:
            lines.append("  SQLite's copy is kept: `satchel migrate --rollback` goes back")
        else:
            until = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["rollback_until"]))
            lines.append(f"  `satchel migrate --rollback` goes back until {until}")
    return lines


def _search(config: Config, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"query": args.query, "top_k": args.k}
    if args.filter:
        body["filter"] = args.filter
    if args.table:
        body["table"] = args.table
    found = Client(config).request("POST", "/search", json=body)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if found.get("warning"):
        print(f"warning: {found['warning']}\n")
    if not found["results"]:
        print("no results")
    for rank, hit in enumerate(found["results"], start=1):
        where = hit.get("url") or hit["source_id"]
        title = hit.get("title") or ""
        print(f"{rank}. [{hit['score']:.3f}] {title} {where}".replace("  ", " "))
        text = " ".join(hit["text_chunk"].split())
        print(f"   {text[:300]}{'…' if len(text) > 300 else ''}")
    return 0


def _add(config: Config, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"tags": args.tag}
    if args.source.startswith(("http://", "https://")):
        body["url"] = args.source  # the daemon fetches it, through its guarded fetcher
    elif args.source == "-":
        body["content"] = sys.stdin.read()
    else:
        path = Path(args.source).expanduser().resolve()
        try:
            body["content"] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
        body["url"] = path.as_uri()
        html = path.suffix.lower() in (".html", ".htm")
        body["format"] = "html" if html else "markdown" if path.suffix == ".md" else "text"
        if not html:  # a page's own <title> is better than its file name
            body["title"] = path.name
    if args.html:
        body["format"] = "html"
    if args.title:
        body["title"] = args.title
    if "content" in body and not body["content"].strip():
        raise CLIError(f"{args.source}: empty; nothing to add")
    answer = Client(config).request("POST", "/documents", json=body)
    print(f"queued {answer['source_id']} as job {answer['job_id']}")
    return 0


def _sources(config: Config, args: argparse.Namespace) -> int:
    client = Client(config)
    if args.sources_command == "rm":
        answer = client.request("DELETE", f"/sources/{quote(args.source_id, safe='')}")
        print(f"removed {answer['deleted']} and its {answer['chunks']} chunks")
        return 0
    after = ""
    while True:
        page = client.request("GET", "/sources", params={"after": after, "limit": 1000})
        for source in page["sources"]:
            if getattr(args, "json", False):
                print(json.dumps(source))
            else:
                error = f"  ({source['last_error']})" if source["last_error"] else ""
                print(
                    f"{source['state']:7} {source['chunk_count']:5} chunks  "
                    f"{source['title'] or ''}  {source['id']}{error}"
                )
        if len(page["sources"]) < 1000:
            return 0
        after = page["sources"][-1]["id"]


def _export(config: Config, args: argparse.Namespace) -> int:
    params = {"table": args.table} if args.table else {}
    client = Client(config, timeout=600)
    if str(args.file) == "-":
        for chunk in client.stream("GET", "/export", params=params):
            sys.stdout.buffer.write(chunk)
        return 0
    # Into a temporary file, renamed once complete: a failed export never clobbers the last one.
    target: Path = args.file
    partial = target.with_name(f".{target.name}.partial")
    lines = 0
    try:
        with partial.open("wb") as out:
            for chunk in client.stream("GET", "/export", params=params):
                out.write(chunk)
                lines += chunk.count(b"\n")
                progress(f"exported {max(0, lines - 1):,} records")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    print(f"\nexported {lines - 1:,} records to {target}", file=sys.stderr)
    return 0


def _import(config: Config, args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        raise CLIError(f"{path}: {exc.strerror}") from None

    def chunks() -> Iterator[bytes]:
        sent = 0
        with handle:
            while block := handle.read(1 << 20):
                sent += len(block)
                progress(f"importing {bar(sent, size)}")
                yield block

    params = {"table": args.table} if args.table else {}
    answer = Client(config, timeout=3600).request(
        "POST",
        "/import",
        content=chunks(),
        params=params,
        headers={"Content-Type": "application/x-ndjson"},
    )
    print(f"\nimported {answer['imported']:,} records", file=sys.stderr)
    return 0


def _doctor(config: Config, args: argparse.Namespace) -> int:
    problems = 0

    def check(ok: bool, what: str, fix: str = "") -> None:
        nonlocal problems
        print(f"{'ok ' if ok else 'BAD'}  {what}")
        if not ok:
            problems += 1
            print(f"     fix: {fix}")

    paths = config.paths
    check(
        True,
        f"config: {paths.config_file} ({'found' if paths.config_file.exists() else 'defaults'})",
    )
    for name, directory in (("data", paths.data_dir), ("logs", paths.log_dir)):
        exists = directory.exists()
        writable = exists and os.access(directory, os.W_OK)
        check(
            writable or not exists,
            f"{name} directory: {directory}" + ("" if exists else " (created on first run)"),
            f"make it writable: chmod u+rwx {directory}",
        )
    try:
        socket_path = usable_socket_path(paths)
        check(True, f"socket path: {socket_path}")
    except ConfigError as exc:
        check(False, str(exc), "set [daemon] socket_path to a shorter path")
        socket_path = None
    if socket_path is not None and socket_path.parent.exists():
        mode = socket_path.parent.stat().st_mode & 0o777
        check(mode == 0o700, f"socket directory mode {mode:o}", f"chmod 700 {socket_path.parent}")
    running = False
    if socket_path is not None:
        try:
            status = Client(config, timeout=5).request("GET", "/status")
            running = True
            check(True, f"daemon: running, embedder {status['embedder']['provider']}")
            if status["embedder"].get("warning"):
                check(False, status["embedder"]["warning"], "install Ollama: https://ollama.com")
        except CLIError:
            check(
                False, "daemon: not running", "start it: satchel run (or satchel service install)"
            )
    if config.embedder.provider in ("auto", "ollama"):
        ollama_ok = _ollama_answers(config.embedder.ollama_url)
        binary = config.embedder.ollama_binary or shutil.which("ollama")
        check(
            ollama_ok or bool(binary) or running,
            f"Ollama: {'answers at ' + config.embedder.ollama_url if ollama_ok else 'not running'}"
            + (f", binary {binary}" if binary else ", no `ollama` on PATH"),
            'install Ollama (https://ollama.com) or set [embedder] provider = "hash"',
        )
    target = paths.data_dir if paths.data_dir.exists() else Path.home()
    free = shutil.disk_usage(target).free
    check(free > 1 << 30, f"disk: {free / (1 << 30):.1f} GiB free at {target}", "free some space")
    return 1 if problems else 0


def _ollama_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url.rstrip('/')}/api/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _service(config: Config, args: argparse.Namespace) -> int:
    from daemon import service  # noqa: PLC0415 - only this command needs it

    try:
        if args.action == "install":
            spec = service.ServiceSpec(
                program=service.default_program(config.paths.config_file),
                log_dir=config.paths.log_dir,
                shutdown_grace=config.daemon.shutdown_grace_seconds,
                satchel_home=config.paths.home,
            )
            print(service.install(spec))
        elif args.action == "uninstall":
            print(service.uninstall())
        else:
            print(service.status().summary)
    except service.ServiceError as exc:
        raise CLIError(str(exc)) from None
    return 0


_COMMANDS = {
    "feeds": cli_feeds.run,
    "pair": cli_pair.run,
    "run": _run,
    "status": _status,
    "search": _search,
    "add": _add,
    "sources": _sources,
    "export": _export,
    "import": _import,
    "migrate": _migrate,
    "doctor": _doctor,
    "service": _service,
}


# -- output helpers ---------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
