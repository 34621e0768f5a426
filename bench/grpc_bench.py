"""gRPC benchmarks: Blob Put/Read vs a bare grpcio stream of the same bytes, Stat latency and rate, import.

    python bench/grpc_bench.py                      # everything, writes the "grpc" section of BENCHMARKS.md
    python bench/grpc_bench.py --size-mib 256 --no-write
    python bench/grpc_bench.py --read-chunk-sizes   # the Read chunk size table (tvixd.server.servicers)

The daemon side runs in its own process (``--serve``), started by this script,
so client and server each have their own interpreter as in production. The
reference for Put/Read is a bare grpcio server in the same kind of process
that only counts (upload) or repeats one preallocated buffer (download), with
the same chunk sizes: the cost of gRPC itself in Python, without storage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fmt_ratio, machine_info, markdown_table, percentile, tvixd_env, update_section

MIB = 1024 * 1024
UPLOAD_CHUNK = 1 * MIB  # what tvixd's gRPC blob writer sends per BlobChunk (WRITE_CHUNK_SIZE)


# --- server processes ------------------------------------------------------------------------------


def serve(kind: str, blob_addr: str, state: str, read_chunk: int | None) -> None:
    """Run a server in this process and print its port; runs until stdin closes."""
    import grpc

    if kind == "tvixd":
        from tvixd import log
        from tvixd.server import servicers
        from tvixd.server.server import build_server
        from tvixd.store import Store, StoreAddrs

        log.configure(level="warning", fmt="json")
        if read_chunk:
            servicers.READ_CHUNK_SIZE = read_chunk
        db = f"sqlite://{state}/store.sqlite"
        try:
            store = Store.open(StoreAddrs(blob=blob_addr, directory=db, path_info=db))
        except Exception:
            store = Store.open(StoreAddrs(blob=blob_addr, directory="memory://", path_info="memory://"))
        built = build_server(store, ["127.0.0.1:0"], workers=32)
        built.start()
        port = int(built.addresses[0].rsplit(":", 1)[1])
    else:
        chunk = read_chunk or 256 * 1024
        payload = os.urandom(chunk)

        def sink(requests, context):
            n = 0
            for r in requests:
                n += len(r)
            return n.to_bytes(8, "little")

        def source(request, context):
            remaining = int.from_bytes(request, "little")
            while remaining > 0:
                yield payload[: min(chunk, remaining)]
                remaining -= chunk

        def echo(requests, context):
            yield from requests

        handler = grpc.method_handlers_generic_handler("bench.Bare", {
            "Sink": grpc.stream_unary_rpc_method_handler(sink),
            "Source": grpc.unary_stream_rpc_method_handler(source),
            "Echo": grpc.stream_stream_rpc_method_handler(echo),
        })
        server = grpc.server(futures.ThreadPoolExecutor(32), options=[("grpc.max_receive_message_length", -1)])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
    print(port, flush=True)
    sys.stdin.read()


class Server:
    """A ``--serve`` subprocess."""

    def __init__(self, kind: str, blob_addr: str = "memory://", read_chunk: int | None = None) -> None:
        self.state = tempfile.mkdtemp(prefix="tvixd-bench-")
        if blob_addr == "fs":
            blob_addr = f"fs://{self.state}/blobs"
        cmd = [sys.executable, __file__, "--serve", kind, "--blob-addr", blob_addr, "--state", self.state]
        if read_chunk:
            cmd += ["--read-chunk", str(read_chunk)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=tvixd_env())
        self.port = int(self.proc.stdout.readline())
        self.target = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- measurements ----------------------------------------------------------------------------------


def _blocks(size: int, chunk: int) -> list[bytes]:
    block = os.urandom(chunk)
    # Distinct leading bytes per run so repeated runs upload a new blob (no "already present" shortcut).
    block = os.urandom(16) + block[16:]
    return [block] * (size // chunk) + ([block[: size % chunk]] if size % chunk else [])


def bare_upload(target: str, size: int) -> float:
    import grpc

    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as ch:
        sink = ch.stream_unary("/bench.Bare/Sink")
        blocks = _blocks(size, UPLOAD_CHUNK)
        start = time.perf_counter()
        n = int.from_bytes(sink(iter(blocks)), "little")
        elapsed = time.perf_counter() - start
    assert n == size, (n, size)
    return size / elapsed / MIB


def bare_download(target: str, size: int) -> float:
    import grpc

    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as ch:
        source = ch.unary_stream("/bench.Bare/Source")
        start = time.perf_counter()
        n = sum(len(b) for b in source(size.to_bytes(8, "little")))
        elapsed = time.perf_counter() - start
    assert n == size
    return size / elapsed / MIB


def bare_echo(target: str, size: int) -> float:
    import grpc

    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as ch:
        echo = ch.stream_stream("/bench.Bare/Echo")
        start = time.perf_counter()
        n = sum(len(b) for b in echo(iter(_blocks(size, UPLOAD_CHUNK))))
        elapsed = time.perf_counter() - start
    assert n == size
    return size / elapsed / MIB


def tvixd_put(target: str, size: int) -> tuple[float, bytes]:
    from tvixd.blobservice.grpc import from_url

    service = from_url(f"grpc+http://{target}")
    try:
        blocks = _blocks(size, UPLOAD_CHUNK)
        start = time.perf_counter()
        writer = service.open_write()
        for b in blocks:
            writer.write(b)
        digest = writer.close()
        elapsed = time.perf_counter() - start
    finally:
        service.close()
    return size / elapsed / MIB, digest


def tvixd_read(target: str, digest: bytes, size: int) -> float:
    from tvixd.blobservice.grpc import from_url

    service = from_url(f"grpc+http://{target}")
    try:
        start = time.perf_counter()
        reader = service.open_read(digest)
        n = 0
        while chunk := reader.read(4 * MIB):
            n += len(chunk)
        elapsed = time.perf_counter() - start
    finally:
        service.close()
    assert n == size, (n, size)
    return size / elapsed / MIB


def stat_worker(target: str, digest_hex: str, seconds: float) -> None:
    """(subprocess) Stat as fast as possible for ``seconds``; print latencies (µs) as JSON."""
    from tvixd.blobservice.grpc import from_url

    service = from_url(f"grpc+http://{target}")
    digest = bytes.fromhex(digest_hex)
    for _ in range(50):  # warm-up: connection, code paths
        service.has(digest)
    lat = []
    end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end:
        assert service.has(digest)
        lat.append((time.perf_counter() - t0) * 1e6)
    service.close()
    json.dump(lat, sys.stdout)


def stat_bench(target: str, digest: bytes, clients: int, seconds: float) -> dict[str, float]:
    procs = [
        subprocess.Popen([sys.executable, __file__, "--stat-worker", target, digest.hex(), str(seconds)],
                         stdout=subprocess.PIPE, env=tvixd_env())
        for _ in range(clients)
    ]
    lat: list[float] = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 120)
        lat += json.loads(out)
    return {"p50_ms": percentile(lat, 50) / 1000, "p99_ms": percentile(lat, 99) / 1000,
            "calls_per_s": len(lat) / seconds}


def read_chunk_table(size: int, blob_addr: str) -> list[list[object]]:
    rows = []
    for chunk in (4 * 1024, 64 * 1024, 128 * 1024, 256 * 1024, 512 * 1024, 1024 * 1024):
        with Server("tvixd", blob_addr, read_chunk=chunk) as srv:
            _, digest = tvixd_put(srv.target, size)
            speeds = [tvixd_read(srv.target, digest, size) for _ in range(3)]
        rows.append([f"{chunk // 1024} KiB", f"{sorted(speeds)[1]:.0f}"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="blob size for Put/Read (default 1024)")
    ap.add_argument("--blob-addr", default="fs", help="daemon blob backend: fs (default) or memory://")
    ap.add_argument("--stat-seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    ap.add_argument("--read-chunk-sizes", action="store_true", help="measure Read throughput per chunk size")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    ap.add_argument("--read-chunk", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--stat-worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.blob_addr, args.state, args.read_chunk)
        return
    if args.stat_worker:
        stat_worker(args.stat_worker[0], args.stat_worker[1], float(args.stat_worker[2]))
        return

    size = args.size_mib * MIB
    info = machine_info()
    print(json.dumps(info), flush=True)
    if args.read_chunk_sizes:
        rows = read_chunk_table(size, args.blob_addr)
        print(markdown_table(["Read chunk size", "MiB/s"], rows))
        return

    from tvixd.server.servicers import READ_CHUNK_SIZE

    with Server("bare", read_chunk=READ_CHUNK_SIZE) as bare:
        up = sorted(bare_upload(bare.target, size) for _ in range(args.runs))[args.runs // 2]
        down = sorted(bare_download(bare.target, size) for _ in range(args.runs))[args.runs // 2]
        echo = sorted(bare_echo(bare.target, size) for _ in range(args.runs))[args.runs // 2]
    print(f"bare: upload {up:.0f} MiB/s, download {down:.0f} MiB/s, echo {echo:.0f} MiB/s", flush=True)
    with Server("tvixd", args.blob_addr) as srv:
        puts, reads = [], []
        for _ in range(args.runs):
            speed, digest = tvixd_put(srv.target, size)
            puts.append(speed)
            reads.append(tvixd_read(srv.target, digest, size))
        put, read = sorted(puts)[args.runs // 2], sorted(reads)[args.runs // 2]
        print(f"tvixd: put {put:.0f} MiB/s, read {read:.0f} MiB/s", flush=True)
        _, small = tvixd_put(srv.target, 1000)
        stat1 = stat_bench(srv.target, small, 1, args.stat_seconds)
        stat8 = stat_bench(srv.target, small, 8, args.stat_seconds)
        print(f"stat: 1 client {stat1}, 8 clients {stat8}", flush=True)
    rows = [
        ["Blob Put (tvixd client → daemon, blake3 + fs)", f"{put:.0f} MiB/s", f"bare upload {up:.0f} MiB/s",
         fmt_ratio(put, up), "≥ 0.5x"],
        ["Blob Put vs bare bidi echo", f"{put:.0f} MiB/s", f"echo {echo:.0f} MiB/s", fmt_ratio(put, echo), ""],
        ["Blob Read (daemon → tvixd client, blake3 verified)", f"{read:.0f} MiB/s",
         f"bare download {down:.0f} MiB/s", fmt_ratio(read, down), "≥ 0.5x"],
        ["Blob Read vs bare bidi echo", f"{read:.0f} MiB/s", f"echo {echo:.0f} MiB/s", fmt_ratio(read, echo), ""],
        ["Stat, 1 client", f"p50 {stat1['p50_ms']:.3f} ms, p99 {stat1['p99_ms']:.3f} ms",
         f"{stat1['calls_per_s']:.0f} calls/s", "", "p50 < 1 ms"],
        ["Stat, 8 clients (processes)", f"p50 {stat8['p50_ms']:.3f} ms, p99 {stat8['p99_ms']:.3f} ms",
         f"{stat8['calls_per_s']:.0f} calls/s", "", "≥ 3000 calls/s"],
    ]
    body = "\n".join([
        "## gRPC daemon (bench/grpc_bench.py)",
        "",
        f"Measured {info['date']} on {info['cpu']}, {info['memory']}, Python {info['python']}; "
        f"blob {args.size_mib} MiB, median of {args.runs}; daemon blob backend `{args.blob_addr}`; "
        f"Read chunk {READ_CHUNK_SIZE // 1024} KiB, Put chunk {UPLOAD_CHUNK // MIB} MiB. "
        "Client and daemon are separate processes on loopback TCP.",
        "",
        markdown_table(["what", "tvixd", "reference (same run)", "ratio", "goal"], rows),
    ])
    print(body)
    if not args.no_write:
        update_section("grpc", body)


if __name__ == "__main__":
    main()
