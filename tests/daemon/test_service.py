"""The login service: the rendered LaunchAgent and systemd unit, and the verbs that load them.

`launchctl` and `systemctl` are replaced by tests/daemon/bin/fake_service_manager.py, put first
on PATH under those names; it records every call and keeps the state a real manager would.
"""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.service import (
    LABEL,
    STDERR_LOG,
    STDOUT_LOG,
    SYSTEMD_UNIT,
    ServiceError,
    ServiceSpec,
    default_path_env,
    default_program,
    install,
    render_plist,
    render_systemd_unit,
    status,
    stop_timeout,
    uninstall,
)

pytestmark = pytest.mark.timeout(60)

FAKE = Path(__file__).resolve().parent / "bin" / "fake_service_manager.py"
UID = os.getuid()
SPECIAL = "dir & <b> 'q' \"dq\" %s $x"  # what XML, systemd and a shell each treat specially


@dataclass
class FakeManager:
    """The recording `launchctl`/`systemctl` on PATH, and a HOME in tmp_path."""

    bin: Path
    log: Path
    state_file: Path
    home: Path

    def calls(self) -> list[list[str]]:
        """Each recorded call as [tool, *args], then forget them."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        self.log.unlink()
        return [[entry["tool"], *entry["args"]] for entry in map(json.loads, lines)]

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_file.read_text())) if self.state_file.exists() else {}

    def seed(self, **values: Any) -> None:
        self.state_file.write_text(json.dumps({**self.state(), **values}))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeManager:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("launchctl", "systemctl"):
        wrapper = bin_dir / tool
        argv = shlex.join([sys.executable, str(FAKE), tool])
        wrapper.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
        wrapper.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    manager = FakeManager(bin_dir, tmp_path / "calls.jsonl", tmp_path / "state.json", home)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("SATCHEL_HOME", raising=False)
    monkeypatch.setenv("FAKE_SERVICE_LOG", str(manager.log))
    monkeypatch.setenv("FAKE_SERVICE_STATE", str(manager.state_file))
    return manager


def make_spec(root: Path, *, grace: float = 10, **overrides: Any) -> ServiceSpec:
    values: dict[str, Any] = {
        "program": default_program(root / "config dir" / "config.toml"),
        "log_dir": root / "logs",
        "shutdown_grace": grace,
        "satchel_home": root / "satchel home",
        "path_env": "/opt/homebrew/bin:/usr/bin:/bin",
    }
    return ServiceSpec(**{**values, **overrides})


# --- the LaunchAgent ------------------------------------------------------------------------


def test_the_plist_has_every_key_launchd_needs(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, grace=12.5)
    plist = plistlib.loads(render_plist(spec))
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [
        sys.executable,
        "-P",
        "-m",
        "daemon",
        "run",
        "--config",
        str(tmp_path / "config dir" / "config.toml"),
    ]
    assert all(isinstance(arg, str) for arg in plist["ProgramArguments"])
    assert os.path.isabs(plist["ProgramArguments"][0])
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert type(plist["ThrottleInterval"]) is int
    assert plist["ThrottleInterval"] >= 1
    assert type(plist["ExitTimeOut"]) is int
    assert plist["ExitTimeOut"] > 12.5
    assert plist["ExitTimeOut"] == stop_timeout(12.5)
    assert plist["ProcessType"] in {"Background", "Adaptive"}
    assert plist["StandardOutPath"] == str(tmp_path / "logs" / STDOUT_LOG)
    assert plist["StandardErrorPath"] == str(tmp_path / "logs" / STDERR_LOG)
    assert plist["EnvironmentVariables"] == {
        "PATH": "/opt/homebrew/bin:/usr/bin:/bin",
        "SATCHEL_HOME": str(tmp_path / "satchel home"),
        "PYTHONUNBUFFERED": "1",
    }


def test_the_plist_holds_no_tilde_or_home_even_when_given_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = ServiceSpec(
        program=[sys.executable, "-m", "daemon", "run", "--config", "~/satchel/config.toml"],
        log_dir=Path("~/logs"),
        shutdown_grace=10,
        satchel_home=Path("~/satchel"),
        path_env="~/bin:/usr/bin",
    )
    data = render_plist(spec)
    assert b"~" not in data
    assert b"$HOME" not in data
    plist = plistlib.loads(data)
    assert plist["ProgramArguments"][-1] == str(tmp_path / "satchel" / "config.toml")
    assert plist["StandardErrorPath"] == str(tmp_path / "logs" / STDERR_LOG)
    assert plist["EnvironmentVariables"]["PATH"] == f"{tmp_path / 'bin'}:/usr/bin"
    assert plist["EnvironmentVariables"]["SATCHEL_HOME"] == str(tmp_path / "satchel")


def test_special_characters_in_paths_survive_the_round_trip(tmp_path: Path) -> None:
    odd = tmp_path / SPECIAL
    spec = make_spec(
        odd,
        program=[str(odd / "python"), "--config", str(odd / "c.toml"), "<&>"],
        path_env=f"{odd}:/usr/bin",
    )
    data = render_plist(spec)
    assert b"<&>" not in data  # escaped, not pasted
    plist = plistlib.loads(data)
    assert plist["ProgramArguments"] == [
        str(odd / "python"),
        "--config",
        str(odd / "c.toml"),
        "<&>",
    ]
    assert plist["StandardOutPath"] == str(odd / "logs" / STDOUT_LOG)
    assert plist["EnvironmentVariables"]["PATH"] == f"{odd}:/usr/bin"
    assert plist["EnvironmentVariables"]["SATCHEL_HOME"] == str(odd / "satchel home")


def test_satchel_home_comes_from_the_environment_unless_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SATCHEL_HOME", str(tmp_path / "from env"))
    spec = ServiceSpec(program=[sys.executable], log_dir=tmp_path, shutdown_grace=1)
    assert spec.satchel_home == tmp_path / "from env"
    unset = ServiceSpec(
        program=[sys.executable], log_dir=tmp_path, shutdown_grace=1, satchel_home=None
    )
    assert "SATCHEL_HOME" not in plistlib.loads(render_plist(unset))["EnvironmentVariables"]
    assert "SATCHEL_HOME" not in render_systemd_unit(unset)


def test_path_env_puts_ollamas_directory_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ollama_dir = tmp_path / "ollama here"
    ollama_dir.mkdir()
    (ollama_dir / "ollama").write_text("#!/bin/sh\n")
    (ollama_dir / "ollama").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty'}:{ollama_dir}")
    entries = default_path_env().split(":")
    assert entries[0] == str(ollama_dir)
    assert entries[1:] == [
        "/opt/homebrew/bin",
        "/usr/local/bin",
        "/usr/bin",
        "/bin",
        "/usr/sbin",
        "/sbin",
    ]

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert default_path_env().split(":")[0] == "/opt/homebrew/bin"


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"program": []}, "program"),
        ({"program": ["python3", "-m", "daemon"]}, "program[0]: expected an absolute path"),
        ({"program": [sys.executable, "$HOME/config.toml"]}, "program[1]: expected an expanded"),
        ({"log_dir": Path("logs")}, "log_dir: expected an absolute path"),
        ({"satchel_home": Path("${HOME}/s")}, "satchel_home"),
        ({"path_env": "bin:/usr/bin"}, "path_env: expected an absolute path"),
        ({"path_env": ""}, "path_env"),
        ({"log_dir": Path("/var/a\nb")}, "control characters"),
        ({"shutdown_grace": float("nan")}, "shutdown_grace"),
        ({"restart_interval": 0}, "restart_interval"),
    ],
)
def test_a_bad_spec_is_refused_with_its_field_named(
    tmp_path: Path, overrides: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint.replace("[", r"\[").replace("$", r"\$")):
        make_spec(tmp_path, **overrides)


def test_a_template_that_does_not_match_the_code_is_refused(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    unknown = tmp_path / "unknown.plist"
    unknown.write_bytes(plistlib.dumps({"Label": "@label@", "X": "@nope@"}))
    with pytest.raises(ServiceError, match="unknown placeholder @nope@"):
        render_plist(spec, template=unknown)
    missing_keys = tmp_path / "partial.plist"
    missing_keys.write_bytes(plistlib.dumps({"Label": "@label@"}))
    with pytest.raises(ServiceError, match="no place for exit_timeout"):
        render_plist(spec, template=missing_keys)
    with pytest.raises(ServiceError, match="cannot read"):
        render_plist(spec, template=tmp_path / "absent.plist")


# --- the systemd unit -----------------------------------------------------------------------

ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}


def systemd_words(value: str, *, dollars: bool) -> list[str]:
    """Split a setting's value as systemd does: quoted words, C escapes, `%%`, and `$$`."""
    words = []
    i = 0
    while i < len(value):
        if value[i] == " ":
            i += 1
            continue
        assert value[i] in "\"'", f"unquoted word at {i}: {value!r}"
        quote, word = value[i], []
        i += 1
        while value[i] != quote:
            if value[i] == "\\":
                word.append(ESCAPES[value[i + 1]])
                i += 2
            else:
                word.append(value[i])
                i += 1
        i += 1
        assert i == len(value) or value[i] == " ", "a closing quote must end the word"
        words.append("".join(word).replace("%%", "%"))
    if dollars:
        words[1:] = [word.replace("$$", "$") for word in words[1:]]
    return words


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_has_every_setting_systemd_needs(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, grace=12.5)
    text = render_systemd_unit(spec)
    settings = unit_settings(text)
    assert "\n[Service]\n" in text
    assert "\n[Install]\n" in text
    assert systemd_words(settings["ExecStart"][0], dollars=True) == list(spec.program)
    assert os.path.isabs(spec.program[0])
    assert settings["Restart"] == ["on-failure"]
    assert int(settings["RestartSec"][0]) >= 1
    assert float(settings["TimeoutStopSec"][0]) > 12.5
    assert settings["KillMode"][0] in {"mixed", "control-group"}
    assert settings["WantedBy"] == ["default.target"]
    environment = [w for v in settings["Environment"] for w in systemd_words(v, dollars=False)]
    assert "PATH=/opt/homebrew/bin:/usr/bin:/bin" in environment
    assert f"SATCHEL_HOME={tmp_path / 'satchel home'}" in environment


