"""``tvixd daemon`` as a process: listeners, health, TLS, errors, signals, disconnects, proxy mode, load.

Every test runs a real daemon subprocess (tests/daemon.py) on an ephemeral port.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import REPO_ROOT, run_tvixd, tvixd_env
from tests.daemon import make_tls_cert, short_socket_dir, start_daemon
from tvixd.castore.digest import B3Digest
from tvixd.proto import rpc_blobstore_pb2_grpc, rpc_directory_pb2_grpc, rpc_pathinfo_pb2_grpc
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import Node, PathInfo
from tvixd.proto.rpc_blobstore_pb2 import BlobChunk, ReadBlobRequest, StatBlobRequest
from tvixd.proto.rpc_directory_pb2 import GetDirectoryRequest
from tvixd.proto.rpc_pathinfo_pb2 import GetPathInfoRequest, ListPathInfoRequest
from tvixd.server.servicers import QUICK_THREADS

MEMORY = ("--blob-service-addr", "memory://", "--directory-service-addr", "memory://",
          "--path-info-service-addr", "memory://")


def fs_store(tmp_path: Path) -> tuple[str, ...]:
    """fs:// blobs (on disk, so they can be inspected) with memory directories and path infos."""
    return ("--blob-service-addr", f"fs://{tmp_path / 'blobs'}", "--directory-service-addr", "memory://",
            "--path-info-service-addr", "memory://")


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service)).status


def wait_for_log(daemon, event: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in daemon.events():
            if e.get("event") == event:
                return e
        time.sleep(0.05)
    raise AssertionError(f"daemon never logged {event!r}:\n" + "\n".join(daemon.stderr_lines()))


# --- start-up, listeners, health ---------------------------------------------------------------------


def test_listens_on_tcp_and_unix_and_reports_serving(tmp_path):
    sock = short_socket_dir_path(tmp_path)
    with start_daemon(tmp_path, "-l", "127.0.0.1:0", "-l", f"unix:{sock}", *MEMORY) as d:
        assert d.addresses == [f"127.0.0.1:{d.port}", f"unix:{sock}"]
        SERVING = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "tvix.store.v1.BlobService", "tvix.store.v1.DirectoryService",
                        "tvix.store.v1.PathInfoService"):
            assert health_status(d.target, service) == SERVING
        assert health_status(f"unix:{sock}") == SERVING
        from tvixd.blobservice.grpc import from_url

        unix_client, tcp_client = from_url(f"grpc+unix://{sock}"), from_url(d.addr)
        try:
            w = unix_client.open_write()
            w.write(b"via unix")
            digest = w.close()
            assert tcp_client.has(digest)
        finally:
            unix_client.close()
            tcp_client.close()


def short_socket_dir_path(tmp_path: Path) -> Path:
    """A socket path short enough for AF_UNIX, removed with tmp_path's test."""
    from contextlib import ExitStack

    stack = ExitStack()
    path = short_socket_dir(stack) / "d.sock"
    _stacks.append(stack)
    return path


_stacks: list = []


@pytest.fixture(autouse=True)
def _cleanup_stacks():
    yield
    while _stacks:
        _stacks.pop().close()


def test_localhost_means_both_loopbacks(tmp_path):
    with start_daemon(tmp_path, "-l", "localhost:0", *MEMORY) as d:
        assert d.addresses[0].startswith("127.0.0.1:")
        assert d.addresses[1:] in ([], [f"[::1]:{d.port}"])  # [::1] unless IPv6 is off on this host
        if len(d.addresses) == 2:
            assert health_status(f"[::1]:{d.port}") == health_pb2.HealthCheckResponse.SERVING


def test_all_interfaces_without_tls_warns(tmp_path):
    with start_daemon(tmp_path, "-l", "0.0.0.0:0", *MEMORY) as d:
        warnings = [e for e in d.events() if e.get("level") == "warning"]
        assert any("all interfaces without TLS" in e["event"] for e in warnings), d.stderr_lines()
    with start_daemon(tmp_path / "2", "-l", "127.0.0.1:0", *MEMORY) as d:
        assert not [e for e in d.events() if e.get("level") == "warning"]


