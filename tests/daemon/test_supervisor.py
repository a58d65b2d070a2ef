"""The supervisor with real child processes, real process groups and real signals.

The children are `supervised_child.py`; their health check is a TCP connect to a loopback
port they open when ready. Timings are shrunk; nothing asserts on wall-clock time, only on
what happened, polled with generous deadlines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from daemon.supervisor import ChildFailed, ChildSpec, ChildState, Supervisor, SupervisorSettings
from daemon.watchdog import process_start_time
from tests.daemon.procs import DEADLINE, free_port, port_open, running, until, until_gone, wait_gone

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("supervised_child.py")
WATCHDOG = ROOT / "daemon" / "watchdog.py"
FAST = SupervisorSettings(
    ready_timeout=10.0,
    restart_initial=0.05,
    restart_max=0.2,
    degraded_after=100,
    degraded_window=60.0,
    stop_grace=0.5,
    health_interval=0.0,
)


def child_argv(port: int | None = None, pids: Path | None = None, *extra: str) -> list[str]:
    argv = [sys.executable, str(CHILD)]
    if port is not None:
        argv += ["--port", str(port)]
    if pids is not None:
        argv += ["--pids", str(pids)]
    return argv + list(extra)


def read_pids(path: Path) -> list[int]:
    record = json.loads(path.read_text())
    return [pid for pid in (record["child"], record["grandchild"]) if pid]


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    """Pids to SIGKILL if a test fails halfway (so a failure leaves nothing behind)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.anyio
async def test_a_child_becomes_ready_and_stops_on_sigterm_with_its_group(
    tmp_path: Path, cleanup: list[int]
) -> None:
    port, pids = free_port(), tmp_path / "pids.json"
    spec = ChildSpec("web", child_argv(port, pids, "--grandchild"), port_open(port))
    async with Supervisor(tmp_path / "run", FAST) as supervisor:
        status = await supervisor.start(spec)
        assert status.state is ChildState.READY
        assert status.pid is not None
        assert running(status.pid)
        child, grandchild = read_pids(pids)
        cleanup += [status.pid, child, grandchild]
        assert os.getpgid(child) == os.getpgid(grandchild) == status.pid != os.getpgid(0)
        record = json.loads((tmp_path / "run" / "web.pid").read_text())
        assert record["pgid"] == status.pid
        assert [p["pid"] for p in record["processes"]] == [status.pid, child]
        assert await supervisor.start(spec) == supervisor.get("web")  # already up: a no-op

        await supervisor.stop("web")
        stopped = supervisor.get("web")
        assert stopped is not None
        assert stopped.state is ChildState.STOPPED
        assert stopped.pid is None
        assert stopped.last_exit == "killed by SIGTERM"
        await until_gone([status.pid, child, grandchild])
        assert not (tmp_path / "run" / "web.pid").exists()
        await supervisor.stop("web")  # idempotent
        await supervisor.stop("never-started")


@pytest.mark.anyio
async def test_stop_escalates_to_sigkill_for_a_group_that_ignores_sigterm(
    tmp_path: Path, cleanup: list[int]
) -> None:
    port, pids = free_port(), tmp_path / "pids.json"
    argv = child_argv(port, pids, "--grandchild", "--ignore-term")
    async with Supervisor(tmp_path / "run", FAST) as supervisor:
        status = await supervisor.start(ChildSpec("stubborn", argv, port_open(port)))
        assert status.pid is not None
        everyone = [status.pid, *read_pids(pids)]
        cleanup += everyone
        await supervisor.stop("stubborn")
        stopped = supervisor.get("stubborn")
        assert stopped is not None
        assert stopped.last_exit == "killed by SIGKILL"
        await until_gone(everyone)


@pytest.mark.anyio
async def test_leaving_the_supervisor_stops_every_child(tmp_path: Path, cleanup: list[int]) -> None:
    everyone: list[int] = []
    async with Supervisor(tmp_path / "run", FAST) as supervisor:
        for name, extra in (("a", ()), ("b", ("--ignore-term",))):
            port, pids = free_port(), tmp_path / f"{name}.json"
            argv = child_argv(port, pids, "--grandchild", *extra)
            status = await supervisor.start(ChildSpec(name, argv, port_open(port)))
            assert status.pid is not None
            everyone += [status.pid, *read_pids(pids)]
        cleanup += everyone
    assert [s.state for s in supervisor.status()] == [ChildState.STOPPED, ChildState.STOPPED]
    await until_gone(everyone)