def test_the_unit_holds_no_tilde_or_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = ServiceSpec(
        program=[sys.executable, "--config", "~/c.toml"],
        log_dir=Path("~/logs"),
        shutdown_grace=10,
        satchel_home=Path("~/s"),
        path_env="~/bin:/usr/bin",
    )
    text = render_systemd_unit(spec)
    assert "~" not in text
    assert "$HOME" not in text
    assert f'"{tmp_path / "c.toml"}"' in text


def test_special_characters_are_quoted_for_systemd(tmp_path: Path) -> None:
    odd = tmp_path / "a b & <c> %n"
    args = ["--config", str(tmp_path / SPECIAL / "c.toml"), "$HOMEWARD", "100%", "back\\slash"]
    spec = make_spec(tmp_path, program=[str(odd / "python"), *args], path_env=f"{odd}:/bin")
    settings = unit_settings(render_systemd_unit(spec))
    assert systemd_words(settings["ExecStart"][0], dollars=True) == [str(odd / "python"), *args]
    environment = [w for v in settings["Environment"] for w in systemd_words(v, dollars=False)]
    assert f"PATH={odd}:/bin" in environment


@pytest.mark.parametrize("char", ['"', "'", "\\", "$"])
def test_an_executable_path_systemd_cannot_run_is_refused(tmp_path: Path, char: str) -> None:
    spec = make_spec(tmp_path, program=[str(tmp_path / f"a{char}b" / "python")])
    with pytest.raises(ValueError, match="systemd cannot run an executable"):
        render_systemd_unit(spec)


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    odd = tmp_path / "python here & <there> %n"
    odd.mkdir()
    (odd / "python").symlink_to(sys.executable)
    spec = make_spec(tmp_path, program=[str(odd / "python"), "--config", str(tmp_path / SPECIAL)])
    unit = tmp_path / SYSTEMD_UNIT
    unit.write_text(render_systemd_unit(spec))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert str(unit) not in result.stdout + result.stderr  # no warning about our file