@pytest.mark.parametrize("addr", ["foo", "127.0.0.1:99999", "127.0.0.1:http", "::1:8000", "unix:", "[::1]"])
def test_bad_listen_address_is_one_line_error(tmp_path, addr):
    r = run_tvixd("daemon", "-l", addr, *MEMORY, env=tvixd_env(STATE_DIRECTORY=str(tmp_path)))
    assert r.returncode != 0
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and repr(addr) in err and "listen" in err, err


def test_port_in_use_is_one_line_error(tmp_path):
    with start_daemon(tmp_path, *MEMORY) as d:
        r = run_tvixd("daemon", "-l", d.target, *MEMORY, env=tvixd_env(STATE_DIRECTORY=str(tmp_path)))
        assert r.returncode == 1
        err = r.stderr.decode().strip().splitlines()
        assert f"cannot listen on {d.target}" in err[-1] and "Traceback" not in r.stderr.decode()
        assert health_status(d.target) == health_pb2.HealthCheckResponse.SERVING  # the first one is unharmed


def test_tls(tmp_path):
    cert, key = make_tls_cert(tmp_path)
    with start_daemon(tmp_path, "-l", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key), *MEMORY) as d:
        assert wait_for_log(d, "listening")["tls"] is True
        # A grpc+https client trusting our CA (grpcio reads the roots from this variable at start-up).
        code = (
            "from tvixd.blobservice.grpc import from_url\n"
            f"s = from_url('grpc+https://localhost:{d.port}')\n"
            "w = s.open_write(); w.write(b'over tls'); d = w.close()\n"
            "print(s.has(d), s.has(bytes(32)))\n"
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, cwd=REPO_ROOT,
                           env=tvixd_env(GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(cert)))
        assert r.stdout.decode().split() == ["True", "False"], r.stderr.decode()
        # Plaintext against the TLS port does not work.
        from tvixd.blobservice.grpc import from_url
        from tvixd.errors import TvixError

        plain = from_url(d.addr)
        try:
            with pytest.raises(TvixError):
                plain.has(bytes(32))
        finally:
            plain.close()


# --- lifecycle -----------------------------------------------------------------------------------------


