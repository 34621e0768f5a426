"""Shared helpers for the benchmarks: timing subprocesses with peak RSS, medians, machine info, BENCHMARKS.md.

Every benchmark runs its reference (real Nix, raw disk, raw hashing, a bare
grpcio echo) in the same run as tvixd and reports the ratio, so machine noise
affects both sides alike.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"


def tvixd_cmd() -> list[str]:
    """How to run this checkout's tvixd (the same code the benchmark measures)."""
    return [sys.executable, "-m", "tvixd"]


def tvixd_env(**extra: str) -> dict[str, str]:
    """Environment for tvixd subprocesses: this checkout first on the path, no inherited store addresses."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_SERVICE_ADDR")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Cached bytecode, as an installed tvixd has: with PYTHONDONTWRITEBYTECODE (set on this machine)
    # every run compiled all ~40 tvixd modules from source, about 0.1 s per command (measured).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "tvixd-bench-pycache"))
    env.update(extra)
    return env


@dataclass
class Sample:
    """Wall time, CPU time (user + system) and peak resident set size of one subprocess run."""

    seconds: float
    peak_rss_mib: float
    cpu_seconds: float = 0.0


@dataclass
class Measurement:
    """Several runs of one command: the median is what gets reported."""

    samples: list[Sample] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def median_cpu(self) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples)

    @property
    def peak_rss_mib(self) -> float:
        return max(s.peak_rss_mib for s in self.samples)


GNU_TIME = "/usr/bin/time"
"""Reports the peak RSS of the command it forks (apt package ``time``).

Not ``wait4``'s ``ru_maxrss`` of our own child: Linux carries the memory high-water mark of the process
that forked over ``exec``, so a child of this (possibly 150 MiB) benchmark process reports at least our
size. ``time`` is a small process, and its child starts from that."""


def run_once(
    cmd: Sequence[str], env: dict[str, str] | None = None, stdout: int | None = subprocess.DEVNULL
) -> Sample:
    """Run ``cmd`` to completion; fail loudly on a non-zero exit (a broken run is not a measurement)."""
    wrap = os.access(GNU_TIME, os.X_OK)
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss_file:
        argv = [GNU_TIME, "-q", "-f", "%M", "-o", rss_file.name, *cmd] if wrap else list(cmd)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)  # CPU times include `time`'s reaped child
        elapsed = time.perf_counter() - start
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {stderr[-2000:]}")
        peak_kib = int(rss_file.read().split()[-1]) if wrap else usage.ru_maxrss
    return Sample(seconds=elapsed, peak_rss_mib=peak_kib / 1024, cpu_seconds=usage.ru_utime + usage.ru_stime)


def measure(
    cmd_factory: Callable[[int], Sequence[str]],
    runs: int,
    env: dict[str, str] | None = None,
) -> Measurement:
    """Run ``cmd_factory(i)`` ``runs`` times and collect the samples."""
    m = Measurement()
    for i in range(runs):
        m.samples.append(run_once(cmd_factory(i), env=env))
    return m


RECENTLY_DELETED_SECONDS = 60
"""How long an ext4 without a journal treats a freed inode as recently deleted (``RECENTCY_MIN``, fs/ext4/ialloc.c).

Why it matters: on such a filesystem (this VM's) the inode allocator skips every free inode
deleted less than this long ago (300 s more while its inode table block is still dirty), looking
each one up as it goes. A run that creates thousands of files right after thousands were deleted
spends most of its time there (perf: 60% of an import in ``recently_deleted``), and nix and tvixd
pay it unevenly. So a benchmark gives every run a fresh directory, deletes nothing between timed
runs, and after deleting waits (:func:`remove_and_settle`) before the next runs that create files.
"""


def remove_tree(path: Path) -> None:
    """Remove a tree, including nix's read-only store paths."""
    if not path.exists():
        return
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
    shutil.rmtree(path)


def remove_and_settle(*paths: Path) -> None:
    """Remove trees, write the inode tables out, and wait until their inodes no longer count as recently deleted."""
    for path in paths:
        remove_tree(path)
    os.sync()  # a clean inode table block: the shorter window
    time.sleep(RECENTLY_DELETED_SECONDS + 5)


def time_call(fn: Callable[[], object], runs: int) -> list[float]:
    """Wall times of ``runs`` calls of ``fn`` (in-process micro benchmarks)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return "not installed"
    return out.splitlines()[0] if out else "unknown"


def machine_info() -> dict[str, str]:
    """What the numbers were measured on, printed with every run."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        m = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem_kib = int(m.group(1)) if m else 0
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        # A venv, as users run tvixd (README): a system interpreter's site-packages .pth files (this VM's
        # imports certifi at every start: +60 ms per command) would be measured as tvixd start-up.
        "python": f"{platform.python_version()} ({'venv' if sys.prefix != sys.base_prefix else 'not a venv'})",
        "nix": _first_line(["nix-store", "--version"]) if shutil.which("nix-store") else "not installed",
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section between ``<!-- bench:NAME -->`` markers in BENCHMARKS.md.

    Each benchmark owns one section, so running one benchmark never clobbers
    another's recorded results.
    """
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def fmt_ratio(ours: float, reference: float) -> str:
    """``ours / reference`` as ``1.23x``."""
    return f"{ours / reference:.2f}x" if reference else "n/a"
