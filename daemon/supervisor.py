"""Supervision of the daemon's child processes (the LanceDB sidecar, ``ollama serve``).

`Supervisor` starts a child on demand and returns once the child's health check passes. From
then on it watches the child: a crash is followed by a restart after a capped, jittered
exponential backoff; too many crashes within a window mark the child `DEGRADED`, and it stays
down until `start` is called again. `stop` (and leaving the ``async with``) sends SIGTERM to the
child's process group, waits the grace period and sends SIGKILL, under a shield.

Every child runs under the launcher in `daemon.watchdog`, which leads the child's process
group and kills the group when the daemon dies, even by SIGKILL: it watches a pipe whose only
write end the daemon holds, and on Linux it also asks for a parent-death signal. The launcher
writes ``<run_dir>/<name>.pid`` (group id, pids and process start times); `reap_leftovers`
kills what an earlier daemon left behind when its watchdog could not act, and only when a
recorded pid still has its recorded start time, so a recycled pid is never signalled.

A child's status ``pid`` is the launcher's pid, which is also the id of the child's process
group. Lifecycle events are logged on ``daemon.supervisor`` as ``key=value`` pairs.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import anyio
from anyio.abc import TaskGroup

from daemon.watchdog import process_start_time

__all__ = [
    "ChildFailed",
    "ChildSpec",
    "ChildState",
    "ChildStatus",
    "Supervisor",
    "SupervisorError",
    "SupervisorSettings",
]

log = logging.getLogger("daemon.supervisor")

_WATCHDOG = str(Path(__file__).with_name("watchdog.py"))
_KILL_WAIT = 5.0  # after SIGKILL: only an unkillable (D-state) process takes longer
_HEALTH_FAILURES = 3  # liveness checks failed in a row before a running child is restarted
_POLL = 0.2  # how often to look for an exit where there are no pidfds
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_LINUX = sys.platform.startswith("linux")


class SupervisorError(Exception):
    """Root of the supervisor's errors."""


class ChildFailed(SupervisorError, RuntimeError):  # noqa: N818 - the name is the interface
    """A child could not be started: it exited, could not run, or was not ready in time."""


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    """Timings, in seconds. Tests shrink them."""

    ready_timeout: float = 30.0  # from launch until the health check must pass
    restart_initial: float = 1.0  # first backoff after a crash, doubled for each further one
    restart_max: float = 60.0  # the backoff's cap
    degraded_after: int = 5  # crashes ...
    degraded_window: float = 300.0  # ... within this many seconds mark the child degraded
    stop_grace: float = 5.0  # between SIGTERM and SIGKILL
    health_interval: float = 10.0  # liveness checks while running (0: none)


_DEFAULTS = SupervisorSettings()


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What to run and how to tell that it is ready."""

    name: str  # identifier, used for the pidfile and in logs
    argv: Sequence[str]
    ready: Callable[[], Awaitable[bool]]  # polled until True; also the liveness check
    env: Mapping[str, str] | None = None  # the child's full environment (None: inherit)
    log_path: Path | None = None  # stdout and stderr are appended here (None: discarded)
    ready_timeout: float | None = None  # overrides SupervisorSettings.ready_timeout


class ChildState(enum.StrEnum):
    """Where a child is in its lifecycle."""

    STARTING = "starting"  # launched, health check not passed yet
    READY = "ready"
    BACKOFF = "backoff"  # crashed; waiting to restart
    DEGRADED = "degraded"  # crashed too often; not restarted until `start` is called again
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # the first start failed (`start` raised ChildFailed)


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """A snapshot of one child, for ``status``."""

    name: str
    state: ChildState
    pid: int | None  # the launcher, leader of the child's process group; None when not running
    restarts: int
    last_exit: str | None  # "exit code 3", "killed by SIGKILL"
    last_error: str | None  # why it last failed, crashed or was restarted
    since: float  # time.time() of the last state change


def describe_exit(returncode: int) -> str:
    """``exit code N`` or ``killed by SIGNAME``, from a `subprocess` return code."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