@pytest.mark.anyio
async def test_a_child_that_is_never_ready_fails_and_leaves_nothing(
    tmp_path: Path, cleanup: list[int]
) -> None:
    pids = tmp_path / "pids.json"
    argv = child_argv(None, pids, "--grandchild", "--ignore-term")
    settings = SupervisorSettings(ready_timeout=0.5, stop_grace=0.2, health_interval=0)
    async with Supervisor(tmp_path / "run", settings) as supervisor:
        spec = ChildSpec("sleepy", argv, port_open(free_port()))
        with pytest.raises(ChildFailed, match=r"child sleepy .*not ready within 0\.5 s"):
            await supervisor.start(spec)
        everyone = read_pids(pids)
        cleanup += everyone
        status = supervisor.get("sleepy")
        assert status is not None
        assert status.state is ChildState.FAILED
        assert status.pid is None
        assert status.last_error is not None
        assert "not ready" in status.last_error
        await until_gone(everyone)
        assert not (tmp_path / "run" / "sleepy.pid").exists()


@pytest.mark.anyio
async def test_a_child_that_exits_or_cannot_run_fails_with_the_reason(tmp_path: Path) -> None:
    async with Supervisor(tmp_path / "run", FAST) as supervisor:
        argv = child_argv(None, None, "--exit-after", "0", "--exit-code", "7")
        with pytest.raises(ChildFailed, match=r"child quitter .*exited with exit code 7"):
            await supervisor.start(ChildSpec("quitter", argv, port_open(free_port())))
        missing = ChildSpec("ghost", ["no-such-program-here"], port_open(free_port()))
        with pytest.raises(ChildFailed, match="'no-such-program-here': not found"):
            await supervisor.start(missing)
        statuses = {s.name: s for s in supervisor.status()}
        assert statuses["quitter"].last_exit == "exit code 7"
        assert statuses["ghost"].state is ChildState.FAILED


@pytest.mark.anyio
async def test_cancelling_start_stops_the_child(tmp_path: Path, cleanup: list[int]) -> None:
    pids = tmp_path / "pids.json"
    async with Supervisor(tmp_path / "run", FAST) as supervisor:
        spec = ChildSpec("slow", child_argv(None, pids, "--grandchild"), port_open(free_port()))
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.start, spec)
            await until(pids.exists)
            tg.cancel_scope.cancel()
        everyone = read_pids(pids)
        cleanup += everyone
        status = supervisor.get("slow")
        assert status is not None
        assert status.state is ChildState.STOPPED
        await until_gone(everyone)


@pytest.mark.anyio
async def test_a_crash_is_answered_by_a_restart_with_backoff(
    tmp_path: Path, cleanup: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.supervisor")
    port = free_port()
    argv = child_argv(port, None, "--exit-after", "0.2")
    async with Supervisor(tmp_path / "run", FAST) as supervisor:
        first = await supervisor.start(ChildSpec("crashy", argv, port_open(port)))
        seen: set[int] = set()

        def restarted_three_times() -> bool:
            status = supervisor.get("crashy")
            assert status is not None
            if status.pid is not None:
                seen.add(status.pid)
                cleanup.append(status.pid)
            return status.restarts >= 3 and status.state is ChildState.READY

        await until(restarted_three_times)
        status = supervisor.get("crashy")
        assert status is not None
        assert status.pid != first.pid
        assert len(seen) >= 2
        assert status.last_exit == "exit code 3"
        assert status.last_error == "exited with exit code 3"
    # Backoff k (k = crashes so far) is jittered within [base/2, base], base = 0.05 * 2**(k-1)
    # capped at 0.2.
    delays = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"restart in ([0-9.]+) s", r.getMessage()))
    ]
    assert len(delays) >= 3
    for k, delay in enumerate(delays, start=1):
        base = min(0.2, 0.05 * 2 ** (k - 1))
        assert base / 2 - 0.01 <= delay <= base + 0.01, (k, delays)


