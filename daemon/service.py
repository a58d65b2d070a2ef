"""Satchel as a login service: a launchd LaunchAgent on macOS, a systemd --user unit on Linux.

This module owns the service definition and the three verbs behind `satchel service
install|uninstall|status`. `ServiceSpec` says what to run; `render_plist` fills the template in
`launchd/` and `render_systemd_unit` writes the unit in code; `install`, `uninstall` and `status`
drive `launchctl` or `systemctl --user` and translate their failures into `ServiceError`.

Every path that reaches a service file is absolute and expanded: launchd runs no shell, and
systemd expands neither `~` nor `$HOME`, so a `~` there would name a directory called `~`.
The verbs are synchronous: each is a handful of short commands run once from the CLI.
"""

from __future__ import annotations

import math
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.parsers.expat import ExpatError

LABEL = "dev.satchel.daemon"
"""The LaunchAgent's label, and the name of its plist in ~/Library/LaunchAgents."""
SYSTEMD_UNIT = "satchel.service"
"""The systemd --user unit's name."""
TEMPLATE = Path(__file__).resolve().parents[1] / "launchd" / "satchel.plist.template"
"""The LaunchAgent template that `render_plist` fills."""
STDOUT_LOG = "satchel.stdout.log"
STDERR_LOG = "satchel.stderr.log"
STANDARD_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
"""Where Homebrew, Ollama's installer and the system put their tools, in lookup order."""
DEFAULT_TIMEOUT = 120.0
"""Seconds one service-manager command may take: stopping waits for the daemon to exit."""

Manager = Literal["launchd", "systemd"]

