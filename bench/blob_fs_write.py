"""Blob writes per second into an fs:// blob directory, from a thread pool of each size.

Usage: python bench/blob_fs_write.py [--count N] [--size BYTES] [--dir DIR] [--threads 1,2,4,8,16]
Every blob is distinct, so each costs one file fsync + rename + directory fsync.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from tvixd.blobservice.fs import FsBlobService


def run(root: str, count: int, size: int, threads: int) -> float:
    service = FsBlobService(root)
    base = os.urandom(size)

    def write(i: int) -> None:
        w = service.open_write()
        w.write(i.to_bytes(8, "little") + base[8:])
        w.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(count)))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--dir", default=None, help="parent directory (default: $TMPDIR)")
    parser.add_argument("--threads", default="1,2,4,8,16")
    args = parser.parse_args()
    for threads in (int(t) for t in args.threads.split(",")):
        root = tempfile.mkdtemp(dir=args.dir, prefix="bench-blobs-")
        try:
            rate = run(root, args.count, args.size, threads)
        finally:
            shutil.rmtree(root)
        print(f"threads={threads:3d} blobs={args.count} size={args.size}: {rate:8.0f} blobs/s", flush=True)


if __name__ == "__main__":
    main()
