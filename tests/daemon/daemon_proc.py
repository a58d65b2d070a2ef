"""Running `satchel run` as a real child process for end-to-end tests.

`DaemonProcess` starts the daemon with ``SATCHEL_HOME`` in a temporary directory and a config
file written by the test, waits until its socket answers, and speaks to it the way users do:
through the `satchel` CLI (a subprocess) or HTTP over the Unix socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
SHIM_DIR = REPO / "tests" / "bin"

FAST_CONFIG = """
[embedder]
provider = "hash"
hash_dim = 64

[ingest]
idle_poll_seconds = 0.2
lease_seconds = 5
backoff_initial_seconds = 0.1
backoff_max_seconds = 1

[browser]
port = 0

[daemon]
shutdown_grace_seconds = 5

[supervisor]
ready_timeout_seconds = 20
restart_initial_seconds = 0.2
restart_max_seconds = 1
stop_grace_seconds = 2
"""


class DaemonProcess:
    """One `satchel run` under a test's SATCHEL_HOME."""

    def __init__(self, home: Path, config: str = FAST_CONFIG, *, path_extra: str = "") -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(config)
        self.env = dict(os.environ)
        self.env["SATCHEL_HOME"] = str(home)
        self.env.pop("XDG_RUNTIME_DIR", None)
        # No Ollama unless a test puts the shim first on PATH.
        # The venv's bin first: the `ollama` shim runs `python3` and needs our packages.
        base = f"{Path(sys.executable).parent}:/usr/bin:/bin"
        self.env["PATH"] = f"{path_extra}:{base}" if path_extra else base
        self.env["PYTHONPATH"] = str(REPO)
        self.socket = home / "run" / "satchel.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "daemon.stderr"

    def start(self, *, wait: bool = True) -> DaemonProcess:
        """Start the daemon; with `wait`, return once its socket answers."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run"],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=log,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /health until it answers (the process must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
            if not connectable(self.socket):
                # (httpx's Unix transport leaks its socket when connect fails: ask first.)
                time.sleep(0.05)
                continue
            try:
                with self.http() as client:
                    if client.get("/health").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout} s:\n{self.logs()}")

    def http(self) -> httpx.Client:
        """An HTTP client on the daemon's socket."""
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://satchel",
            timeout=30,
        )

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `satchel ARGS` against this daemon."""
        return subprocess.run(
            [sys.executable, "-m", "daemon", *args],
            env=self.env,
            cwd=REPO,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        """GET /status."""
        with self.http() as client:
            body: dict[str, Any] = client.get("/status").json()
            return body

    def wait_job(self, job_id: int, timeout: float = 60.0) -> dict[str, Any]:
        """Poll a job until it is done or failed."""
        deadline = time.monotonic() + timeout
        with self.http() as client:
            while time.monotonic() < deadline:
                job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
                if job["state"] in ("done", "failed"):
                    return job
                time.sleep(0.05)
        raise AssertionError(f"job {job_id} unfinished after {timeout} s:\n{self.logs()}")

    def signal(self, signum: int) -> None:
        """Send `signum` to the daemon."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        """The daemon's exit status, once it has exited."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers (test cleanup)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def logs(self) -> str:
        """What the daemon wrote to stderr."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_messages(self) -> list[str]:
        """The `msg` of each structured log line."""
        messages = []
        for line in self.logs().splitlines():
            try:
                messages.append(json.loads(line)["msg"])
            except (ValueError, KeyError, TypeError):
                continue
        return messages


def connectable(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False
    return True
