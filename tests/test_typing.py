"""mypy over the packages that pyproject.toml's [tool.mypy] names, with that configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_passes() -> None:
    # From the repo root, so mypy reads pyproject.toml and caches in the git-ignored .mypy_cache; a
    # cold cache (a fresh clone) takes about half a minute, a warm one a second or two.
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mypy exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