@pytest.mark.anyio
async def test_repeated_crashes_make_a_child_degraded_until_started_again(
    tmp_path: Path, cleanup: list[int]
) -> None:
    port = free_port()
    settings = SupervisorSettings(
        ready_timeout=10,
        restart_initial=0.02,
        restart_max=0.05,
        degraded_after=3,
        degraded_window=60,
        stop_grace=0.5,
        health_interval=0,
    )
    crashing = ChildSpec("flaky", child_argv(port, None, "--exit-after", "0.1"), port_open(port))
    async with Supervisor(tmp_path / "run", settings) as supervisor:
        await supervisor.start(crashing)

        def degraded() -> bool:
            status = supervisor.get("flaky")
            assert status is not None
            if status.pid is not None:
                cleanup.append(status.pid)
            return status.state is ChildState.DEGRADED

        await until(degraded)
        status = supervisor.get("flaky")
        assert status is not None
        assert status.restarts == 2
        assert status.pid is None
        assert status.last_error is not None
        assert "3 crashes within 60 s" in status.last_error
        await anyio.sleep(0.5)  # several backoffs' worth: nothing is restarted
        assert supervisor.get("flaky") == status

        steady = ChildSpec("flaky", child_argv(port), port_open(port))
        again = await supervisor.start(steady)
        assert again.state is ChildState.READY
        assert again.restarts == 0
        assert again.pid is not None
        cleanup.append(again.pid)


@pytest.mark.anyio
async def test_a_child_failing_its_health_checks_is_restarted(
    tmp_path: Path, cleanup: list[int]
) -> None:
    port = free_port()
    sick = anyio.Event()
    answers = port_open(port)

    async def healthy() -> bool:
        return not sick.is_set() and await answers()

    settings = SupervisorSettings(
        ready_timeout=10, restart_initial=0.05, stop_grace=0.5, health_interval=0.05
    )
    async with Supervisor(tmp_path / "run", settings) as supervisor:
        first = await supervisor.start(ChildSpec("hung", child_argv(port), healthy))
        assert first.pid is not None
        cleanup.append(first.pid)
        sick.set()

        def noticed() -> bool:
            status = supervisor.get("hung")
            return status is not None and status.state is not ChildState.READY

        await until(noticed)
        sick = anyio.Event()  # healthy again for the restarted child

        def back() -> bool:
            status = supervisor.get("hung")
            return status is not None and status.state is ChildState.READY

        await until(back)
        status = supervisor.get("hung")
        assert status is not None
        assert status.pid is not None
        cleanup.append(status.pid)
        assert status.restarts == 1
        assert status.pid != first.pid
        assert status.last_error == "failed 3 health checks in a row"
        await until_gone([first.pid])


# --------------------------------------------------------------------------------------------
# The daemon dies.


