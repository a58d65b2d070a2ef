"""The daemon's configuration: `config.toml`, read once into frozen dataclasses.

Each section of the file is one dataclass below, and its field names are the file's keys. What
a key accepts is declared once, beside the field (`_rule`): the TOML type comes from the
annotation, the choices, range or shape from the field's metadata. `load_config` checks every
key against that table, so a typo or a bad value stops the daemon at startup with a message
naming the file, the section, the key, the value and what was expected; a missing file means
all defaults. `Paths` says where config, data, logs and the socket live: platformdirs' places
for this platform, or all of them under ``SATCHEL_HOME`` when it is set (tests rely on that).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import sys
import tempfile
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import platformdirs

from ingest.pages import DEFAULT_DENY, is_deny_rule

__all__ = [
    "BrowserConfig",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "EmbedderConfig",
    "FeedsConfig",
    "IngestConfig",
    "Paths",
    "RetrievalConfig",
    "SupervisorConfig",
    "default_config",
    "load_config",
    "resolve_paths",
    "usable_socket_path",
]

APP: Final = "Satchel"
SOCKET_NAME: Final = "satchel.sock"
# sun_path is 104 bytes on macOS (108 on Linux), including the terminating NUL.
MAX_SOCKET_BYTES: Final = 103


class ConfigError(ValueError):
    """Root of every configuration error; the message says where, what, and what was expected."""


# -- what each key accepts ---------------------------------------------------------------------

_RULE: Final = "satchel.rule"


@dataclass(frozen=True, slots=True)
class _Rule:
    choices: tuple[str, ...] = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    # A test of a string (or of each string of a list; truthy passes) and what it accepts.
    shape: tuple[Callable[[str], object], str] | None = None
    at_least: str = ""  # another key of the section this one may not be below
    required_when: tuple[str, str] | None = None  # (key, value) that makes this one non-empty


def _rule(
    *,
    choices: tuple[str, ...] = (),
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    shape: tuple[Callable[[str], object], str] | None = None,
    at_least: str = "",
    required_when: tuple[str, str] | None = None,
) -> dict[str, _Rule]:
    return {_RULE: _Rule(choices, ge, gt, le, lt, shape, at_least, required_when)}


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


_HOSTNAME: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def _is_host_entry(value: str) -> bool:
    bracketed = re.fullmatch(r"\[([^\]]*)\](?::([0-9]+))?", value)  # [IPv6] or [IPv6]:port
    plain = re.fullmatch(r"([^:\[\]]*)(?::([0-9]+))?", value)  # host or host:port
    match = bracketed or plain
    host, port = (match[1], match[2]) if match else (value, None)  # else a bare IPv6, or junk
    if port is not None and not 1 <= int(port) <= 65535:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return plain is not None and len(host) <= 253 and _HOSTNAME.fullmatch(host) is not None
    return address.version == 6 or plain is not None


_POSITIVE: Final = _rule(gt=0)
_URL: Final = (_is_http_url, "an http(s) URL")
_URL_OR_EMPTY: Final = (lambda s: s == "" or _is_http_url(s), "'' or an http(s) URL")
_PATH_OR_EMPTY: Final = (lambda s: s == "" or os.path.isabs(s), "'' or an absolute path")


# -- the sections ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetrievalConfig:
    """[retrieval]: which vector store serves searches, and when `auto` migrates."""

    backend: str = field(default="auto", metadata=_rule(choices=("auto", "sqlite", "lancedb")))
    lancedb_url: str = field(default="", metadata=_rule(shape=_URL_OR_EMPTY))
    table: str = field(
        default="context_vectors",
        metadata=_rule(
            shape=(
                re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}").fullmatch,
                "an identifier of up to 64 letters, digits and '_', not starting with a digit",
            )
        ),
    )
    migrate_at_count: int = field(default=100_000, metadata=_rule(ge=1))
    migrate_at_p95_ms: float = field(default=200.0, metadata=_POSITIVE)
    latency_window: int = field(default=200, metadata=_rule(ge=1))
    migration_batch: int = field(default=1000, metadata=_rule(ge=1, le=100_000))
    ann_min_rows: int = field(default=10_000, metadata=_rule(ge=1_000))
    migration_recall: float = field(default=0.9, metadata=_rule(gt=0, le=1))
    rollback_days: float = field(default=7.0, metadata=_rule(ge=0))
    keep_sqlite: bool = False


@dataclass(frozen=True, slots=True)
class EmbedderConfig:
    """[embedder]: which embedding server (or the built-in hash embedder), and its timings."""

    provider: str = field(
        default="auto", metadata=_rule(choices=("auto", "ollama", "openai", "hash"))
    )
    model: str = field(default="nomic-embed-text", metadata=_rule(shape=(bool, "a model name")))
    ollama_url: str = field(default="http://127.0.0.1:11434", metadata=_rule(shape=_URL))
    manage_ollama: bool = True
    ollama_binary: str = ""  # "" looks for `ollama` on PATH
    openai_url: str = field(
        default="", metadata=_rule(shape=_URL_OR_EMPTY, required_when=("provider", "openai"))
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata=_rule(
            shape=(
                lambda s: s == "" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s),
                "'' or the name of an environment variable",
            )
        ),
    )
    document_prefix: str | None = None  # None: the known-model table decides
    query_prefix: str | None = None
    hash_dim: int = field(default=768, metadata=_rule(ge=8, le=4096))
    batch_size: int = field(default=32, metadata=_rule(ge=1, le=4096))
    request_timeout_seconds: float = field(default=120.0, metadata=_POSITIVE)
    startup_timeout_seconds: float = field(default=30.0, metadata=_POSITIVE)
    pull_timeout_seconds: float = field(default=3600.0, metadata=_POSITIVE)


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """[ingest]: chunking, the workers, and the queue's leases and backoff."""

    chunk_tokens: int = field(default=512, metadata=_rule(ge=32, le=8192))
    chunk_overlap: float = field(default=0.15, metadata=_rule(ge=0, lt=0.5))
    workers: int = field(default=2, metadata=_rule(ge=1, le=64))
    jobs_per_batch: int = field(default=32, metadata=_rule(ge=1, le=1000))
    embed_batch: int = field(default=256, metadata=_rule(ge=1, le=4096))
    lease_seconds: float = field(default=120.0, metadata=_POSITIVE)
    backoff_initial_seconds: float = field(default=1.0, metadata=_POSITIVE)
    backoff_max_seconds: float = field(
        default=300.0, metadata=_rule(gt=0, at_least="backoff_initial_seconds")
    )
    permanent_attempts: int = field(default=3, metadata=_rule(ge=1, le=100))
    idle_poll_seconds: float = field(default=5.0, metadata=_POSITIVE)
    max_document_bytes: int = field(default=32 * 1024 * 1024, metadata=_rule(ge=1))