def test_sigterm_lets_in_flight_calls_finish_and_exits_0(tmp_path):
    with start_daemon(tmp_path, *MEMORY, "--shutdown-grace", "60") as d:
        data = os.urandom(8 * 1024 * 1024)
        with grpc.insecure_channel(d.target) as ch:
            blobs = rpc_blobstore_pb2_grpc.BlobServiceStub(ch)
            digest = blobs.Put(BlobChunk(data=data[i : i + 65536]) for i in range(0, len(data), 65536)).digest
            stream = blobs.Read(ReadBlobRequest(digest=digest))
            received = [next(stream).data]  # the call is in flight
            d.proc.send_signal(signal.SIGTERM)
            wait_for_log(d, "signal received, draining")
            received += [c.data for c in stream]
            assert b"".join(received) == data
        # New calls are refused once draining started.
        with grpc.insecure_channel(d.target) as ch, pytest.raises(grpc.RpcError) as e:
            rpc_blobstore_pb2_grpc.BlobServiceStub(ch).Stat(StatBlobRequest(digest=digest), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert d.proc.wait(timeout=60) == 0
        d.stop()
        assert d.events()[-1]["event"] == "stopped"


def test_sigint_with_grace_exceeded_still_exits_0(tmp_path):
    with start_daemon(tmp_path, *MEMORY, "--shutdown-grace", "0.5") as d:
        data = os.urandom(32 * 1024 * 1024)
        with grpc.insecure_channel(d.target) as ch:
            blobs = rpc_blobstore_pb2_grpc.BlobServiceStub(ch)
            digest = blobs.Put(BlobChunk(data=data[i : i + 1 << 20]) for i in range(0, len(data), 1 << 20)).digest
            stream = blobs.Read(ReadBlobRequest(digest=digest))
            next(stream)  # in flight, and we stop reading: flow control stalls the server
            assert d.stop(signal.SIGINT) == 0
            with pytest.raises(grpc.RpcError):
                for _ in stream:
                    pass


def test_client_killed_mid_put_leaves_nothing(tmp_path):
    """A client process dies mid-Put: no blob appears, the temp file is removed, the daemon keeps serving."""
    from tests.test_blobservice import temp_files

    with start_daemon(tmp_path, *fs_store(tmp_path)) as d:
        code = (
            "import os, sys, time\n"
            "from tvixd.blobservice.grpc import from_url\n"
            f"w = from_url('{d.addr}').open_write()\n"
            "for _ in range(4): w.write(os.urandom(1 << 20))\n"
            "print('sent', flush=True); time.sleep(600)\n"
        )
        client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=REPO_ROOT,
                                  env=tvixd_env())
        try:
            assert client.stdout.readline() == b"sent\n"
            tmp_dir = tmp_path / "blobs" / "tmp"
            deadline = time.monotonic() + 30
            while not temp_files(tmp_dir, d.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)  # the daemon has started writing the upload
            assert temp_files(tmp_dir, d.proc.pid)
        finally:
            client.kill()
            client.wait()
        deadline = time.monotonic() + 30
        while temp_files(tmp_dir, d.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not temp_files(tmp_dir, d.proc.pid), "the aborted upload's temp file is still there"
        assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == ["tmp"], "a blob became visible"
        assert health_status(d.target) == health_pb2.HealthCheckResponse.SERVING


def test_client_cancelling_directory_put_leaves_nothing(tmp_path):
    with start_daemon(tmp_path, *MEMORY) as d, grpc.insecure_channel(d.target) as ch:
        leaf = Directory(symlinks=[SymlinkNode(name=b"l", target=b"cancelled")])
        gate = threading.Event()

        def requests():
            yield leaf
            gate.wait(30)

        dirs = rpc_directory_pb2_grpc.DirectoryServiceStub(ch)
        future = dirs.Put.future(requests())
        time.sleep(0.5)
        future.cancel()
        gate.set()
        from tvixd.castore.directory import directory_digest

        with pytest.raises(grpc.RpcError) as e:
            list(dirs.Get(GetDirectoryRequest(digest=directory_digest(leaf))))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def _wait_for_puts_started(daemon, count: int) -> None:
    """Until the daemon's metrics count ``count`` Blob Puts started (a sleep was not enough on a loaded machine)."""
    from prometheus_client.parser import text_string_to_metric_families

    address = next(e["address"] for e in daemon.events() if e["event"] == "metrics listening")
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as r:
            text = r.read().decode()
        started = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                      if s.name == "grpc_server_started_total" and s.labels.get("grpc_method") == "Put"
                      and s.labels.get("grpc_service") == "tvix.store.v1.BlobService")
        if started >= count:
            return
        assert time.monotonic() < deadline, f"the daemon started {started} of {count} Puts within 60 s"
        time.sleep(0.02)


