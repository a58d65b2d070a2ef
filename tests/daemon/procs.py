"""Helpers for tests that watch real processes: free ports, liveness, bounded polling."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

DEADLINE = 15.0  # generous bound for anything that polls


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_open(port: int) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            return False
        await stream.aclose()
        return True

    return ready


def running(pid: int) -> bool:
    """Alive and not a zombie (orphans' zombies may never be reaped in a container)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_gone(pids: list[int], within: float = DEADLINE) -> None:
    deadline = time.monotonic() + within
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if running(pid)]
        time.sleep(0.05)


async def until_gone(pids: list[int], within: float = DEADLINE) -> None:
    """`wait_gone` for async tests: the event loop (and the supervisor) keeps running."""
    with anyio.fail_after(within):
        while any(running(pid) for pid in pids):
            await anyio.sleep(0.05)


async def until(predicate: Callable[[], bool], within: float = DEADLINE) -> None:
    with anyio.fail_after(within):
        while not predicate():
            await anyio.sleep(0.02)
