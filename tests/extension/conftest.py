"""The extension's build, shared by its tests: `npm run build` once per session.

`npm ci` is .ci/run's job (it needs the npm registry); the tests build from the installed
node_modules. Chromium is Debian's (`/usr/bin/chromium`), or the one SATCHEL_CHROMIUM names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "extension"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("SATCHEL_CHROMIUM", "/usr/bin/chromium")


def npm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run npm in extension/; fail the test with npm's output if it fails."""
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed: install Node.js 20+ (.ci/run does)")
    if not (EXTENSION / "node_modules").is_dir():
        pytest.fail("extension/node_modules is missing: run `npm ci` in extension/ (.ci/run does)")
    done = subprocess.run(
        ["npm", *args], cwd=EXTENSION, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"npm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def extension_build() -> Path:
    """The unpacked Chrome build, freshly built."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM}: no Chromium; install Debian's chromium (.ci/run does)")
    npm("run", "build")
    return EXTENSION / "dist" / "chrome"
