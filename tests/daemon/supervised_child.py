"""A child program for the supervisor's tests (stdlib only; run by path).

Usage: python supervised_child.py [--port N] [--pids FILE] [--grandchild] [--ignore-term]
       [--ready-after S] [--exit-after S] [--exit-code C]

It listens on 127.0.0.1:N after --ready-after seconds (the tests' health check connects
there), writes ``{"child": pid, "grandchild": pid}`` to FILE, and runs until killed or, with
--exit-after, until it exits with --exit-code. --grandchild spawns a process in the same group
(ignoring SIGTERM too with --ignore-term), to check that whole groups are stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

GRANDCHILD = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(1)
"""


def serve(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)

    def accept() -> None:
        while True:
            connection, _ = listener.accept()
            connection.close()

    threading.Thread(target=accept, daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--pids", type=Path)
    parser.add_argument("--grandchild", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--exit-after", type=float)
    parser.add_argument("--exit-code", type=int, default=3)
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = None
    if args.grandchild:
        mode = "ignore" if args.ignore_term else "default"
        grandchild = subprocess.Popen([sys.executable, "-c", GRANDCHILD, mode])
    if args.pids:
        record = {"child": os.getpid(), "grandchild": grandchild.pid if grandchild else None}
        temporary = args.pids.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(args.pids)
    time.sleep(args.ready_after)
    if args.port:
        serve(args.port)
    if args.exit_after is not None:
        time.sleep(args.exit_after)
        return int(args.exit_code)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
