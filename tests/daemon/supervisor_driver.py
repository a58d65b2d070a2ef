"""A stand-in daemon for the supervisor's crash tests: the test SIGKILLs it.

Usage: python -m tests.daemon.supervisor_driver RUN_DIR PIDS_FILE
Starts a Supervisor (stop_grace 0.5 s) with one child that ignores SIGTERM and has spawned a
grandchild that ignores it too, prints ``ready <launcher pid>`` once the child is ready, and
waits to be killed.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import anyio

from daemon.supervisor import ChildSpec, Supervisor, SupervisorSettings

CHILD = Path(__file__).with_name("supervised_child.py")


async def main(run_dir: Path, pids: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def ready() -> bool:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            return False
        await stream.aclose()
        return await anyio.Path(pids).exists()

    argv = [sys.executable, str(CHILD), "--port", str(port), "--pids", str(pids)]
    argv += ["--grandchild", "--ignore-term"]
    settings = SupervisorSettings(ready_timeout=20, stop_grace=0.5, health_interval=0)
    async with Supervisor(run_dir, settings) as supervisor:
        status = await supervisor.start(ChildSpec("victim", argv, ready))
        print(f"ready {status.pid}", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), Path(sys.argv[2]))