# --- install, uninstall, status on macOS ----------------------------------------------------


def test_install_writes_the_plist_and_bootstraps_it(fake: FakeManager, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    message = install(spec, platform="darwin")
    plist = fake.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert fake.calls() == [
        ["launchctl", "print", f"gui/{UID}/{LABEL}"],
        ["launchctl", "bootstrap", f"gui/{UID}", str(plist)],
    ]
    assert plist.read_bytes() == render_plist(spec)
    assert plist.stat().st_mode & 0o777 == 0o644
    assert spec.log_dir.is_dir()
    assert message.startswith(f"Installed {LABEL}: wrote {plist}")
    assert fake.state()["loaded"] == LABEL


def test_reinstall_boots_out_the_loaded_service_first(fake: FakeManager, tmp_path: Path) -> None:
    install(make_spec(tmp_path, grace=10), platform="darwin")
    fake.calls()
    # launchd keeps listing a booted-out service for a moment; bootstrap must wait for it.
    fake.seed(linger_after_bootout=2)
    message = install(make_spec(tmp_path, grace=30), platform="darwin")
    plist = fake.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert fake.calls() == [
        ["launchctl", "print", f"gui/{UID}/{LABEL}"],
        ["launchctl", "bootout", f"gui/{UID}/{LABEL}"],
        *[["launchctl", "print", f"gui/{UID}/{LABEL}"]] * 3,
        ["launchctl", "bootstrap", f"gui/{UID}", str(plist)],
    ]
    assert "Reinstalled" in message
    assert plistlib.loads(plist.read_bytes())["ExitTimeOut"] == stop_timeout(30)
    assert fake.state()["loaded"] == LABEL


def test_bootstrap_retries_launchds_transient_io_error(fake: FakeManager, tmp_path: Path) -> None:
    fake.seed(fail={"bootstrap": {"code": 5, "stderr": "Bootstrap failed: 5: EIO\n", "times": 1}})
    install(make_spec(tmp_path), platform="darwin")
    assert [call[1] for call in fake.calls()] == ["print", "bootstrap", "bootstrap"]
    assert fake.state()["loaded"] == LABEL


def test_uninstall_boots_out_and_removes_the_plist(fake: FakeManager, tmp_path: Path) -> None:
    install(make_spec(tmp_path), platform="darwin")
    plist = fake.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    fake.calls()
    message = uninstall(platform="darwin")
    assert fake.calls() == [
        ["launchctl", "print", f"gui/{UID}/{LABEL}"],
        ["launchctl", "bootout", f"gui/{UID}/{LABEL}"],
        ["launchctl", "print", f"gui/{UID}/{LABEL}"],
    ]
    assert not plist.exists()
    assert "Uninstalled" in message
    again = uninstall(platform="darwin")
    assert fake.calls() == [["launchctl", "print", f"gui/{UID}/{LABEL}"]]
    assert "not installed" in again


def test_status_reports_installed_loaded_and_the_pid(fake: FakeManager, tmp_path: Path) -> None:
    before = status(platform="darwin")
    assert (before.installed, before.loaded, before.pid, before.running) == (
        False,
        False,
        None,
        False,
    )
    assert before.summary == f"{LABEL}: not installed, not loaded, not running"
    install(make_spec(tmp_path), platform="darwin")
    fake.calls()
    after = status(platform="darwin")
    assert fake.calls() == [["launchctl", "print", f"gui/{UID}/{LABEL}"]]
    assert (after.installed, after.loaded, after.pid, after.state) == (True, True, 4242, "running")
    assert "running (pid 4242)" in after.summary
    assert after.as_dict()["pid"] == 4242
    assert json.loads(json.dumps(after.as_dict()))["loaded"] is True


def test_a_failing_launchctl_names_the_command_and_its_stderr(
    fake: FakeManager, tmp_path: Path
) -> None:
    refusal = "Bootstrap failed: 134: Service cannot load in requested session\n"
    fake.seed(fail={"bootstrap": {"code": 134, "stderr": refusal, "times": -1}})
    with pytest.raises(ServiceError) as caught:
        install(make_spec(tmp_path), platform="darwin")
    error = caught.value
    assert f"launchctl bootstrap gui/{UID} " in str(error)
    assert "exited with code 134" in str(error)
    assert "Service cannot load in requested session" in str(error)
    assert (error.returncode, error.stderr) == (134, refusal)
    assert error.command[:2] == ("launchctl", "bootstrap")


# --- install, uninstall, status on Linux ----------------------------------------------------


@pytest.mark.parametrize("xdg", [None, "relative/ignored", "absolute"])
def test_install_writes_the_unit_and_enables_it(
    fake: FakeManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg: str | None
) -> None:
    config = fake.home / ".config"
    if xdg == "absolute":
        config = tmp_path / "xdg config"
        monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    elif xdg is not None:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    spec = make_spec(tmp_path)
    message = install(spec, platform="linux")
    unit = config / "systemd" / "user" / SYSTEMD_UNIT
    assert fake.calls() == [
        ["systemctl", "--user", "show", SYSTEMD_UNIT, "--property=ActiveState"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", SYSTEMD_UNIT],
    ]
    assert unit.read_text() == render_systemd_unit(spec)
    assert str(unit) in message
    assert fake.state()["active"] is True


def test_reinstall_stops_the_running_unit_first(fake: FakeManager, tmp_path: Path) -> None:
    install(make_spec(tmp_path, grace=10), platform="linux")
    fake.calls()
    message = install(make_spec(tmp_path, grace=30), platform="linux")
    assert [call[2] for call in fake.calls()] == ["show", "stop", "daemon-reload", "enable"]
    unit = fake.home / ".config" / "systemd" / "user" / SYSTEMD_UNIT
    assert f"TimeoutStopSec={stop_timeout(30)}\n" in unit.read_text()
    assert "Reinstalled" in message
    assert fake.state()["active"] is True


def test_uninstall_disables_and_removes_the_unit(fake: FakeManager, tmp_path: Path) -> None:
    install(make_spec(tmp_path), platform="linux")
    unit = fake.home / ".config" / "systemd" / "user" / SYSTEMD_UNIT
    fake.calls()
    message = uninstall(platform="linux")
    assert fake.calls() == [
        ["systemctl", "--user", "disable", "--now", SYSTEMD_UNIT],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert not unit.exists()
    assert "Uninstalled" in message
    assert (fake.state()["active"], fake.state()["enabled"]) == (False, False)
    assert "not installed" in uninstall(platform="linux")
    assert fake.calls() == []


def test_status_parses_systemctl_show(fake: FakeManager, tmp_path: Path) -> None:
    before = status(platform="linux")
    assert (before.installed, before.loaded, before.pid) == (False, False, None)
    assert (
        before.summary
        == f"{SYSTEMD_UNIT}: not installed, not enabled, not running (inactive (dead))"
    )
    install(make_spec(tmp_path), platform="linux")
    fake.calls()
    after = status(platform="linux")
    assert fake.calls() == [
        [
            "systemctl",
            "--user",
            "show",
            SYSTEMD_UNIT,
            "--property=LoadState,UnitFileState,ActiveState,SubState,MainPID",
        ]
    ]
    assert (after.installed, after.loaded, after.pid) == (True, True, 4343)
    assert after.state == "active (running)"
    assert after.summary.endswith("enabled, running (pid 4343)")


def test_a_failing_systemctl_names_the_command_and_its_stderr(
    fake: FakeManager, tmp_path: Path
) -> None:
    denied = "Failed to enable unit: Access denied\n"
    fake.seed(fail={"enable": {"code": 1, "stderr": denied, "times": -1}})
    with pytest.raises(ServiceError) as caught:
        install(make_spec(tmp_path), platform="linux")
    message = str(caught.value)
    assert f"`systemctl --user enable --now {SYSTEMD_UNIT}` exited with code 1" in message
    assert "Access denied" in message
    assert caught.value.returncode == 1


def test_a_hung_command_times_out(fake: FakeManager) -> None:
    fake.seed(hang={"show": 30})
    with pytest.raises(ServiceError, match=r"systemctl --user show .* timed out after 0.5 s"):
        status(platform="linux", timeout=0.5)


# --- where there is no service manager ------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "complaint"),
    [
        ("darwin", "launchctl not found on PATH: is this macOS?"),
        ("linux", "systemctl not found on PATH: is this a systemd system?"),
    ],
)
def test_a_missing_manager_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platform: str, complaint: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ServiceError, match=complaint):
        install(make_spec(tmp_path), platform=platform)
    with pytest.raises(ServiceError, match=complaint):
        status(platform=platform)
    assert not (tmp_path / "Library").exists()  # nothing written before the check


def test_an_unsupported_platform_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="unsupported platform 'win32'"):
        install(make_spec(tmp_path), platform="win32")
