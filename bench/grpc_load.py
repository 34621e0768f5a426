"""16 concurrent gRPC clients doing mixed puts and reads against `tvixd daemon` for a minute.

    python bench/grpc_load.py [--clients 16] [--seconds 60] [--record]

Each client is a thread with its own connection (grpcio releases the GIL while
waiting, so 16 threads keep the daemon busy). Reported: calls per second by
kind, errors (must be 0), and the daemon's threads and resident memory after a
warm-up and after the load (from /proc/PID/status), which must not grow. The
short version of this runs in the test suite (tests/test_grpc_daemon.py).
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, markdown_table, update_section
from bench.grpc_bench import Daemon


def proc_status(pid: int) -> tuple[int, int]:
    """(threads, VmRSS KiB) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0])


def load(target: str, clients: int, seconds: float) -> tuple[collections.Counter, list[BaseException]]:
    import grpc

    from tvixd.castore.digest import B3Digest
    from tvixd.castore.directory import directory_digest
    from tvixd.proto import rpc_blobstore_pb2_grpc, rpc_directory_pb2_grpc, rpc_pathinfo_pb2_grpc
    from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode
    from tvixd.proto.pathinfo_pb2 import Node, PathInfo
    from tvixd.proto.rpc_blobstore_pb2 import BlobChunk, ReadBlobRequest, StatBlobRequest
    from tvixd.proto.rpc_directory_pb2 import GetDirectoryRequest
    from tvixd.proto.rpc_pathinfo_pb2 import GetPathInfoRequest

    rng = random.Random(42)
    blobs = [rng.randbytes(rng.choice([10, 1000, 70_000, 300_000, 2_000_000])) for _ in range(64)]
    digests = [B3Digest.of(b) for b in blobs]
    leaves = [Directory(files=[FileNode(name=b"f", digest=d, size=len(b))])
              for d, b in zip(digests, blobs, strict=True)]
    counts: collections.Counter = collections.Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        r = random.Random(i)
        local: collections.Counter = collections.Counter()
        try:
            with grpc.insecure_channel(target) as ch:
                bs = rpc_blobstore_pb2_grpc.BlobServiceStub(ch)
                ds = rpc_directory_pb2_grpc.DirectoryServiceStub(ch)
                ps = rpc_pathinfo_pb2_grpc.PathInfoServiceStub(ch)
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    k = r.randrange(len(blobs))
                    op = r.choice(["put", "read", "stat", "dirput", "dirget", "pathinfo"])
                    if op == "put":
                        data = blobs[k]
                        assert bs.Put(BlobChunk(data=data[j : j + 1 << 20])
                                      for j in range(0, len(data), 1 << 20)).digest == digests[k]
                    elif op == "read":
                        try:
                            assert b"".join(c.data for c in bs.Read(ReadBlobRequest(digest=digests[k]))) == blobs[k]
                        except grpc.RpcError as e:
                            assert e.code() == grpc.StatusCode.NOT_FOUND
                    elif op == "stat":
                        try:
                            bs.Stat(StatBlobRequest(digest=digests[k]))
                        except grpc.RpcError as e:
                            assert e.code() == grpc.StatusCode.NOT_FOUND
                    elif op == "dirput":
                        parent = Directory(directories=[DirectoryNode(name=b"d", digest=directory_digest(leaves[k]),
                                                                      size=1)])
                        assert ds.Put(iter([leaves[k], parent])).root_digest == directory_digest(parent)
                    elif op == "dirget":
                        try:
                            assert list(ds.Get(GetDirectoryRequest(digest=directory_digest(leaves[k])))) == [leaves[k]]
                        except grpc.RpcError as e:
                            assert e.code() == grpc.StatusCode.NOT_FOUND
                    else:
                        name = f"{k:032d}-load".replace("0", "1").encode()
                        pi = PathInfo(node=Node(symlink=SymlinkNode(name=name, target=b"t")))
                        assert ps.Put(pi) == pi
                        from tvixd.castore.nixbase32 import decode

                        assert ps.Get(GetPathInfoRequest(by_output_hash=decode(name[:32]))) == pi
                    local[op] += 1
        except BaseException as e:
            with lock:
                errors.append(e)
        with lock:
            counts.update(local)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--record", action="store_true", help="write the grpc-load section of BENCHMARKS.md")
    args = ap.parse_args()
    info = machine_info()
    with Daemon() as d:
        load(d.target, args.clients, 5)  # warm-up: worker pool and allocator reach their steady size
        threads0, rss0 = proc_status(d.proc.pid)
        start = time.monotonic()
        counts, errors = load(d.target, args.clients, args.seconds)
        elapsed = time.monotonic() - start
        time.sleep(2)
        threads1, rss1 = proc_status(d.proc.pid)
    total = sum(counts.values())
    rows = [[op, n, f"{n / elapsed:.0f}"] for op, n in sorted(counts.items())]
    rows.append(["all", total, f"{total / elapsed:.0f}"])
    body = "\n".join([
        "## gRPC daemon under load (bench/grpc_load.py)",
        "",
        f"`python bench/grpc_load.py --clients {args.clients} --seconds {args.seconds:g}`, {info['date']}, "
        f"{info['cpu']}: {args.clients} clients (own connections) mixing blob Put/Read/Stat, Directory Put/Get, "
        "PathInfo Put+Get against `tvixd daemon` with its embedded store.",
        f"Errors: {len(errors)}. Daemon threads {threads0} → {threads1}, VmRSS {rss0 / 1024:.0f} → "
        f"{rss1 / 1024:.0f} MiB (after a 5 s warm-up → after the load).",
        "",
        markdown_table(["call", "count", "per second"], rows),
    ])
    print(body)
    for e in errors[:3]:
        print(repr(e), file=sys.stderr)
    if args.record:
        update_section("grpc-load", body)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
