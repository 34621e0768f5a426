"""Shared pytest fixtures: how tests run tvixd and find the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def tvixd_env(**extra: str) -> dict[str, str]:
    """Environment for a tvixd subprocess: this checkout's code, no inherited store addresses."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_SERVICE_ADDR")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_tvixd(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m tvixd ARGS`` from this checkout and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "tvixd", *args],
        input=input,
        capture_output=True,
        env=env or tvixd_env(),
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def tvixd():
    """The :func:`run_tvixd` helper as a fixture."""
    return run_tvixd
