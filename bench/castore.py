"""In-process micro benchmarks of the pure castore code on the import / dump-path hot path.

Usage: python -m bench.castore [--runs N] [--write]   (--write records the table in BENCHMARKS.md)

- NAR writer over one large file vs sha256 alone over the same bytes (the floor);
- NAR writer over many small files: per-entry overhead, buffered (default) and unbuffered;
- nixbase32 encode/decode and store path parsing, per call.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics

from bench.common import machine_info, markdown_table, time_call, update_section
from tvixd.castore import nixbase32
from tvixd.castore.nar import NarHashSink, NarWriter
from tvixd.castore.storepath import StorePath

MIB = 1 << 20


def large_file(total_mib: int, chunk: bytes) -> None:
    w = NarWriter(NarHashSink())
    w.file(total_mib * MIB, False, (chunk for _ in range(total_mib * MIB // len(chunk))))


def sha256_only(total_mib: int, chunk: bytes) -> None:
    h = hashlib.sha256()
    for _ in range(total_mib * MIB // len(chunk)):
        h.update(chunk)


def small_files(names: list[bytes], data: bytes, buffer_size: int) -> None:
    w = NarWriter(NarHashSink(), buffer_size=buffer_size)
    w.directory_start()
    for name in names:
        w.entry_start(name)
        w.file(len(data), False, (data,))
        w.entry_end()
    w.directory_end()


def per_call_us(fn, n: int, runs: int) -> float:
    def loop() -> None:
        for _ in range(n):
            fn()

    return statistics.median(time_call(loop, runs)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = parser.parse_args()

    chunk = bytes(range(256)) * 4096  # 1 MiB reads, as the importer and renderer do
    nar_s = statistics.median(time_call(lambda: large_file(256, chunk), args.runs))
    sha_s = statistics.median(time_call(lambda: sha256_only(256, chunk), args.runs))
    names = [b"f%06d" % i for i in range(50_000)]
    data = b"x" * 100
    buffered = statistics.median(time_call(lambda: small_files(names, data, 64 * 1024), args.runs))
    unbuffered = statistics.median(time_call(lambda: small_files(names, data, 0), args.runs))
    digest = hashlib.sha256(b"x").digest()[:20]
    enc = nixbase32.encode(digest)
    basename = enc + "-hello-2.12.1"

    rows = [
        ("NAR writer, one 256 MiB file, 1 MiB chunks", f"{256 / nar_s:.0f} MiB/s"),
        ("sha256 alone over the same bytes (floor)", f"{256 / sha_s:.0f} MiB/s"),
        ("NAR writer, 50k files of 100 B, buffered (default)", f"{buffered / len(names) * 1e6:.2f} µs/file"),
        ("NAR writer, 50k files of 100 B, unbuffered", f"{unbuffered / len(names) * 1e6:.2f} µs/file"),
        ("nixbase32.encode, 20 bytes", f"{per_call_us(lambda: nixbase32.encode(digest), 20000, args.runs):.2f} µs"),
        ("nixbase32.decode, 32 chars", f"{per_call_us(lambda: nixbase32.decode(enc), 20000, args.runs):.2f} µs"),
        (
            "StorePath.from_basename",
            f"{per_call_us(lambda: StorePath.from_basename(basename), 20000, args.runs):.2f} µs",
        ),
    ]
    info = machine_info()
    table = markdown_table(["what", "median"], rows)
    print(table)
    if args.write:
        body = (
            "## castore micro benchmarks (`python -m bench.castore --write`)\n\n"
            f"{info['date']}, {info['cpu']}, Python {info['python']}, median of {args.runs} runs.\n\n{table}\n"
        )
        update_section("castore", body)


if __name__ == "__main__":
    main()