class _CannotStartError(Exception):
    pass


class _Process:
    """One launch: the launcher (leader of the group) and the watchdog pipe's write end.

    The group id stays ours until the launcher is reaped (a zombie's pid is not reused), so
    every group signal is sent before reaping, and none after.
    """

    def __init__(self, popen: subprocess.Popen[bytes], pipe: int, pidfile: Path) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._pipe = pipe
        self._pidfile = pidfile
        self.returncode: int | None = None

    def signal_group(self, signum: int) -> None:
        if self.returncode is not None:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:  # macOS refuses a group of zombies; there is nothing to kill
            log.debug("killpg(%d, %s) refused", self.pid, signal.Signals(signum).name)

    async def wait(self) -> int:
        """Wait for the launcher to exit, SIGKILL what it left in its group, reap it.

        Safe to call from several tasks and to cancel.
        """
        if self.returncode is None:
            await self._until_exited()
        if self.returncode is None:
            self.signal_group(signal.SIGKILL)  # stragglers: grandchildren the program left
            self.returncode = self.popen.wait()  # a zombie by now: returns at once
            os.close(self._pipe)
            try:
                self._pidfile.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s: %s", self._pidfile, exc)
        return self.returncode

    async def _until_exited(self) -> None:
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(self.pid)
            except OSError:
                pass  # no pidfd support in this kernel: poll
            else:
                try:
                    await anyio.wait_readable(pidfd)
                finally:
                    os.close(pidfd)
                return
        while self.returncode is None and not self._exited():  # noqa: ASYNC110 - nothing to await
            await anyio.sleep(_POLL)

    def _exited(self) -> bool:
        if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT  # look, but leave the zombie
            return os.waitid(os.P_PID, self.pid, flags) is not None
        return self.popen.poll() is not None


@dataclass(eq=False)
class _Child:
    """The supervisor's mutable record of one child."""

    spec: ChildSpec
    state: ChildState = ChildState.STARTING
    since: float = field(default_factory=time.time)
    process: _Process | None = None
    restarts: int = 0
    last_exit: str | None = None
    last_error: str | None = None
    check_error: str | None = None  # the last health check's exception
    failure: str | None = None  # why the first start failed
    stop_requested: bool = False
    crashes: collections.deque[float] = field(default_factory=collections.deque)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    first_outcome: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)

    def status(self) -> ChildStatus:
        running = self.process is not None and self.process.returncode is None
        return ChildStatus(
            name=self.spec.name,
            state=self.state,
            pid=self.process.pid if running and self.process is not None else None,
            restarts=self.restarts,
            last_exit=self.last_exit,
            last_error=self.last_error,
            since=self.since,
        )


