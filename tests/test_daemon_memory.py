"""tvixd.cli.daemon_cmd.keep_freed_memory: glibc's malloc told to keep freed memory (fewer page faults per Put)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.conftest import tvixd_env


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_is_accepted_by_glibc():
    """Both mallopt settings are accepted (mallopt returns 1), in a fresh interpreter like a serving process."""
    out = subprocess.run(
        [sys.executable, "-c", "from tvixd.cli.daemon_cmd import keep_freed_memory; print(keep_freed_memory())"],
        capture_output=True, text=True, env=tvixd_env(), check=True)
    assert out.stdout.strip() == "True"