_PLACEHOLDER = re.compile(r"@([a-z_]+)@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOME_VARIABLE = re.compile(r"\$(?:HOME\b|\{HOME\})")
_LAUNCHCTL_NOT_FOUND = 113  # "Could not find service ... in domain"
_LAUNCHCTL_EIO = 5  # bootstrap while launchd still tears down the previous instance
_BOOTSTRAP_ATTEMPTS = 4
_POLL_SECONDS = 0.1
_ACTIVE = frozenset({"active", "activating", "reloading", "deactivating"})


class ServiceError(Exception):
    """The service could not be managed: a missing tool, a failed command, an unreadable file."""

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.command = tuple(command)
        self.returncode = returncode
        self.stderr = stderr


def default_path_env() -> str:
    """PATH for the service: Ollama's directory (if `ollama` is on PATH now), then the standard."""
    found = shutil.which("ollama")
    entries = [os.path.dirname(os.path.abspath(found))] if found else []
    entries += [entry for entry in STANDARD_PATH if entry not in entries]
    return os.pathsep.join(entries)


def _satchel_home_from_env() -> Path | None:
    value = os.environ.get("SATCHEL_HOME")
    return Path(value) if value else None


def _expanded(path: Path | str, what: str) -> Path:
    """An absolute path with `~` expanded; anything else that still needs a shell is refused."""
    expanded = Path(os.path.expanduser(path))
    _check_text(str(expanded), what)
    if not expanded.is_absolute():
        raise ValueError(f"{what}: expected an absolute path, got {str(path)!r}")
    return expanded


def _check_text(value: str, what: str) -> None:
    if _HOME_VARIABLE.search(value) or value.startswith("~"):
        raise ValueError(f"{what}: expected an expanded path, got {value!r}")
    if _CONTROL.search(value):
        raise ValueError(f"{what}: control characters cannot go into a service file: {value!r}")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What the login service runs. Paths are expanded (`~`) and must be absolute."""

    program: Sequence[str]
    """The daemon's argv; the first item is the absolute path of the executable."""
    log_dir: Path
    """Where launchd writes the daemon's stdout and stderr (systemd sends them to the journal)."""
    shutdown_grace: float
    """The daemon's `[daemon] shutdown_grace_seconds`; the manager waits longer than this."""
    satchel_home: Path | None = field(default_factory=_satchel_home_from_env)
    """Exported as SATCHEL_HOME; taken from the environment unless given (None: not exported)."""
    path_env: str = field(default_factory=default_path_env)
    """PATH for the daemon and its children (`ollama serve`)."""
    restart_interval: int = 10
    """Seconds between a crash and the restart (ThrottleInterval, RestartSec)."""

    def __post_init__(self) -> None:
        if isinstance(self.program, str) or not self.program:
            raise ValueError(f"program: expected a non-empty argv list, got {self.program!r}")
        program = [str(_expanded(self.program[0], "program[0]"))]
        for index, given in enumerate(self.program[1:], start=1):
            arg = os.path.expanduser(given) if given.startswith("~") else given
            _check_text(arg, f"program[{index}]")
            program.append(arg)
        object.__setattr__(self, "program", tuple(program))
        object.__setattr__(self, "log_dir", _expanded(self.log_dir, "log_dir"))
        if self.satchel_home is not None:
            home = _expanded(self.satchel_home, "satchel_home")
            object.__setattr__(self, "satchel_home", home)
        entries = [str(_expanded(e, "path_env")) for e in self.path_env.split(os.pathsep) if e]
        if not entries:
            raise ValueError("path_env: expected at least one directory, got an empty PATH")
        object.__setattr__(self, "path_env", os.pathsep.join(entries))
        if not (math.isfinite(self.shutdown_grace) and self.shutdown_grace >= 0):
            raise ValueError(
                f"shutdown_grace: expected a finite number of seconds >= 0, "
                f"got {self.shutdown_grace!r}"
            )
        if self.restart_interval < 1:
            raise ValueError(
                f"restart_interval: expected whole seconds >= 1, got {self.restart_interval!r}"
            )


def default_program(config_file: Path) -> list[str]:
    """The daemon's argv: this interpreter running `-m daemon run` on an absolute config path."""
    if not sys.executable:
        raise ServiceError("cannot tell which Python runs Satchel: sys.executable is empty")
    config = Path(os.path.expanduser(config_file)).absolute()
    # -P: `python -m` would otherwise put the working directory first on sys.path, and a
    # `daemon/` or `daemon.py` there would shadow ours.
    return [sys.executable, "-P", "-m", "daemon", "run", "--config", str(config)]


def stop_timeout(shutdown_grace: float) -> int:
    """Seconds the manager waits after SIGTERM before SIGKILL (ExitTimeOut, TimeoutStopSec)."""
    # The daemon drains in-flight work within the grace, then gives each child the grace
    # between SIGTERM and SIGKILL: two graces, plus slack for closing the stores.
    return math.ceil(2 * shutdown_grace) + 5


# --- rendering ------------------------------------------------------------------------------


def render_plist(spec: ServiceSpec, *, template: Path = TEMPLATE) -> bytes:
    """The LaunchAgent plist for `spec`: the template's placeholders filled, written by plistlib."""
    values: dict[str, object] = {
        "label": LABEL,
        "program": list(spec.program),
        "restart_interval": spec.restart_interval,
        "exit_timeout": stop_timeout(spec.shutdown_grace),
        "stdout_path": str(spec.log_dir / STDOUT_LOG),
        "stderr_path": str(spec.log_dir / STDERR_LOG),
        "path": spec.path_env,
        "satchel_home": None if spec.satchel_home is None else str(spec.satchel_home),
    }
    try:
        tree = plistlib.loads(template.read_bytes(), fmt=plistlib.FMT_XML)
    except OSError as exc:
        raise ServiceError(f"LaunchAgent template {template}: cannot read it: {exc}") from exc
    except (ExpatError, ValueError) as exc:
        raise ServiceError(f"LaunchAgent template {template}: not a valid plist: {exc}") from exc
    used: set[str] = set()
    filled = _fill(tree, values, used, template)
    if not isinstance(filled, dict):
        raise ServiceError(f"LaunchAgent template {template}: expected a dictionary at the top")
    if unused := sorted(values.keys() - used):
        raise ServiceError(
            f"LaunchAgent template {template}: no place for {', '.join(unused)}; "
            f"expected a string '@name@' for each"
        )
    return plistlib.dumps(filled, fmt=plistlib.FMT_XML, sort_keys=False)


def _fill(node: object, values: dict[str, object], used: set[str], template: Path) -> object:
    """`node` with each "@name@" string replaced by values[name]."""
    if isinstance(node, str):
        match = _PLACEHOLDER.fullmatch(node)
        if match is None:
            if _PLACEHOLDER.search(node):
                raise ServiceError(
                    f"LaunchAgent template {template}: {node!r}: a placeholder must be "
                    f"the whole string"
                )
            return node
        name = match.group(1)
        if name not in values:
            raise ServiceError(
                f"LaunchAgent template {template}: unknown placeholder @{name}@; "
                f"expected one of {', '.join(sorted(values))}"
            )
        used.add(name)
        return values[name]
    if isinstance(node, list):
        items: list[object] = []
        for item in node:
            value = _fill(item, values, used, template)
            if isinstance(item, str) and isinstance(value, list):
                items.extend(value)  # an argv placeholder becomes the array's items
            else:
                items.append(value)
        return items
    if isinstance(node, dict):
        filled = {key: _fill(item, values, used, template) for key, item in node.items()}
        return {key: value for key, value in filled.items() if value is not None}
    return node


def render_systemd_unit(spec: ServiceSpec) -> str:
    """The systemd --user unit for `spec`."""
    executable = spec.program[0]
    # systemd refuses quotes and backslashes in the executable's path, and would expand `$`
    # in argv[0] while running the unexpanded path: no escaping makes these work.
    if bad := sorted(set(executable) & set("\"'\\$")):
        raise ValueError(
            f"program[0]: systemd cannot run an executable whose path contains "
            f"{' '.join(bad)}: {executable!r}; install Satchel under a plainer path"
        )
    exec_start = " ".join(
        _systemd_quote(arg, dollars=index > 0) for index, arg in enumerate(spec.program)
    )
    environment = {"PATH": spec.path_env, "PYTHONUNBUFFERED": "1"}
    if spec.satchel_home is not None:
        environment["SATCHEL_HOME"] = str(spec.satchel_home)
    lines = [
        "# Satchel's login service, written by `satchel service install` (daemon/service.py).",
        "# Reinstall rather than edit: the next install overwrites this file.",
        "[Unit]",
        "Description=Satchel local context daemon",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={exec_start}",
        *(
            f"Environment={_systemd_quote(f'{key}={value}', dollars=False)}"
            for key, value in environment.items()
        ),
        # Restart after a crash only: a clean exit (an orderly stop) stays stopped.
        "Restart=on-failure",
        f"RestartSec={spec.restart_interval}",
        f"TimeoutStopSec={stop_timeout(spec.shutdown_grace)}",
        # mixed: SIGTERM goes to the daemon alone, which owns the shutdown order and stops its
        # children (Ollama, the LanceDB sidecar) after draining through them; control-group
        # would signal them all at once. Whatever is left when the daemon exits, or when
        # TimeoutStopSec runs out, gets SIGKILL, so nothing outlives the service.
        "KillMode=mixed",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    return "\n".join(lines) + "\n"


def _systemd_quote(value: str, *, dollars: bool) -> str:
    """One double-quoted word for a unit file: C escapes, `%%` for specifiers, `$$` if asked."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if dollars:  # ExecStart= expands $VAR; Environment= does not
        escaped = escaped.replace("$", "$$")
    return f'"{escaped}"'


# --- the verbs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What the service manager says about Satchel's service."""

    manager: Manager
    name: str
    """The launchd label or the systemd unit."""
    file: Path
    """Where the plist or unit file lives (or would)."""
    installed: bool
    """The plist or unit file exists."""
    loaded: bool
    """launchd: bootstrapped in the gui domain. systemd: enabled, so it starts at login."""
    pid: int | None
    """The daemon's process id while it runs."""
    state: str
    """The manager's own words: launchd's `state`, systemd's `ActiveState (SubState)`."""
    detail: str
    """The raw output of `launchctl print` or `systemctl show`."""

    @property
    def running(self) -> bool:
        """The daemon has a process."""
        return self.pid is not None

    @property
    def summary(self) -> str:
        """One line for a person."""
        parts = [f"installed ({self.file})" if self.installed else "not installed"]
        if self.manager == "launchd":
            parts.append("loaded" if self.loaded else "not loaded")
        else:
            parts.append("enabled" if self.loaded else "not enabled")
        if self.pid is not None:
            parts.append(f"running (pid {self.pid})")
        else:
            parts.append(f"not running ({self.state})" if self.state else "not running")
        return f"{self.name}: {', '.join(parts)}"

    def as_dict(self) -> dict[str, object]:
        """The status as JSON-ready data."""
        return {
            "manager": self.manager,
            "name": self.name,
            "file": str(self.file),
            "installed": self.installed,
            "loaded": self.loaded,
            "running": self.running,
            "pid": self.pid,
            "state": self.state,
            "summary": self.summary,
        }


def install(
    spec: ServiceSpec,
    *,
    platform: str = sys.platform,
    home: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Write the service file and start the service; a reinstall replaces a running one."""
    return _backend(platform, home, timeout).install(spec)


def uninstall(
    *, platform: str = sys.platform, home: Path | None = None, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Stop the service and remove its file; doing it twice is harmless."""
    return _backend(platform, home, timeout).uninstall()


def status(
    *, platform: str = sys.platform, home: Path | None = None, timeout: float = DEFAULT_TIMEOUT
) -> ServiceStatus:
    """Whether the service is installed, loaded and running."""
    return _backend(platform, home, timeout).status()


def _backend(platform: str, home: Path | None, timeout: float) -> _Launchd | _Systemd:
    if platform == "darwin":
        return _Launchd(home, timeout)
    if platform.startswith("linux"):
        return _Systemd(home, timeout)
    raise ServiceError(
        f"satchel service: unsupported platform {platform!r}; "
        f"expected macOS (launchd) or Linux (systemd --user)"
    )


class _Launchd:
    """`launchctl` in the logged-in user's gui domain."""

    def __init__(self, home: Path | None, timeout: float) -> None:
        self.plist = (home or Path.home()) / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        self.domain = f"gui/{os.getuid()}"
        self.target = f"{self.domain}/{LABEL}"
        self.timeout = timeout

    def install(self, spec: ServiceSpec) -> str:
        data = render_plist(spec)
        launchctl = _tool("launchctl")
        replaced = self._loaded(launchctl) is not None
        if replaced:
            self._bootout(launchctl)
        _make_dir(spec.log_dir)
        _write(self.plist, data)
        command = ["launchctl", "bootstrap", self.domain, str(self.plist)]
        for attempt in range(1, _BOOTSTRAP_ATTEMPTS + 1):
            eio = (_LAUNCHCTL_EIO,) if attempt < _BOOTSTRAP_ATTEMPTS else ()
            result = _run(launchctl, command, "loading the LaunchAgent", self.timeout, (0, *eio))
            if result.returncode == 0:
                break
            # Input/output error: launchd has not finished forgetting the previous instance.
            time.sleep(0.5 * attempt)
        verb = "Reinstalled" if replaced else "Installed"
        return (
            f"{verb} {LABEL}: wrote {self.plist} and loaded it into {self.domain}; it starts "
            f"at every login. Logs: {spec.log_dir / STDERR_LOG} and {spec.log_dir / STDOUT_LOG}."
        )

    def uninstall(self) -> str:
        launchctl = _tool("launchctl")
        done = []
        if self._loaded(launchctl) is not None:
            self._bootout(launchctl)
            done.append(f"unloaded it from {self.domain}")
        if self.plist.exists():
            _remove(self.plist)
            done.append(f"removed {self.plist}")
        if not done:
            return f"{LABEL} is not installed ({self.plist} does not exist); nothing to do."
        return f"Uninstalled {LABEL}: {' and '.join(done)}."

    def status(self) -> ServiceStatus:
        output = self._loaded(_tool("launchctl"))
        fields = _launchctl_fields(output or "")
        pid = fields.get("pid", "")
        return ServiceStatus(
            manager="launchd",
            name=LABEL,
            file=self.plist,
            installed=self.plist.exists(),
            loaded=output is not None,
            pid=int(pid) if pid.isdigit() and int(pid) > 0 else None,
            state=fields.get("state", ""),
            detail=output or "",
        )

    def _loaded(self, launchctl: str) -> str | None:
        """`launchctl print`'s description of the service, or None if launchd does not know it."""
        command = ["launchctl", "print", self.target]
        result = _run(
            launchctl, command, "asking launchd about the service", self.timeout, allow=None
        )
        if result.returncode == 0:
            return result.stdout
        if result.returncode == _LAUNCHCTL_NOT_FOUND or "Could not find service" in (
            result.stderr + result.stdout
        ):
            return None
        raise _failed("asking launchd about the service", command, result)

    def _bootout(self, launchctl: str) -> None:
        command = ["launchctl", "bootout", self.target]
        _run(launchctl, command, "unloading the LaunchAgent", self.timeout)
        # bootout can return while launchd still holds the service; bootstrapping it again
        # then fails with an I/O error, so wait until launchd no longer lists it.
        deadline = time.monotonic() + self.timeout
        while self._loaded(launchctl) is not None:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"unloading the LaunchAgent: launchd still lists {self.target} "
                    f"{self.timeout:g} s after `{shlex.join(command)}`",
                    command=command,
                )
            time.sleep(_POLL_SECONDS)


def _launchctl_fields(output: str) -> dict[str, str]:
    """The `key = value` lines of the service's own block in `launchctl print` output."""
    fields: dict[str, str] = {}
    depth = 0
    for line in output.splitlines():
        text = line.strip()
        if text.endswith("{"):
            depth += 1
        elif text.startswith("}"):
            depth -= 1
        elif depth == 1 and " = " in text:
            key, _, value = text.partition(" = ")
            fields.setdefault(key, value)
    return fields


class _Systemd:
    """`systemctl --user`, the user's own service manager."""

    def __init__(self, home: Path | None, timeout: float) -> None:
        xdg = os.environ.get("XDG_CONFIG_HOME", "")
        # The XDG spec: a relative XDG_CONFIG_HOME is invalid and must be ignored.
        config = Path(xdg) if os.path.isabs(xdg) else (home or Path.home()) / ".config"
        self.unit = config / "systemd" / "user" / SYSTEMD_UNIT
        self.timeout = timeout

    def install(self, spec: ServiceSpec) -> str:
        text = render_systemd_unit(spec)
        systemctl = _tool("systemctl")
        replaced = self._show(systemctl).get("ActiveState", "") in _ACTIVE
        if replaced:  # so that the new unit, not the old process, is what runs
            self._systemctl(systemctl, "stopping the service", "stop", SYSTEMD_UNIT)
        _write(self.unit, text.encode())
        self._systemctl(systemctl, "reloading systemd's unit files", "daemon-reload")
        self._systemctl(systemctl, "enabling the service", "enable", "--now", SYSTEMD_UNIT)
        verb = "Reinstalled" if replaced else "Installed"
        return (
            f"{verb} {SYSTEMD_UNIT}: wrote {self.unit}, enabled and started it; it starts at "
            f"every login. Logs: journalctl --user -u {SYSTEMD_UNIT}."
        )

    def uninstall(self) -> str:
        systemctl = _tool("systemctl")
        if not self.unit.exists():
            return f"{SYSTEMD_UNIT} is not installed ({self.unit} does not exist); nothing to do."
        self._systemctl(systemctl, "disabling the service", "disable", "--now", SYSTEMD_UNIT)
        _remove(self.unit)
        self._systemctl(systemctl, "reloading systemd's unit files", "daemon-reload")
        return f"Uninstalled {SYSTEMD_UNIT}: stopped and disabled it, removed {self.unit}."

    def status(self) -> ServiceStatus:
        systemctl = _tool("systemctl")
        result = self._systemctl(
            systemctl,
            "asking systemd about the service",
            "show",
            SYSTEMD_UNIT,
            "--property=LoadState,UnitFileState,ActiveState,SubState,MainPID",
        )
        fields = _systemctl_fields(result.stdout)
        pid = fields.get("MainPID", "")
        active, sub = fields.get("ActiveState", ""), fields.get("SubState", "")
        return ServiceStatus(
            manager="systemd",
            name=SYSTEMD_UNIT,
            file=self.unit,
            installed=self.unit.exists(),
            loaded=fields.get("LoadState") == "loaded"
            and fields.get("UnitFileState", "").startswith("enabled"),
            pid=int(pid) if pid.isdigit() and int(pid) > 0 else None,
            state=f"{active} ({sub})" if sub else active,
            detail=result.stdout,
        )

    def _show(self, systemctl: str) -> dict[str, str]:
        result = self._systemctl(
            systemctl,
            "asking systemd about the service",
            "show",
            SYSTEMD_UNIT,
            "--property=ActiveState",
        )
        return _systemctl_fields(result.stdout)

    def _systemctl(self, systemctl: str, what: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(systemctl, ["systemctl", "--user", *args], what, self.timeout)


def _systemctl_fields(output: str) -> dict[str, str]:
    """`systemctl show`'s `Key=value` lines."""
    pairs = (line.partition("=") for line in output.splitlines())
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


# --- commands and files ---------------------------------------------------------------------

_HINTS = {
    "launchctl": "is this macOS? LaunchAgents are managed with launchd's launchctl",
    "systemctl": "is this a systemd system? On Linux Satchel runs as a systemd --user unit",
}


def _tool(name: str) -> str:
    """The absolute path of a service-manager command, or a ServiceError that says what's wrong."""
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"{name} not found on PATH: {_HINTS[name]}", command=[name])
    return found


def _run(
    executable: str,
    command: Sequence[str],
    what: str,
    timeout: float,
    allow: Collection[int] | None = (0,),
) -> subprocess.CompletedProcess[str]:
    """Run `command` (argv[0] as a person would type it) and check its exit code."""
    try:
        result = subprocess.run(
            list(command),
            executable=executable,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(
            f"{what}: `{shlex.join(command)}` timed out after {timeout:g} s", command=command
        ) from exc
    except OSError as exc:
        raise ServiceError(
            f"{what}: could not run `{shlex.join(command)}`: {exc}", command=command
        ) from exc
    if allow is not None and result.returncode not in allow:
        raise _failed(what, command, result)
    return result


def _failed(
    what: str, command: Sequence[str], result: subprocess.CompletedProcess[str]
) -> ServiceError:
    output = result.stderr.strip() or result.stdout.strip() or "(no output)"
    return ServiceError(
        f"{what}: `{shlex.join(command)}` exited with code {result.returncode}: {output}",
        command=command,
        returncode=result.returncode,
        stderr=result.stderr,
    )


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceError(f"cannot create {path}: {exc}") from exc


def _write(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, readable by all and writable by the user only."""
    _make_dir(path.parent)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(data)
        # launchd refuses a plist that group or others may write.
        partial.chmod(0o644)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ServiceError(f"cannot write {path}: {exc}") from exc


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise ServiceError(f"cannot remove {path}: {exc}") from exc