class Supervisor:
    """Starts, watches, restarts and stops child processes; see the module docstring.

    Use as ``async with Supervisor(run_dir) as supervisor``: it owns a task group with one
    watcher task per child, and leaving it stops every child (shielded, bounded by
    ``stop_grace`` plus a few seconds for SIGKILL to land). Call `reap_leftovers` once at
    daemon start, before starting children. Methods must be called from the event loop's
    thread (the Linux parent-death signal follows the thread that forked).
    """

    def __init__(self, run_dir: Path, settings: SupervisorSettings = _DEFAULTS) -> None:
        self._run_dir = run_dir
        self._settings = settings
        self._children: dict[str, _Child] = {}
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        if tg is None:
            return None
        bound = self._settings.stop_grace + _KILL_WAIT + 1.0
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + bound):
            async with anyio.create_task_group() as stoppers:
                for name in list(self._children):
                    stoppers.start_soon(self.stop, name)
        tg.cancel_scope.cancel()
        # The watchers never raise, so whatever the body raised propagates as it is, not
        # wrapped in an exception group.
        await tg.__aexit__(None, None, None)
        return None

    async def reap_leftovers(self) -> list[str]:
        """Kill process groups an earlier daemon left behind; remove stale pidfiles.

        A group is killed (SIGTERM, ``stop_grace``, SIGKILL) only when one of the processes
        its pidfile records is alive, in that group, with the recorded start time. Returns one
        line per pidfile saying what was done, for the log.
        """
        done: list[str] = []
        for pidfile in sorted(self._run_dir.glob("*.pid")):
            name = pidfile.stem
            child = self._children.get(name)
            if child is not None and not child.done.is_set():
                continue  # ours, and running
            done.append(await self._reap(name, pidfile))
            log.debug("leftover %s", done[-1])
        return done

    async def start(self, spec: ChildSpec) -> ChildStatus:
        """Launch `spec` and return once its health check passes.

        Raises ChildFailed if the child cannot run, exits, or is not ready within the ready
        timeout; nothing of it is left running then. Once it has been ready, crashes are
        answered with restarts. Starting a child that is already up returns its status;
        starting a degraded, failed or stopped one launches it afresh.
        """
        if not _NAME.fullmatch(spec.name):
            raise ValueError(
                f"child name: expected letters, digits, '_', '.', '-'; got {spec.name!r}"
            )
        if not spec.argv:
            raise ValueError(f"child {spec.name}: argv is empty")
        tg = self._task_group()
        previous = self._children.get(spec.name)
        if previous is not None and not previous.done.is_set():
            if not previous.stop_requested:
                await previous.first_outcome.wait()
                return self._outcome(previous)
            await previous.done.wait()
        child = _Child(spec)
        self._children[spec.name] = child
        tg.start_soon(self._run, child, name=f"supervise {spec.name}")
        try:
            await child.first_outcome.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.stop(spec.name)
            raise
        return self._outcome(child)

    async def stop(self, name: str) -> None:
        """SIGTERM the child's group, wait ``stop_grace``, SIGKILL it, and wait. Idempotent."""
        child = self._children.get(name)
        if child is None:
            return
        child.stop_requested = True
        child.scope.cancel()
        await child.done.wait()
        if child.state is not ChildState.STOPPED:
            self._set(child, ChildState.STOPPED, "stop requested")

    def status(self) -> list[ChildStatus]:
        """Every child the supervisor has been asked to start, in start order."""
        return [child.status() for child in self._children.values()]

    def get(self, name: str) -> ChildStatus | None:
        """One child's status, or None if it was never started."""
        child = self._children.get(name)
        return child.status() if child is not None else None

    # ----------------------------------------------------------------------------------------
    # The watcher task: one per child, for as long as the child is wanted.

    def _task_group(self) -> TaskGroup:
        if self._tg is None:
            raise SupervisorError("the supervisor is not running (use it as 'async with')")
        return self._tg

    @staticmethod
    def _outcome(child: _Child) -> ChildStatus:
        if child.failure is not None:
            raise ChildFailed(f"child {child.spec.name} failed to start: {child.failure}")
        return child.status()

    async def _run(self, child: _Child) -> None:
        try:
            with child.scope:
                await self._supervise(child)
        except Exception as exc:  # a bug here must not take the daemon down with it
            log.exception("child=%s watcher failed", child.spec.name)
            child.last_error = f"supervisor error: {exc!r}"
            child.failure = child.failure or child.last_error
            self._set(child, ChildState.FAILED, child.last_error)
        finally:
            with anyio.CancelScope(shield=True):
                process = child.process
                if process is not None and process.returncode is None:
                    self._set(child, ChildState.STOPPING)
                    await self._terminate(child, process)
            if not child.first_outcome.is_set():
                child.failure = child.failure or "stopped before it was ready"
                child.first_outcome.set()
            if child.stop_requested:
                self._set(child, ChildState.STOPPED, "stop requested")
            child.done.set()

    async def _supervise(self, child: _Child) -> None:
        settings = self._settings
        first = True
        while True:
            reason = await self._launch(child)
            if reason is None:
                first = False
                self._set(child, ChildState.READY)
                child.first_outcome.set()
                reason = await self._until_ended(child, child.process)
            child.last_error = reason
            if first:
                child.failure = reason
                self._set(child, ChildState.FAILED, reason)
                child.first_outcome.set()
                return
            now = anyio.current_time()
            child.crashes.append(now)
            while now - child.crashes[0] > settings.degraded_window:
                child.crashes.popleft()
            if len(child.crashes) >= settings.degraded_after:
                window = f"{len(child.crashes)} crashes within {settings.degraded_window:g} s"
                child.last_error = f"{window}; last: {reason}"
                self._set(child, ChildState.DEGRADED, child.last_error)
                return
            base = min(
                settings.restart_max, settings.restart_initial * 2.0 ** (len(child.crashes) - 1)
            )
            delay = base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not secrets
            self._set(child, ChildState.BACKOFF, f"{reason}; restart in {delay:.2f} s")
            await anyio.sleep(delay)
            child.restarts += 1

    async def _launch(self, child: _Child) -> str | None:
        """Spawn and wait for readiness; None when ready, else why not (nothing left running)."""
        try:
            process = child.process = self._spawn(child.spec)
        except _CannotStartError as exc:
            return str(exc)
        self._set(child, ChildState.STARTING, f"launched {shlex.join(child.spec.argv)}")
        timeout = child.spec.ready_timeout or self._settings.ready_timeout
        ended: list[str] = []
        async with anyio.create_task_group() as tg:

            async def watch_exit() -> None:
                code = await process.wait()
                child.last_exit = describe_exit(code)
                ended.append(f"exited with {child.last_exit} before it was ready")
                tg.cancel_scope.cancel()

            tg.start_soon(watch_exit)
            child.check_error = None
            with anyio.move_on_after(timeout) as deadline:
                await self._until_ready(child)
            if deadline.cancelled_caught:
                detail = f" (last check: {child.check_error})" if child.check_error else ""
                ended.append(f"not ready within {timeout:g} s{detail}")
            tg.cancel_scope.cancel()
        if not ended:
            return None
        if process.returncode is None:
            await self._terminate(child, process)
        return ended[0]

    async def _until_ready(self, child: _Child) -> None:
        delay = 0.02
        while not await self._check(child):
            await anyio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    @staticmethod
    async def _check(child: _Child) -> bool:
        try:
            return await child.spec.ready()
        except Exception as exc:  # a check that raises says "not ready"; keep why for the message
            child.check_error = f"{type(exc).__name__}: {exc}"
            return False

    async def _until_ended(self, child: _Child, process: _Process | None) -> str:
        """Watch a ready child; return why it is no longer running."""
        assert process is not None
        unhealthy: list[str] = []
        async with anyio.create_task_group() as tg:
            if self._settings.health_interval > 0:
                tg.start_soon(self._watch_health, child, process, unhealthy)
            code = await process.wait()
            tg.cancel_scope.cancel()
        child.last_exit = describe_exit(code)
        return unhealthy[0] if unhealthy else f"exited with {child.last_exit}"

    async def _watch_health(self, child: _Child, process: _Process, unhealthy: list[str]) -> None:
        interval = self._settings.health_interval
        failures = 0
        while True:
            await anyio.sleep(interval)
            healthy = False
            with anyio.move_on_after(interval):  # a check that hangs has failed
                healthy = await self._check(child)
            failures = 0 if healthy else failures + 1
            if failures >= _HEALTH_FAILURES:
                unhealthy.append(f"failed {failures} health checks in a row")
                log.warning("child=%s pid=%d unhealthy; stopping it", child.spec.name, process.pid)
                await self._terminate(child, process)
                return

    def _spawn(self, spec: ChildSpec) -> _Process:
        environ = spec.env if spec.env is not None else os.environ
        if shutil.which(spec.argv[0], path=environ.get("PATH", os.defpath)) is None:
            raise _CannotStartError(f"cannot run {spec.argv[0]!r}: not found or not executable")
        pidfile = self._run_dir / f"{spec.name}.pid"
        read_end, write_end = os.pipe()  # neither end is inheritable; pass_fds passes the read end
        argv = [
            sys.executable,
            "-I",
            _WATCHDOG,
            str(read_end),
            repr(self._settings.stop_grace),
            str(os.getpid()),
            str(pidfile),
            "--",
            *spec.argv,
        ]
        try:
            with contextlib.ExitStack() as stack:
                output: int | IO[bytes] = subprocess.DEVNULL
                if spec.log_path is not None:
                    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
                    output = stack.enter_context(spec.log_path.open("ab"))
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=spec.env,
                    pass_fds=(read_end,),
                    start_new_session=True,
                )
        except OSError as exc:
            os.close(write_end)
            raise _CannotStartError(f"cannot launch {spec.argv[0]!r}: {exc}") from exc
        finally:
            os.close(read_end)
        return _Process(popen, write_end, pidfile)

    async def _terminate(self, child: _Child, process: _Process) -> None:
        """SIGTERM the group, wait the grace, SIGKILL the group, wait a little more."""
        grace = self._settings.stop_grace
        log.info("child=%s pid=%d SIGTERM to group", child.spec.name, process.pid)
        process.signal_group(signal.SIGTERM)
        with anyio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            log.warning(
                "child=%s pid=%d still running after %g s; SIGKILL to group",
                child.spec.name,
                process.pid,
                grace,
            )
            process.signal_group(signal.SIGKILL)
            with anyio.move_on_after(_KILL_WAIT):
                await process.wait()
        if process.returncode is None:
            log.error(
                "child=%s pid=%d survived SIGKILL; giving up on it", child.spec.name, process.pid
            )
            return
        child.last_exit = describe_exit(process.returncode)
        log.info("child=%s pid=%d ended exit=%r", child.spec.name, process.pid, child.last_exit)

    @staticmethod
    def _set(child: _Child, state: ChildState, reason: str | None = None) -> None:
        child.state = state
        child.since = time.time()
        pid = child.process.pid if child.process and child.process.returncode is None else None
        level = (
            logging.WARNING
            if state in {ChildState.DEGRADED, ChildState.FAILED, ChildState.BACKOFF}
            else logging.INFO
        )
        log.log(
            level,
            "child=%s state=%s pid=%s restarts=%d reason=%r",
            child.spec.name,
            state,
            pid,
            child.restarts,
            reason,
        )

    # ----------------------------------------------------------------------------------------
    # Leftovers from an earlier daemon.

    async def _reap(self, name: str, path: Path) -> str:
        pidfile = anyio.Path(path)
        try:
            record = json.loads(await pidfile.read_text())
            pgid = int(record["pgid"])
            recorded = [(int(p["pid"]), p["start"]) for p in record["processes"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            await pidfile.unlink(missing_ok=True)
            return f"{name}: removed unreadable pidfile {pidfile} ({exc})"
        ours = [
            pid
            for pid, start in recorded
            if isinstance(start, str) and process_start_time(pid) == start and _pgid(pid) == pgid
        ]
        if not ours:
            await pidfile.unlink(missing_ok=True)
            pids = ", ".join(str(pid) for pid, _ in recorded)
            return f"{name}: removed stale pidfile (none of pids {pids} is the recorded process)"
        grace = self._settings.stop_grace
        how = "SIGTERM"
        _killpg(pgid, signal.SIGTERM)
        if not await _group_gone(pgid, grace):
            how = f"SIGKILL after {grace:g} s"
            _killpg(pgid, signal.SIGKILL)
            if not await _group_gone(pgid, _KILL_WAIT):
                return f"{name}: process group {pgid} survived SIGKILL; pidfile kept"
        await pidfile.unlink(missing_ok=True)
        return f"{name}: stopped leftover process group {pgid} (pids {ours}) with {how}"


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(OSError):  # gone already, or only zombies left
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count: they run nothing,
    and where nobody reaps orphans (some containers' init) they stay forever."""
    if not _LINUX:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()  # state, ppid, pgrp, ...
            if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
                return True
    return False


async def _group_gone(pgid: int, within: float) -> bool:
    with anyio.move_on_after(within):
        while _group_alive(pgid):  # noqa: ASYNC110 - not our children: nothing to await
            await anyio.sleep(0.05)
        return True
    return False
