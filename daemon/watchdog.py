"""The launcher every supervised child runs under, so that no child outlives the daemon.

Usage: ``python daemon/watchdog.py FD GRACE PARENT PIDFILE -- PROGRAM [ARG...]``
(``python -m daemon.watchdog`` works too; the supervisor runs the file with ``-I`` so that no
environment of the child's can stop it from starting).

The supervisor starts this file as the leader of a new session and process group. It runs
PROGRAM in that same group and waits for it; the group is the unit the supervisor signals.

- **Signals.** SIGTERM and SIGINT sent to the group reach PROGRAM directly; the launcher
  notes them and keeps waiting (forwarding would deliver them twice, and a second SIGTERM
  means "stop now" to some servers). When PROGRAM ends, the launcher ends the same way: it
  exits with PROGRAM's exit code, or kills itself with the signal that killed PROGRAM.
- **Watchdog.** FD is the read end of a pipe whose only write end the daemon holds. A thread
  blocks reading it; end-of-file means the daemon is gone, however it died (``kill -9``
  included). Then the launcher SIGTERMs its group, waits up to GRACE seconds for PROGRAM to
  exit, removes PIDFILE and SIGKILLs the group, itself included.
- **Parent-death signal.** On Linux the launcher also asks the kernel for SIGTERM when its
  parent dies (``PR_SET_PDEATHSIG``), and then does the same as on end-of-file. A SIGTERM that
  arrives while ``getppid()`` is still PARENT is a stop request, not a death notice (the
  kernel also sends it when the daemon *thread* that forked us exits).
- **Pidfile.** Once PROGRAM runs, the launcher writes PIDFILE: the group id and, for itself
  and PROGRAM, the pid and the process start time. A daemon that died without its watchdog
  firing finds it at its next start and kills the group only if a recorded pid still has the
  recorded start time, so a recycled pid is never killed.

Only the standard library, and only light modules: this starts before every child.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
_EXIT_NOT_FOUND = 127
_EXIT_CANNOT_RUN = 126
USAGE = "usage: watchdog.py FD GRACE PARENT PIDFILE -- PROGRAM [ARG...]"


def process_start_time(pid: int) -> str | None:
    """When `pid` started, as an opaque string that differs for a recycled pid; None if unknown.

    Linux: the boot id and field 22 of ``/proc/PID/stat`` (clock ticks since boot). Elsewhere:
    ``ps -o lstart=`` (one-second resolution). None when the process does not exist or the
    time cannot be read, in which case nobody may kill on the strength of this pid.
    """
    if _LINUX:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces and parens
        return f"{boot}:{fields[19]}" if len(fields) > 19 else None
    try:
        result = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    started = result.stdout.strip()
    return started if result.returncode == 0 and started else None


def _set_parent_death_signal() -> None:
    if not _LINUX:
        return
    import ctypes  # noqa: PLC0415 - Linux only, and not worth loading elsewhere

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the pipe still watches


class _Launcher:
    def __init__(self, fd: int, grace: float, parent: int, pidfile: Path) -> None:
        self.fd = fd
        self.grace = grace
        self.parent = parent
        self.pidfile = pidfile
        self.child: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []  # stop signals that came before PROGRAM existed
        self.child_done = threading.Event()
        self.abandoning = threading.Event()
        self.abandoned = threading.Event()
        self._lock = threading.Lock()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getppid() != self.parent:
            self.abandon()
        elif self.child is None:
            self.pending.append(signum)

    def watch_pipe(self) -> None:
        try:
            while os.read(self.fd, 512):
                pass  # the daemon never writes; only end-of-file matters
        except OSError:
            pass
        self.abandon()

    def abandon(self) -> None:
        """The daemon is gone: stop the group, gently and then not."""
        with self._lock:
            if self.abandoning.is_set():
                return
            self.abandoning.set()
        threading.Thread(target=self._abandon, daemon=True).start()

    def _abandon(self) -> None:
        _killpg(signal.SIGTERM)
        self.child_done.wait(self.grace)
        with contextlib.suppress(OSError):
            self.pidfile.unlink(missing_ok=True)
        _killpg(signal.SIGKILL)  # grandchildren that outlived PROGRAM, and this launcher
        self.abandoned.set()

    def write_pidfile(self, child: int) -> None:
        me = os.getpid()
        record = {
            "pgid": os.getpgid(0),
            "processes": [{"pid": pid, "start": process_start_time(pid)} for pid in (me, child)],
        }
        temporary = self.pidfile.with_name(f".{self.pidfile.name}.{me}")
        try:
            temporary.write_text(json.dumps(record) + "\n")
            temporary.replace(self.pidfile)
        except OSError as exc:
            print(f"watchdog: cannot write {self.pidfile}: {exc}", file=sys.stderr, flush=True)

    def run(self, program: list[str]) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.on_signal)
        _set_parent_death_signal()
        if os.getppid() != self.parent:
            return 1  # the daemon died before we could ask to hear of it
        try:
            child = subprocess.Popen(program)  # same group; no fds beyond stdio
        except FileNotFoundError as exc:
            print(f"watchdog: cannot run {program[0]}: {exc}", file=sys.stderr, flush=True)
            return _EXIT_NOT_FOUND
        except OSError as exc:
            print(f"watchdog: cannot run {program[0]}: {exc}", file=sys.stderr, flush=True)
            return _EXIT_CANNOT_RUN
        self.child = child
        self.write_pidfile(child.pid)
        for early in self.pending[:1]:
            child.send_signal(early)
        threading.Thread(target=self.watch_pipe, daemon=True).start()
        code = child.wait()
        self.child_done.set()
        if self.abandoning.is_set():
            self.abandoned.wait()  # its SIGKILL ends this process
            return 1
        if code < 0:
            with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
                signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
            return 128 - code  # the signal does not kill by default
        return code


def _killpg(signum: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(os.getpgid(0), signum)


def main(argv: list[str]) -> int:
    """Parse ``FD GRACE PARENT PIDFILE -- PROGRAM...`` and run PROGRAM under the watchdog."""
    if len(argv) < 6 or argv[4] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    launcher = _Launcher(int(argv[0]), float(argv[1]), int(argv[2]), Path(argv[3]))
    return launcher.run(argv[5:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
