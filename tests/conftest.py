"""Shared pytest fixtures: how tests run tvixd and find the repository."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack
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


def stop_gracefully(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a tvixd subprocess that is still running and wait; kill it if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def tvixd():
    """The :func:`run_tvixd` helper as a fixture."""
    return run_tvixd


@pytest.fixture
def small_disk(tmp_path: Path):
    """An empty directory on its own 1 MiB tmpfs, to fill up (mounting needs root: skipped otherwise)."""
    root = tmp_path / "small-disk"
    root.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mount.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


# The conformance suites' fixtures: one parametrised fixture per service, over every
# backend registered in tests/backends.py (the grpc helper adds gRPC clients there).
from tests.backends import BLOB_BACKENDS, DIRECTORY_BACKENDS, PATH_INFO_BACKENDS  # noqa: E402


def _service_fixture(registry):
    @pytest.fixture(params=sorted(registry))
    def fixture(request, tmp_path):
        with ExitStack() as stack:
            service = registry[request.param](tmp_path, stack)
            stack.callback(service.close)
            yield service

    return fixture


blob_service = _service_fixture(BLOB_BACKENDS)
directory_service = _service_fixture(DIRECTORY_BACKENDS)
path_info_service = _service_fixture(PATH_INFO_BACKENDS)
