"""daemon.config: defaults, SATCHEL_HOME, every kind of error, and the shipped config.toml."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from daemon.config import (
    Config,
    ConfigError,
    EmbedderConfig,
    IngestConfig,
    Paths,
    RetrievalConfig,
    default_config,
    load_config,
    resolve_paths,
    usable_socket_path,
)

SHIPPED = Path(__file__).resolve().parents[2] / "config.toml"
SECTIONS = [f for f in dataclasses.fields(Config) if f.name != "paths"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"SATCHEL_HOME": str(tmp_path / "home")}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, env: dict[str, str], text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# -- defaults and paths ------------------------------------------------------------------------


def test_missing_file_means_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_config(tmp_path / "absent.toml", env)
    assert config == default_config(env)
    assert config.retrieval.backend == "auto"
    assert config.embedder.document_prefix is None
    assert config.feeds.allowed_hosts == ()
    assert config.ingest.max_document_bytes == 32 * 1024 * 1024


def test_default_path_is_under_satchel_home(tmp_path: Path, env: dict[str, str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[browser]\nport = 5000\n", encoding="utf-8")
    assert load_config(env=env).browser.port == 5000


def test_satchel_home_relocates_everything(tmp_path: Path) -> None:
    home = tmp_path / "h"
    paths = resolve_paths({"SATCHEL_HOME": str(home)})
    assert paths == Paths(
        home=home,
        config_file=home / "config.toml",
        data_dir=home / "data",
        log_dir=home / "logs",
        run_dir=home / "run",
        socket=home / "run" / "satchel.sock",
    )


def test_without_satchel_home_paths_are_platform_dirs(tmp_path: Path) -> None:
    paths = resolve_paths({"XDG_RUNTIME_DIR": str(tmp_path)})
    assert paths.home is None
    assert paths.config_file.name == "config.toml"
    assert paths.config_file.parent.name == "Satchel"
    assert paths.data_dir.name == "Satchel"
    assert paths.socket == paths.run_dir / "satchel.sock"
    if sys.platform.startswith("linux"):
        assert paths.run_dir == tmp_path / "Satchel"
    assert resolve_paths({}).run_dir == resolve_paths({}).data_dir / "run"


def test_socket_path_overrides_the_socket_only(tmp_path: Path, env: dict[str, str]) -> None:
    sock = tmp_path / "s.sock"
    config = load_config(write(tmp_path, f'[daemon]\nsocket_path = "{sock}"\n'), env)
    assert config.paths.socket == sock
    assert config.paths.run_dir == tmp_path / "home" / "run"


def test_values_are_typed_and_frozen(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_config(
        write(
            tmp_path,
            "[retrieval]\nmigrate_at_p95_ms = 150\n"
            '[feeds]\nallowed_hosts = ["nas.local", "192.168.1.10:8080", "[::1]:9000"]\n'
            '[embedder]\ndocument_prefix = ""\nrequest_timeout_seconds = 5\n',
        ),
        env,
    )
    assert config.retrieval == RetrievalConfig(migrate_at_p95_ms=150.0)
    assert isinstance(config.retrieval.migrate_at_p95_ms, float)
    assert config.feeds.allowed_hosts == ("nas.local", "192.168.1.10:8080", "[::1]:9000")
    assert config.embedder.document_prefix == ""  # set, unlike absent (None)
    assert config.embedder.query_prefix is None
    assert config.embedder.request_timeout_seconds == 5.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.browser.port = 1  # type: ignore[misc]


def test_openai_with_url_loads(tmp_path: Path, env: dict[str, str]) -> None:
    text = '[embedder]\nprovider = "openai"\nopenai_url = "http://127.0.0.1:8080"\n'
    embedder = load_config(write(tmp_path, text), env).embedder
    assert embedder == EmbedderConfig(provider="openai", openai_url="http://127.0.0.1:8080")


# -- errors ------------------------------------------------------------------------------------


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_unknown_section_suggests(tmp_path: Path, env: dict[str, str]) -> None:
    message = load_error(tmp_path, env, '[embeder]\nmodel = "x"\n')
    assert message.endswith("[embeder]: unknown section; did you mean 'embedder'?")


def test_unknown_key_suggests(tmp_path: Path, env: dict[str, str]) -> None:
    message = load_error(tmp_path, env, '[embedder]\nmodle = "x"\n')
    assert message.endswith("[embedder] modle: unknown key; did you mean 'model'?")


def test_unknown_key_without_a_near_one_lists_the_keys(tmp_path: Path, env: dict[str, str]) -> None:
    message = load_error(tmp_path, env, "[browser]\nzzz = 1\n")
    assert message.endswith(
        "[browser] zzz: unknown key; expected one of deny, max_body_bytes, port"
    )


def test_bad_choice(tmp_path: Path, env: dict[str, str]) -> None:
    message = load_error(tmp_path, env, '[retrieval]\nbackend = "lancdb"\n')
    assert message.endswith(
        "[retrieval] backend: expected 'auto', 'sqlite' or 'lancedb', got 'lancdb'"
    )


@pytest.mark.parametrize(
    ("text", "tail"),
    [
        (
            "[browser]\nport = 70000",
            "port: expected an integer from 0 to 65535, got 70000",
        ),
        (
            '[browser]\ndeny = ["https://bank.example"]',
            "[browser] deny[0]: expected a domain or 'name.*', optionally with a path, got "
            "'https://bank.example'",
        ),
        (
            "[ingest]\nchunk_overlap = 0.5",
            "chunk_overlap: expected a number >= 0 and < 0.5, got 0.5",
        ),
        ("[daemon]\nlog_max_bytes = 10", "[daemon] log_max_bytes: expected an integer >= 4096"),
        ("[feeds]\ntimeout_seconds = 0", "[feeds] timeout_seconds: expected a number > 0, got 0"),
        ("[supervisor]\nstop_grace_seconds = nan", "stop_grace_seconds: expected a number > 0"),
        ('[retrieval]\ntable = "1bad"', "[retrieval] table: expected an identifier"),
        ('[retrieval]\nlancedb_url = "ftp://x"', "lancedb_url: expected '' or an http(s) URL"),
        ('[embedder]\nollama_url = ""', "[embedder] ollama_url: expected an http(s) URL, got ''"),
        ('[embedder]\nmodel = ""', "[embedder] model: expected a model name, got ''"),
        ('[daemon]\nsocket_path = "rel.sock"', "socket_path: expected '' or an absolute path"),
        ('[daemon]\nlog_level = "INFO"', "[daemon] log_level: expected 'debug', 'info',"),
    ],
)
def test_out_of_range_or_shape(tmp_path: Path, env: dict[str, str], text: str, tail: str) -> None:
    assert tail in load_error(tmp_path, env, text + "\n")


@pytest.mark.parametrize(
    ("text", "tail"),
    [
        ('[ingest]\nworkers = "2"', "workers: expected an integer from 1 to 64, got '2'"),
        (
            "[ingest]\nworkers = true",
            "workers: expected an integer from 1 to 64, got true",
        ),
        ("[ingest]\nworkers = 2.0", "workers: expected an integer from 1 to 64, got 2.0"),
        ('[feeds]\nfull_text = "yes"', "[feeds] full_text: expected true or false, got 'yes'"),
        ("[daemon]\nshutdown_grace_seconds = false", "shutdown_grace_seconds: expected a number"),
        ("[embedder]\nmodel = 3", "[embedder] model: expected a model name, got 3"),
        ('[feeds]\nallowed_hosts = "nas"', "[feeds] allowed_hosts: expected a list of"),
        ("browser = 1", "browser: expected a [browser] table, got 1"),
    ],
)
def test_wrong_type(tmp_path: Path, env: dict[str, str], text: str, tail: str) -> None:
    assert tail in load_error(tmp_path, env, text + "\n")


def test_toml_syntax_error_names_line_and_column(tmp_path: Path, env: dict[str, str]) -> None:
    message = load_error(tmp_path, env, '[retrieval]\nbackend = "auto"\ntable = \n')
    assert "invalid TOML" in message
    assert re.search(r"line 3, column \d+", message), message


def test_openai_needs_a_url(tmp_path: Path, env: dict[str, str]) -> None:
    message = load_error(tmp_path, env, '[embedder]\nprovider = "openai"\n')
    assert message.endswith(
        "[embedder] openai_url: expected a non-empty value because provider = 'openai', got ''"
    )


@pytest.mark.parametrize("entry", ["nas:99999", "nas:", "-nas", "a b", "host:1:2x", "[::1]x", ""])
def test_bad_allowed_host_entry(tmp_path: Path, env: dict[str, str], entry: str) -> None:
    message = load_error(tmp_path, env, f'[feeds]\nallowed_hosts = ["ok.example", "{entry}"]\n')
    assert message.endswith(
        f"[feeds] allowed_hosts[1]: expected 'host' or 'host:port' (port 1 to 65535), got {entry!r}"
    )


def test_backoff_max_below_initial(tmp_path: Path, env: dict[str, str]) -> None:
    message = load_error(tmp_path, env, "[ingest]\nbackoff_max_seconds = 0.5\n")
    assert message.endswith(
        "[ingest] backoff_max_seconds: expected at least backoff_initial_seconds (1), got 0.5"
    )
    text = "[ingest]\nbackoff_initial_seconds = 2\nbackoff_max_seconds = 2\n"
    assert load_config(write(tmp_path, text), env).ingest == IngestConfig(
        backoff_initial_seconds=2.0, backoff_max_seconds=2.0
    )


def test_unreadable_utf8_is_a_config_error(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[daemon]\nlog_level = "\xff"\n')
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path, env)


# -- the shipped config.toml -------------------------------------------------------------------


def test_shipped_config_is_the_defaults(env: dict[str, str]) -> None:
    assert load_config(SHIPPED, env) == default_config(env)
    assert load_config(SHIPPED, env) == Config(paths=resolve_paths(env))


def test_shipped_config_documents_every_field() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert list(data) == [f.name for f in SECTIONS]
    for section in SECTIONS:
        cls = getattr(Config(), section.name).__class__
        for f in dataclasses.fields(cls):
            if f.default is None:  # optional: shown commented out, since TOML has no null
                assert re.search(rf"^# {f.name} = ", text, re.MULTILINE), f.name
            else:
                assert f.name in data[section.name], f"[{section.name}] {f.name} undocumented"


def test_readme_reference_names_every_key() -> None:
    readme = (SHIPPED.parent / "README.md").read_text(encoding="utf-8")
    reference = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for section in SECTIONS:
        row = next(line for line in reference.splitlines() if f"`[{section.name}]`" in line)
        cls = getattr(Config(), section.name).__class__
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in row, f"README lacks [{section.name}] {f.name}"


def test_shipped_config_comments_each_key() -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[a-z_]+ = ", line):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


# -- the socket path ---------------------------------------------------------------------------


def test_short_socket_path_is_kept() -> None:
    # Not tmp_path: on macOS that alone can pass the limit. Nothing is created here.
    paths = resolve_paths({"SATCHEL_HOME": "/home/someone/satchel"})
    assert usable_socket_path(paths) == Path("/home/someone/satchel/run/satchel.sock")


def test_long_socket_path_falls_back(tmp_path: Path) -> None:
    paths = resolve_paths({"SATCHEL_HOME": str(tmp_path / ("x" * 120))})
    assert len(bytes(paths.socket)) > 103
    fallback = usable_socket_path(paths)
    assert fallback == Path(tempfile.gettempdir()) / f"satchel-{os.getuid()}" / "satchel.sock"
    assert len(bytes(fallback)) <= 103


def test_socket_path_error_when_fallback_is_too_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_tmp = tmp_path / ("t" * 100)
    # tempfile.tempdir is the documented override of gettempdir().
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    paths = resolve_paths({"SATCHEL_HOME": str(tmp_path / ("x" * 120))})
    with pytest.raises(ConfigError) as info:
        usable_socket_path(paths)
    message = str(info.value)
    assert str(paths.socket) in message
    assert f"is {len(bytes(paths.socket))} bytes" in message
    assert "at most 103" in message
    assert "[daemon] socket_path" in message
