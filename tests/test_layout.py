"""The import direction is store <- ingest <- daemon: a lower layer never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"store": {"ingest", "daemon"}, "ingest": {"daemon"}, "daemon": set()}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file, including those inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in sorted(imported_packages(path) & FORBIDDEN[package]):
            found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_downwards_only(package: str) -> None:
    assert violations(package) == []


def test_the_check_notices_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from daemon.cli import main\n    import ingest.x\n")
    assert imported_packages(bad) == {"os", "daemon", "ingest"}


def test_the_daemon_side_of_store_never_imports_lancedb() -> None:
    # lancedb costs ~3.6 s and ~200 MB to import: only the sidecar may load it.
    for path in sorted((ROOT / "store").rglob("*.py")):
        if path.name not in {"lance.py", "__main__.py"}:
            assert not imported_packages(path) & {"lancedb", "pyarrow"}, path