@dataclass(frozen=True, slots=True)
class FeedsConfig:
    """[feeds]: polling RSS/Atom feeds."""

    interval_minutes: int = field(default=60, metadata=_rule(ge=1))
    max_interval_minutes: int = field(
        default=1440, metadata=_rule(ge=1, at_least="interval_minutes")
    )
    per_host: int = field(default=2, metadata=_rule(ge=1, le=16))
    timeout_seconds: float = field(default=20.0, metadata=_POSITIVE)
    max_bytes: int = field(default=15 * 1024 * 1024, metadata=_rule(ge=1))
    full_text: bool = False
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata=_rule(shape=(_is_host_entry, "'host' or 'host:port' (port 1 to 65535)")),
    )


@dataclass(frozen=True, slots=True)
class BrowserConfig:
    """[browser]: the extension's endpoint on 127.0.0.1."""

    port: int = field(default=4017, metadata=_rule(ge=0, le=65535))
    max_body_bytes: int = field(default=5 * 1024 * 1024, metadata=_rule(ge=1024))
    deny: tuple[str, ...] = field(
        default=DEFAULT_DENY,
        metadata=_rule(shape=(is_deny_rule, "a domain or 'name.*', optionally with a path")),
    )


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """[daemon]: the process itself: startup, shutdown, the socket, the log."""

    shutdown_grace_seconds: float = field(default=10.0, metadata=_POSITIVE)
    startup_timeout_seconds: float = field(default=30.0, metadata=_POSITIVE)
    socket_path: str = field(default="", metadata=_rule(shape=_PATH_OR_EMPTY))
    log_level: str = field(
        default="info", metadata=_rule(choices=("debug", "info", "warning", "error"))
    )
    log_max_bytes: int = field(default=10 * 1024 * 1024, metadata=_rule(ge=4096))
    log_backups: int = field(default=5, metadata=_rule(ge=0, le=100))


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """[supervisor]: starting, watching and restarting child processes."""

    ready_timeout_seconds: float = field(default=30.0, metadata=_POSITIVE)
    restart_initial_seconds: float = field(default=1.0, metadata=_POSITIVE)
    restart_max_seconds: float = field(
        default=60.0, metadata=_rule(gt=0, at_least="restart_initial_seconds")
    )
    degraded_after_crashes: int = field(default=5, metadata=_rule(ge=1))
    degraded_window_seconds: float = field(default=300.0, metadata=_POSITIVE)
    stop_grace_seconds: float = field(default=5.0, metadata=_POSITIVE)
    health_interval_seconds: float = field(default=10.0, metadata=_POSITIVE)


