"""The benchmark runner end to end on its cheapest area (no timing asserted: speed lives in BENCHMARKS.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT, tvixd_env


def test_runner_records_startup_area(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "startup", "--runs", "1", "--out", str(out),
         "--work-dir", str(tmp_path)],
        cwd=REPO_ROOT, env=tvixd_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"python":' in proc.stdout  # machine info printed
    text = out.read_text()
    # The other section survives; the summary goes on top, the area's section below.
    assert "<!-- bench:other -->\nkept\n<!-- /bench:other -->" in text
    assert (
        text.index("<!-- bench:summary -->")
        < text.index("<!-- bench:other -->")
        < text.index("<!-- bench:run-startup -->")
    )
    section = text.split("<!-- bench:run-startup -->", 1)[1].split("<!-- /bench:run-startup -->", 1)[0]
    assert "Command: `python -m bench --only startup --runs 1 --work-dir" in section
    assert str(tmp_path / "BENCHMARKS.md") not in section  # the temp output path is not part of the command
    rows = json.loads(re.search(r"<!-- rows: (.*) -->", section).group(1))
    help_row = next(r for r in rows if r["what"] == "`tvixd --help`")
    assert help_row["ratio"] > 0 and "python -c pass" in help_row["reference"]
    assert re.search(r"\| `tvixd --help` \| [\d.]+ s \| `python -c pass` [\d.]+ s \| [\d.]+x \|", section)
    lazy = next(r for r in rows if r["what"] == "heavy modules imported by `tvixd --help`")
    assert lazy["met"] is True, lazy  # a heavy module imported at start-up is a regression
    summary = text.split("<!-- bench:summary -->", 1)[1].split("<!-- /bench:summary -->", 1)[0]
    assert "| startup | heavy modules imported by `tvixd --help` |" in summary


def test_runner_rejects_unknown_area(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope", "--out", str(tmp_path / "B.md")],
        cwd=REPO_ROOT, env=tvixd_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown area(s) nope" in proc.stderr
    assert not (tmp_path / "B.md").exists()
