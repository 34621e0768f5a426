"""Blob writes per second into an fs:// blob directory, from thread pools of several sizes.

Usage: python bench/blob_fs_write.py [--count N] [--size BYTES] [--dir DIR] [--threads 1,4,8,16]
                                     [--rounds R] [--write]

Every blob is distinct, so each costs what durability costs: its bytes and its
name made durable (an fsync of the file and of its fan-out directory, as a daemon
Put does). The reference, run interleaved with tvixd in the
same rounds (so machine noise hits both alike), is the bare minimum a durable
file store does: create, write, fsync the file, fsync its directory. Medians
over ``--rounds``; ``--write`` records the table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, markdown_table, update_section
from tvixd.blobservice.fs import FsBlobService


def _rate(write: Callable[[int], None], count: int, threads: int) -> float:
    """Writes per second of ``write(0..count-1)`` from a pool of ``threads``."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(count)))
    return count / (time.perf_counter() - start)


def tvixd_rate(parent: str | None, count: int, size: int, threads: int, salt: int) -> float:
    root = tempfile.mkdtemp(dir=parent, prefix="bench-blobs-")
    try:
        service = FsBlobService(root)
        base = os.urandom(size)

        def write(i: int) -> None:
            w = service.open_write()
            w.write((salt + i).to_bytes(8, "little") + base[8:])
            w.close()

        return _rate(write, count, threads)
    finally:
        shutil.rmtree(root)


def raw_rate(parent: str | None, count: int, size: int, threads: int) -> float:
    root = tempfile.mkdtemp(dir=parent, prefix="bench-raw-")
    try:
        data = os.urandom(size)

        def write(i: int) -> None:
            fd = os.open(os.path.join(root, str(i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

        return _rate(write, count, threads)
    finally:
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--dir", default=None, help="parent directory of the test stores (default: $TMPDIR)")
    parser.add_argument("--threads", default="1,4,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = parser.parse_args()
    info = machine_info()
    print(info, flush=True)
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        ours, raw = [], []
        for r in range(args.rounds):
            raw.append(raw_rate(args.dir, args.count, args.size, threads))
            ours.append(tvixd_rate(args.dir, args.count, args.size, threads, salt=r * 10**9 + threads * 10**6))
        o, b = statistics.median(ours), statistics.median(raw)
        print(f"threads={threads:3d}: tvixd fs {o:7.0f} blobs/s, raw fsync+dirsync {b:7.0f} files/s", flush=True)
        rows.append((threads, f"{o:.0f}", f"{b:.0f}", f"{o / b:.2f}"))
    if args.write:
        body = (
            "## fs:// blob writes (bench/blob_fs_write.py)\n\n"
            f"`python bench/blob_fs_write.py --count {args.count} --size {args.size} --rounds {args.rounds} "
            f"--write`; {info['date']}, {info['cpu']}, {info['kernel']}. Distinct {args.size}-byte blobs, "
            "medians; the reference creates, writes and fsyncs a file and fsyncs its directory. "
            f"Load average {os.getloadavg()[0]:.1f} at the end (other jobs slow every fsync).\n\n"
            + markdown_table(("threads", "tvixd blobs/s", "raw files/s", "tvixd/raw"), rows)
        )
        update_section("blob-fs-write", body)


if __name__ == "__main__":
    main()