# -- where things live -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paths:
    """Where the config file, data, logs, pidfiles and the socket live."""

    home: Path | None  # SATCHEL_HOME, when set
    config_file: Path
    data_dir: Path
    log_dir: Path
    run_dir: Path  # the socket's and the pidfiles' directory
    socket: Path


def resolve_paths(env: Mapping[str, str] = os.environ, *, socket_path: str = "") -> Paths:
    """The paths for `env`: all under ``SATCHEL_HOME`` if set, else platformdirs' places."""
    home = Path(h).expanduser().absolute() if (h := env.get("SATCHEL_HOME")) else None
    if home is not None:
        config_file, data_dir = home / "config.toml", home / "data"
        log_dir, run_dir = home / "logs", home / "run"
    else:
        config_file = Path(platformdirs.user_config_dir(APP, appauthor=False)) / "config.toml"
        data_dir = Path(platformdirs.user_data_dir(APP, appauthor=False))
        log_dir = Path(platformdirs.user_log_dir(APP, appauthor=False))
        # platformdirs' user_runtime_dir is $XDG_RUNTIME_DIR/Satchel on Linux, but it reads
        # os.environ, not `env`, and warns (an error under our tests) when it is unset.
        xdg_runtime = env.get("XDG_RUNTIME_DIR", "")
        if sys.platform.startswith("linux") and os.path.isabs(xdg_runtime):
            run_dir = Path(xdg_runtime) / APP
        else:
            run_dir = data_dir / "run"
    socket = Path(socket_path) if socket_path else run_dir / SOCKET_NAME
    return Paths(home, config_file, data_dir, log_dir, run_dir, socket)