@contextlib.contextmanager
def driver_with_child(run_dir: Path, pids: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A stand-in daemon that supervises one child; yields it and the child's launcher pid."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.supervisor_driver", str(run_dir), str(pids)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as driver:
        try:
            assert driver.stdout is not None
            line = driver.stdout.readline()
            assert line.startswith("ready "), line
            yield driver, int(line.split()[1])
        finally:
            driver.kill()


def test_children_die_with_a_sigkilled_daemon(tmp_path: Path, cleanup: list[int]) -> None:
    pids = tmp_path / "pids.json"
    with driver_with_child(tmp_path / "run", pids) as (driver, launcher):
        everyone = [launcher, *read_pids(pids)]
        cleanup += everyone
        assert all(running(pid) for pid in everyone)
        driver.kill()
        driver.wait(timeout=10)
    wait_gone(everyone, within=10)


def test_the_pipe_alone_stops_the_group(tmp_path: Path, cleanup: list[int]) -> None:
    # Here the launcher's parent (this test) stays alive, so only the pipe can tell it to go.
    read_end, write_end = os.pipe()
    pids, pidfile = tmp_path / "pids.json", tmp_path / "x.pid"
    argv = [sys.executable, "-I", str(WATCHDOG), str(read_end), "0.3", str(os.getpid())]
    argv += [str(pidfile), "--", *child_argv(None, pids, "--grandchild", "--ignore-term")]
    with subprocess.Popen(argv, pass_fds=(read_end,), start_new_session=True) as launcher:
        os.close(read_end)
        try:
            deadline = time.monotonic() + DEADLINE
            while not (pids.exists() and pidfile.exists()):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            everyone = read_pids(pids)
            cleanup += [launcher.pid, *everyone]
            assert launcher.poll() is None
        finally:
            os.close(write_end)
        assert launcher.wait(timeout=10) == -signal.SIGKILL  # it kills its group, itself last
    wait_gone(everyone)
    assert not pidfile.exists()


INTERMEDIATE = """
import os, subprocess, sys, time
fd = int(sys.argv[1])
argv = [sys.executable, "-I", sys.argv[2], str(fd), "0.3", str(os.getpid()), *sys.argv[3:]]
subprocess.Popen(argv, pass_fds=(fd,), start_new_session=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_parent_death_signal_alone_stops_the_group(tmp_path: Path, cleanup: list[int]) -> None:
    # The pipe's write end stays open here, in the test: only the parent-death signal can
    # tell the launcher that its parent (the intermediate process) died.
    read_end, write_end = os.pipe()
    pids, pidfile = tmp_path / "pids.json", tmp_path / "x.pid"
    child = child_argv(None, pids, "--grandchild", "--ignore-term")
    argv = [sys.executable, "-c", INTERMEDIATE, str(read_end), str(WATCHDOG), str(pidfile)]
    try:
        with subprocess.Popen([*argv, "--", *child], pass_fds=(read_end,)) as parent:
            os.close(read_end)
            try:
                deadline = time.monotonic() + DEADLINE
                while not (pidfile.exists() and pids.exists()):
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                launcher = json.loads(pidfile.read_text())["pgid"]
                everyone = [launcher, *read_pids(pids)]
                cleanup += everyone
                assert all(running(pid) for pid in everyone)
            finally:
                parent.kill()
        wait_gone(everyone)
        assert not pidfile.exists()
    finally:
        os.close(write_end)


def test_leftovers_are_reaped_by_pidfile(tmp_path: Path, cleanup: list[int]) -> None:
    # Both the daemon and the launcher die at once, so no watchdog acts: the child and
    # grandchild live on, and only the pidfile knows about them.
    pids, run_dir = tmp_path / "pids.json", tmp_path / "run"
    with driver_with_child(run_dir, pids) as (driver, launcher):
        everyone = read_pids(pids)
        cleanup += [launcher, *everyone]
        os.kill(launcher, signal.SIGSTOP)  # it can no longer react to anything
        driver.kill()
        driver.wait(timeout=10)
        os.kill(launcher, signal.SIGKILL)
    wait_gone([launcher])
    time.sleep(0.3)
    assert all(running(pid) for pid in everyone)
    assert (run_dir / "victim.pid").exists()

    async def reap() -> list[str]:
        async with Supervisor(run_dir, FAST) as supervisor:
            return await supervisor.reap_leftovers()

    done = anyio.run(reap)
    assert len(done) == 1
    assert re.match(rf"victim: stopped leftover process group {launcher} .*SIGKILL", done[0])
    wait_gone(everyone)
    assert not (run_dir / "victim.pid").exists()


def test_a_recycled_pid_is_never_killed(tmp_path: Path, cleanup: list[int]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    ) as bystander:
        cleanup.append(bystander.pid)
        start = process_start_time(bystander.pid)
        assert start is not None
        recycled = {"pgid": bystander.pid, "processes": [{"pid": bystander.pid, "start": "0:1"}]}
        (run_dir / "old.pid").write_text(json.dumps(recycled))
        unknown = {"pgid": bystander.pid, "processes": [{"pid": bystander.pid, "start": None}]}
        (run_dir / "unknown.pid").write_text(json.dumps(unknown))
        (run_dir / "garbage.pid").write_text("not json")

        async def reap() -> list[str]:
            async with Supervisor(run_dir, FAST) as supervisor:
                return await supervisor.reap_leftovers()

        done = anyio.run(reap)
        assert done[0].startswith("garbage: removed unreadable pidfile")
        assert done[1].startswith("old: removed stale pidfile")
        assert done[2].startswith("unknown: removed stale pidfile")
        assert bystander.poll() is None
        assert running(bystander.pid)
        assert list(run_dir.iterdir()) == []

        # The same process with its true start time is taken for a leftover and stopped.
        (run_dir / "real.pid").write_text(
            json.dumps(
                {"pgid": bystander.pid, "processes": [{"pid": bystander.pid, "start": start}]}
            )
        )
        done = anyio.run(reap)
        pid = bystander.pid
        assert done == [f"real: stopped leftover process group {pid} (pids [{pid}]) with SIGTERM"]
        assert bystander.wait(timeout=10) == -signal.SIGTERM