def test_one_access_line_per_call_also_when_the_client_leaves_first(tmp_path):
    """The access line waits for the servicer and for the call's end on the wire, whichever comes last."""
    with start_daemon(tmp_path, *MEMORY, "--metrics-listen-address", "127.0.0.1:0") as d:
        with grpc.insecure_channel(d.target) as ch:
            blobs = rpc_blobstore_pb2_grpc.BlobServiceStub(ch)
            data = os.urandom(16 << 20)  # far more than the flow-control windows hold
            put = blobs.Put(iter([BlobChunk(data=data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]),
                            metadata=[("x-request-id", "put-ok")])
            blobs.Stat(StatBlobRequest(digest=put.digest), metadata=[("x-request-id", "stat-ok")])
            with pytest.raises(grpc.RpcError):
                blobs.Stat(StatBlobRequest(digest=bytes(32)), metadata=[("x-request-id", "stat-missing")])
            # The client leaves while the servicer is still streaming the blob out...
            stream = blobs.Read(ReadBlobRequest(digest=put.digest), metadata=[("x-request-id", "read-left")])
            assert next(stream).data
            stream.cancel()
            # ... and while the servicer still waits for more of an upload.
            gate = threading.Event()

            def requests():
                yield BlobChunk(data=b"x" * 1000)
                gate.wait(30)

            future = blobs.Put.future(requests(), metadata=[("x-request-id", "put-left")])
            _wait_for_puts_started(d, 2)  # put-ok and put-left: the servicer now waits for more of it
            future.cancel()
            gate.set()
            # A call after them all: its answer proves the daemon kept serving.
            blobs.Stat(StatBlobRequest(digest=put.digest), metadata=[("x-request-id", "stat-last")])
        assert d.stop() == 0
    codes: dict[str, list[str]] = {}
    for e in d.events():
        if e["event"] == "rpc":
            codes.setdefault(e["request_id"], []).append(e["code"])
    assert codes == {"put-ok": ["OK"], "stat-ok": ["OK"], "stat-missing": ["NOT_FOUND"], "read-left": ["CANCELLED"],
                     "put-left": ["CANCELLED"], "stat-last": ["OK"]}
    assert not [e for e in d.events() if e["level"] == "error"]  # a client leaving is not an internal error


# --- proxy mode ---------------------------------------------------------------------------------------


def test_proxy_daemon_serves_another_daemons_store(tmp_path):
    """Daemon B's three services are gRPC clients of daemon A: import and dump through B, data lands in A."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "hello.txt").write_bytes(b"Hello World!")
    (tree / "sub" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (tree / "sub" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tree / "sub" / "run.sh").chmod(0o755)
    (tree / "link").symlink_to("sub/run.sh")
    with start_daemon(tmp_path / "a", *fs_store(tmp_path / "a")) as a:
        grpc_a = ("--blob-service-addr", a.addr, "--directory-service-addr", a.addr,
                  "--path-info-service-addr", a.addr)
        with start_daemon(tmp_path / "b", *grpc_a) as b:
            via_b = ("--blob-service-addr", b.addr, "--directory-service-addr", b.addr,
                     "--path-info-service-addr", b.addr)
            r = run_tvixd("import", str(tree), *via_b)
            assert r.returncode == 0, r.stderr.decode()
            store_path = r.stdout.decode().strip()
            assert store_path.startswith("/nix/store/") and store_path.endswith("-tree")
            # Same store path as an embedded (memory) import would give, and the same NAR from A and B.
            dump_b = run_tvixd("dump-path", store_path, *via_b)
            dump_a = run_tvixd("dump-path", store_path, *grpc_a)
            assert dump_b.returncode == 0 and dump_a.returncode == 0, dump_b.stderr.decode()
            assert dump_a.stdout == dump_b.stdout and len(dump_b.stdout) > 3 * 1024 * 1024
            cat = run_tvixd("cat", f"{store_path}/hello.txt", *via_b)
            assert cat.stdout == b"Hello World!"
            # Errors cross both daemons with their code: a missing path is "not found" through B.
            missing = run_tvixd("cat", f"{store_path[:-4]}nope/x", *via_b)
            assert missing.returncode != 0 and "Traceback" not in missing.stderr.decode()
        # B is gone; A still has everything (B stored nothing itself).
        listed = list(_list_paths(a.target))
        assert any(p.node.directory.name == store_path.rsplit("/", 1)[1].encode() for p in listed)


def _list_paths(target: str):
    with grpc.insecure_channel(target) as ch:
        yield from rpc_pathinfo_pb2_grpc.PathInfoServiceStub(ch).List(ListPathInfoRequest())


# --- load ----------------------------------------------------------------------------------------------

LOAD_SECONDS = float(os.environ.get("TVIXD_TEST_LOAD_SECONDS", "10"))


def _status_kib(d) -> tuple[int, int]:
    st = d.status()
    return int(st["Threads"]), int(st["VmRSS"].split()[0])


def test_16_concurrent_clients_mixed_load(tmp_path):
    """16 clients (own connections) mix puts and reads; no errors; no thread/memory growth after a warm-up."""
    rng = random.Random(1234)
    blobs_data = [rng.randbytes(rng.choice([10, 1000, 70_000, 300_000])) for _ in range(48)]
    leaves = [Directory(files=[FileNode(name=f"f{i}".encode(), digest=B3Digest.of(b), size=len(b))])
              for i, b in enumerate(blobs_data)]
    from tvixd.castore.directory import directory_digest

    leaf_digests = [directory_digest(x) for x in leaves]
    workers = 16
    with start_daemon(tmp_path, *MEMORY, "--workers", str(workers)) as d:
        threads_idle, _ = _status_kib(d)  # the worker pool starts its threads on demand

        def client(i: int, seconds: float, errors: list, counts: list) -> None:
            r = random.Random(i)
            try:
                with grpc.insecure_channel(d.target) as ch:
                    blobs = rpc_blobstore_pb2_grpc.BlobServiceStub(ch)
                    dirs = rpc_directory_pb2_grpc.DirectoryServiceStub(ch)
                    pis = rpc_pathinfo_pb2_grpc.PathInfoServiceStub(ch)
                    end = time.monotonic() + seconds
                    n = 0
                    while time.monotonic() < end:
                        k = r.randrange(len(blobs_data))
                        data = blobs_data[k]
                        op = r.randrange(6)
                        if op == 0:
                            assert blobs.Put(BlobChunk(data=data[j : j + 32768])
                                             for j in range(0, max(len(data), 1), 32768)).digest == B3Digest.of(data)
                        elif op == 1:
                            try:
                                got = b"".join(c.data for c in blobs.Read(ReadBlobRequest(digest=B3Digest.of(data))))
                                assert got == data
                            except grpc.RpcError as e:
                                assert e.code() == grpc.StatusCode.NOT_FOUND
                        elif op == 2:
                            try:
                                blobs.Stat(StatBlobRequest(digest=B3Digest.of(data)))
                            except grpc.RpcError as e:
                                assert e.code() == grpc.StatusCode.NOT_FOUND
                        elif op == 3:
                            parent = Directory(directories=[DirectoryNode(name=b"d", digest=leaf_digests[k], size=1)])
                            assert dirs.Put(iter([leaves[k], parent])).root_digest == directory_digest(parent)
                        elif op == 4:
                            try:
                                assert list(dirs.Get(GetDirectoryRequest(digest=leaf_digests[k]))) == [leaves[k]]
                            except grpc.RpcError as e:
                                assert e.code() == grpc.StatusCode.NOT_FOUND
                        else:
                            name = f"{k:032d}-load".encode().replace(b"0", b"1")
                            pi = PathInfo(node=Node(symlink=SymlinkNode(name=name, target=b"t")))
                            assert pis.Put(pi) == pi
                            assert pis.Get(GetPathInfoRequest(by_output_hash=_digest20(name))) == pi
                        n += 1
                    counts.append(n)
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        def run(seconds: float) -> int:
            errors: list = []
            counts: list = []
            threads = [threading.Thread(target=client, args=(i, seconds, errors, counts)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors[:3]
            return sum(counts)

        run(max(2.0, LOAD_SECONDS / 4))  # warm-up: the allocator reaches its steady size
        _, rss_before = _status_kib(d)
        calls = run(LOAD_SECONDS)
        time.sleep(1.0)
        threads_after, rss_after = _status_kib(d)
        assert calls > 16
        # Thousands of calls later, at most the worker pool and the quick pool have been added, and a few
        # threads grpc's core starts on demand under load (once one more than the pools: 29 of 28); a
        # per-call leak would add thousands.
        grpc_core_slack = 4
        assert threads_after <= threads_idle + workers + QUICK_THREADS + grpc_core_slack, (threads_idle, threads_after)
        assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)  # KiB
        assert health_status(d.target) == health_pb2.HealthCheckResponse.SERVING


def _digest20(name: bytes) -> bytes:
    from tvixd.castore.nixbase32 import decode

    return decode(name[:32])


def test_workers_flag_bounds_threads(tmp_path):
    with start_daemon(tmp_path, *MEMORY, "--workers", "4") as d:
        threads_idle, _ = _status_kib(d)  # the pool starts its threads on demand
        data = [os.urandom(100) for _ in range(64)]

        def put(b: bytes) -> bytes:
            with grpc.insecure_channel(d.target) as ch:
                return rpc_blobstore_pb2_grpc.BlobServiceStub(ch).Put(iter([BlobChunk(data=b)])).digest

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(put, data)) == [B3Digest.of(b) for b in data]
        threads_busy, _ = _status_kib(d)
        assert threads_idle < threads_busy <= threads_idle + 4


def test_client_commands_default_to_the_daemon(tmp_path):
    """import, dump-path, path-info, ls, cat talk to grpc+http://[::1]:8000 unless told otherwise."""
    for cmd in ("import", "dump-path", "path-info", "ls", "cat"):
        r = run_tvixd(cmd, "--help")
        assert "grpc+http://[::1]:8000" in r.stdout.decode(), cmd


def test_unreachable_daemon_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    addr = f"grpc+http://127.0.0.1:{port}"
    env = tvixd_env(BLOB_SERVICE_ADDR=addr, DIRECTORY_SERVICE_ADDR=addr, PATH_INFO_SERVICE_ADDR=addr)
    r = run_tvixd("path-info", "--all", env=env)
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"no tvixd daemon reachable at {addr}" in lines[0]
    assert "--blob-service-addr fs://" in lines[0] and "BLOB_SERVICE_ADDR" in lines[0]


# --- embedded default store, import through the daemon, health while draining ---------------------------


def test_default_store_is_embedded_in_a_fresh_0700_state_dir(tmp_path):
    state = tmp_path / "fresh" / "state"
    with start_daemon(tmp_path, env={"STATE_DIRECTORY": str(state)}) as d:
        listening = wait_for_log(d, "listening")
        assert listening["blob_service"] == f"fs://{state / 'blobs'}"
        assert listening["directory_service"] == listening["path_info_service"] == f"sqlite://{state / 'store.sqlite'}"
        assert (state.stat().st_mode & 0o777) == 0o700
        from tvixd.blobservice.grpc import from_url

        client = from_url(d.addr)
        try:
            w = client.open_write()
            w.write(b"durable")
            digest = w.close()
        finally:
            client.close()
        assert (state / "blobs" / digest.hex()[:2] / digest.hex()[2:]).read_bytes() == b"durable"


def test_import_through_the_daemon_gives_the_embedded_store_paths(tmp_path):
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    for i in range(40):  # enough files for the importer's concurrent blob uploads to overlap
        (tree / "a" / f"f{i}").write_bytes(os.urandom(i * 997))
    (tree / "a" / "b" / "x").write_bytes(b"x")
    (tree / "single").write_bytes(b"single file")
    db = f"sqlite://{tmp_path / 'emb' / 'store.sqlite'}"
    embedded = ("--blob-service-addr", f"fs://{tmp_path / 'emb' / 'blobs'}", "--directory-service-addr", db,
                "--path-info-service-addr", db)
    r = run_tvixd("import", str(tree), str(tree / "single"), *embedded)
    assert r.returncode == 0, r.stderr.decode()
    with start_daemon(tmp_path / "d") as d:
        via = ("--blob-service-addr", d.addr, "--directory-service-addr", d.addr, "--path-info-service-addr", d.addr)
        r2 = run_tvixd("import", str(tree), str(tree / "single"), *via)
        assert r2.returncode == 0, r2.stderr.decode()
        assert r2.stdout == r.stdout and len(r.stdout.split()) == 2
        for store_path in r.stdout.decode().split():
            nar = run_tvixd("dump-path", store_path, *via).stdout
            assert nar == run_tvixd("dump-path", store_path, *embedded).stdout


def test_health_watch_sees_not_serving_while_draining(tmp_path):
    with start_daemon(tmp_path, *MEMORY, "--shutdown-grace", "30") as d, grpc.insecure_channel(d.target) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        d.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # the watch is an in-flight call: ending it lets the drain finish early
        assert d.proc.wait(timeout=60) == 0