def usable_socket_path(paths: Paths) -> Path:
    """`paths.socket`, or a short per-user fallback when it is too long to bind."""
    if len(bytes(paths.socket)) <= MAX_SOCKET_BYTES:
        return paths.socket
    fallback = Path(tempfile.gettempdir()) / f"satchel-{os.getuid()}" / SOCKET_NAME
    if len(bytes(fallback)) <= MAX_SOCKET_BYTES:
        return fallback
    raise ConfigError(
        f"socket path {str(paths.socket)!r} is {len(bytes(paths.socket))} bytes and the fallback "
        f"{str(fallback)!r} is {len(bytes(fallback))}; a Unix socket path may have at most "
        f"{MAX_SOCKET_BYTES}: set [daemon] socket_path to a shorter absolute path"
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration: one field per section, and the resolved paths."""

    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    feeds: FeedsConfig = field(default_factory=FeedsConfig)
    browser: BrowserConfig = field(default_factory=BrowserConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    paths: Paths = field(default_factory=resolve_paths)


def default_config(env: Mapping[str, str] = os.environ) -> Config:
    """The configuration with every default, its paths resolved from `env`."""
    return Config(paths=resolve_paths(env))


# -- loading -----------------------------------------------------------------------------------

_SECTIONS: Final[dict[str, type[Any]]] = {
    name: hint for name, hint in typing.get_type_hints(Config).items() if name != "paths"
}


def load_config(path: Path | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Read `path` (default: the config file under `env`'s paths); a missing file is defaults."""
    file = path if path is not None else resolve_paths(env).config_file
    try:
        with file.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        data = {}
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{file}: [{name}]: unknown section{_suggest(name, _SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: {name}: expected a [{name}] table, got {_show(table)}")
        sections[name] = _load_section(file, name, _SECTIONS[name], table)
    daemon = sections.get("daemon", DaemonConfig())
    return Config(**sections, paths=resolve_paths(env, socket_path=daemon.socket_path))


def _load_section(file: Path, section: str, cls: type[Any], table: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    rules = {name: f.metadata.get(_RULE, _Rule()) for name, f in known.items()}

    def fail(key: str, expected: str, value: object) -> ConfigError:
        return ConfigError(f"{file}: [{section}] {key}: expected {expected}, got {_show(value)}")

    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{file}: [{section}] {key}: unknown key{_suggest(key, known)}")
        hint, rule = hints[key], rules[key]
        if hint == tuple[str, ...]:
            if not isinstance(value, list):
                raise fail(key, f"a list of {_expected(str, rule)} entries", value)
            for i, item in enumerate(value):  # name the bad entry, not the whole list
                if not _string_ok(item, rule):
                    raise fail(f"{key}[{i}]", _expected(str, rule), item)
            values[key] = tuple(value)
        elif (converted := _convert(hint, rule, value)) is not None:
            values[key] = converted
        else:
            raise fail(key, _expected(hint, rule), value)
    loaded = cls(**values)
    # Rules that relate two keys run once the section is whole, so defaults count too.
    for key, rule in rules.items():
        value = getattr(loaded, key)
        if rule.at_least and value < (floor := getattr(loaded, rule.at_least)):
            raise fail(key, f"at least {rule.at_least} ({floor:g})", value)
        if rule.required_when and not value:
            other, wanted = rule.required_when
            if getattr(loaded, other) == wanted:
                raise fail(key, f"a non-empty value because {other} = {wanted!r}", value)
    return loaded


def _convert(hint: Any, rule: _Rule, value: object) -> object | None:
    """The value as the field stores it, or None when the rule rejects it."""
    if hint is bool:
        return value if isinstance(value, bool) else None
    if hint is int or hint is float:
        # bool is an int to Python, never to a config file; a float never passes as an int.
        if isinstance(value, bool) or not isinstance(value, int if hint is int else int | float):
            return None
        if not math.isfinite(value) or not _in_range(value, rule):
            return None
        return value if hint is int else float(value)
    return value if _string_ok(value, rule) else None  # str, and str | None when present


def _string_ok(value: object, rule: _Rule) -> bool:
    if not isinstance(value, str):
        return False
    if rule.choices and value not in rule.choices:
        return False
    return rule.shape is None or bool(rule.shape[0](value))


def _in_range(value: float, rule: _Rule) -> bool:
    return not (
        (rule.ge is not None and value < rule.ge)
        or (rule.gt is not None and value <= rule.gt)
        or (rule.le is not None and value > rule.le)
        or (rule.lt is not None and value >= rule.lt)
    )


def _expected(hint: Any, rule: _Rule) -> str:
    """What a key accepts, in words, for error messages."""
    if rule.choices:
        quoted = [repr(c) for c in rule.choices]
        return f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    if rule.shape:
        return rule.shape[1]
    if hint is bool:
        return "true or false"
    noun = "an integer" if hint is int else "a number"
    if rule.ge is not None and rule.le is not None:
        return f"{noun} from {rule.ge:g} to {rule.le:g}"
    bounds = [
        f"{op} {bound:g}"
        for op, bound in ((">=", rule.ge), (">", rule.gt), ("<=", rule.le), ("<", rule.lt))
        if bound is not None
    ]
    return " and ".join([f"{noun} {bounds[0]}", *bounds[1:]]) if bounds else noun


def _show(value: object) -> str:
    """A value as the file spells it, with its TOML type when that is the problem."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    return f"{value!s} (a {type(value).__name__})"


def _suggest(name: str, valid: Mapping[str, object]) -> str:
    if close := difflib.get_close_matches(name, list(valid), n=1):
        return f"; did you mean {close[0]!r}?"
    return f"; expected one of {', '.join(sorted(valid))}"
