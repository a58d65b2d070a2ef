"""The extension's own checks, run from the test suite: its unit tests, the build, web-ext lint."""

from __future__ import annotations

import json
import re
import zipfile

from tests.extension.conftest import EXTENSION, npm


def test_the_extensions_unit_tests_pass() -> None:
    done = npm("test")
    summary = re.search(r"# pass (\d+)\s+# fail (\d+)", done.stdout)
    assert summary, done.stdout[-2000:]
    assert int(summary[1]) > 0
    assert int(summary[2]) == 0


def test_the_build_makes_a_folder_and_a_zip_per_browser() -> None:
    npm("run", "build")
    for browser in ("chrome", "firefox"):
        manifest = json.loads((EXTENSION / "dist" / browser / "manifest.json").read_text())
        assert manifest["manifest_version"] == 3
        # The daemon's loopback origin is the only host the extension may call.
        assert manifest["host_permissions"] == ["http://127.0.0.1/*"]
        with zipfile.ZipFile(EXTENSION / "dist" / f"satchel-{browser}.zip") as packed:
            assert "manifest.json" in packed.namelist()
    chrome = json.loads((EXTENSION / "dist" / "chrome" / "manifest.json").read_text())
    firefox = json.loads((EXTENSION / "dist" / "firefox" / "manifest.json").read_text())
    assert "service_worker" in chrome["background"]
    assert "scripts" in firefox["background"]  # Firefox runs an event page, not a worker


def test_web_ext_lint_passes_for_firefox() -> None:
    npm("run", "build")
    done = npm("run", "lint")
    assert re.search(r"errors\s+0", done.stdout), done.stdout[-2000:]
