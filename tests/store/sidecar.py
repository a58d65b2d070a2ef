"""Running the sidecar (``python -m store serve``) as a real child process for tests.

`running_sidecar` starts it with the secret in its environment, waits for its ``READY`` line,
and on the way out sends SIGTERM and checks that it exits 0.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0  # importing lancedb alone takes ~3.6 s; a loaded CI machine, more
STOP_TIMEOUT = 30.0


@dataclass
class Sidecar:
    """A running sidecar: where it listens and how to authenticate."""

    process: Process
    port: int
    secret: str
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The base URL a client uses."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    async def stop(self) -> int:
        """SIGTERM, wait (SIGKILL after STOP_TIMEOUT); the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_TIMEOUT):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
        return await self.process.wait()


@asynccontextmanager
async def running_sidecar(
    backend: str,
    path: Path,
    *,
    secret: str | None = None,
    args: tuple[str, ...] = (),
    killed: bool = False,
) -> AsyncIterator[Sidecar]:
    """A sidecar serving a `backend` store at `path`; it must exit 0 on SIGTERM afterwards,
    unless the test says it `killed` it."""
    secret = secrets.token_urlsafe(32) if secret is None else secret
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SATCHEL_SIDECAR_SECRET": secret}
    argv = [sys.executable, "-m", "store", "serve", "--backend", backend, "--path", str(path)]
    argv += args
    # stderr is inherited: pytest captures it and shows the sidecar's log when a test fails.
    process = await anyio.open_process(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=None)
    async with process:
        sidecar = Sidecar(process, 0, secret, argv)
        try:
            assert process.stdout is not None
            with anyio.fail_after(READY_TIMEOUT):
                line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 200)
            assert line.startswith(b"READY port="), line
            sidecar.port = int(line.removeprefix(b"READY port="))
            yield sidecar
        finally:
            with anyio.CancelScope(shield=True):
                status = await sidecar.stop()
        if killed:
            assert status == -signal.SIGKILL, f"the sidecar exited with {status}, not killed"
        else:
            assert status == 0, f"the sidecar exited with {status} on SIGTERM"
