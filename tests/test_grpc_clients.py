"""The gRPC client backends beyond the shared conformance suites: URLs (SPEC §7.1), forward-only reads
(§9.3), digest verification, errors crossing the wire, and no leaked threads or channels.

Servers are real (in-process, memory backends, on a Unix socket; see tests/daemon.py).
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from contextlib import ExitStack

import pytest

from tests.daemon import memory_store_url, serve_in_process
from tests.fixtures import BLOB_A_DIGEST, BLOB_B, BLOB_B_DIGEST, DIRECTORY_A, DIRECTORY_B
from tvixd import errors
from tvixd.blobservice import grpc as blob_grpc
from tvixd.castore.digest import B3Digest
from tvixd.directoryservice import grpc as directory_grpc
from tvixd.pathinfoservice import grpc as pathinfo_grpc
from tvixd.server.channel import SharedChannel, parse_grpc_url
from tvixd.store import Store, StoreAddrs

MODULES = [blob_grpc, directory_grpc, pathinfo_grpc]


@pytest.fixture
def stack():
    with ExitStack() as s:
        yield s


@pytest.mark.parametrize("module", MODULES, ids=["blob", "directory", "pathinfo"])
@pytest.mark.parametrize(
    "url", ["grpc+unix:///path/to/somewhere", "grpc+http://localhost", "grpc+https://localhost",
            "grpc+http://[::1]:8000", "grpc+http://127.0.0.1:1"],
)
def test_valid_urls_are_lazy(module, url):
    """Construction never connects (nothing listens on most of these)."""
    module.from_url(url).close()


@pytest.mark.parametrize("module", MODULES, ids=["blob", "directory", "pathinfo"])
@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://foo.example/test", "invalid scheme"),
        ("grpc+unix://host.example/path/to/somewhere", "host may not be set"),
        ("grpc+https://localhost/some-path", "path may not be set"),
        ("grpc+http://localhost/", "path may not be set"),
        ("grpc+ftp://localhost", "unknown scheme"),
        ("grpc+http://localhost:notaport", "invalid port"),
        ("grpc+http://localhost?x=1", "no query"),
    ],
)
def test_invalid_urls(module, url, why):
    with pytest.raises(errors.InvalidRequest, match=why) as e:
        module.from_url(url)
    assert repr(url) in str(e.value)


def test_targets():
    assert parse_grpc_url("grpc+http://localhost").target == "localhost:80"
    assert parse_grpc_url("grpc+https://localhost").target == "localhost:443"
    assert parse_grpc_url("grpc+https://localhost").tls
    assert parse_grpc_url("grpc+http://[::1]:8000").target == "[::1]:8000"
    assert parse_grpc_url("grpc+unix:///run/tvixd.sock").target == "unix:/run/tvixd.sock"


def test_unix_ping_pong(stack):
    """grpc.rs test_valid_unix_path_ping_pong, for blobs and path infos."""
    url = memory_store_url(stack)
    blobs = stack.enter_context(_closing(blob_grpc.from_url(url)))
    assert blobs.has(BLOB_A_DIGEST) is False
    path_infos = stack.enter_context(_closing(pathinfo_grpc.from_url(url)))
    assert path_infos.get(bytes(20)) is None


class _closing:
    def __init__(self, service):
        self.service = service

    def __enter__(self):
        return self.service

    def __exit__(self, *exc):
        self.service.close()


def test_one_channel_per_address(stack):
    url = memory_store_url(stack)
    with Store.open(StoreAddrs.daemon(url)) as store:
        shared = SharedChannel._registry[parse_grpc_url(url)]
        assert shared._users == 3
        store.blob.has(BLOB_A_DIGEST)
        assert store.directory.get(BLOB_A_DIGEST) is None
    assert parse_grpc_url(url) not in SharedChannel._registry


def put(service, data: bytes) -> B3Digest:
    writer = service.open_write()
    writer.write(data)
    return writer.close()


def test_reader_is_forward_only(stack):
    blobs = stack.enter_context(_closing(blob_grpc.from_url(memory_store_url(stack))))
    assert put(blobs, BLOB_B) == BLOB_B_DIGEST
    reader = blobs.open_read(BLOB_B_DIGEST)
    with reader:
        assert reader.read(10) == BLOB_B[:10]
        with pytest.raises(io.UnsupportedOperation, match="backwards"):
            reader.seek(5)
        with pytest.raises(io.UnsupportedOperation, match="backwards"):
            reader.seek(-1, io.SEEK_CUR)
        with pytest.raises(io.UnsupportedOperation, match="end"):
            reader.seek(0, io.SEEK_END)
        assert reader.seek(0, io.SEEK_CUR) == 10
        assert reader.seek(100_000) == 100_000
        buf = bytearray(7)
        assert reader.readinto(buf) == 7 and bytes(buf) == BLOB_B[100_000:100_007]
        assert reader.seek(len(BLOB_B)) == len(BLOB_B)
        assert reader.read() == b""
    reader = blobs.open_read(BLOB_B_DIGEST)
    with reader, pytest.raises(io.UnsupportedOperation, match="reached the end"):
        reader.seek(len(BLOB_B) + 1)


def test_reader_verifies_the_digest(stack):
    """A server that sends other bytes than the digest names: DataLoss at the end of the read."""
    store = Store.open(StoreAddrs(blob="memory://", directory="memory://", path_info="memory://"))
    stack.callback(store.close)
    url = serve_in_process(stack, store)
    blobs = stack.enter_context(_closing(blob_grpc.from_url(url)))
    digest = put(blobs, b"the real bytes")
    store.blob._blobs[digest] = b"corrupted bytes"  # rot in the server's storage
    reader = blobs.open_read(digest)
    with reader, pytest.raises(errors.DataLoss, match=re.escape(str(digest))):
        reader.read()


def test_writer_surfaces_server_errors(stack):
    """The daemon ends the Put early (message over its limit): the writer raises the mapped error."""
    store = Store.open(StoreAddrs(blob="memory://", directory="memory://", path_info="memory://"))
    stack.callback(store.close)
    url = serve_in_process(stack, store, max_message_bytes=64 * 1024)
    blobs = stack.enter_context(_closing(blob_grpc.from_url(url)))
    writer = blobs.open_write()
    data = os.urandom(1024 * 1024)
    with pytest.raises(errors.ResourceExhausted, match="max_message_size=65536"):
        for _ in range(64):
            writer.write(data)
        writer.close()
    with pytest.raises(errors.AlreadyClosed):
        writer.write(b"x")
    assert not blobs.has(B3Digest.of(data))


def test_single_and_multi_chunk_puts(stack):
    """Blobs of one chunk go as one unary-style message, larger ones stream; both store the same bytes.

    Sizes straddle WRITE_CHUNK_SIZE, and written in pieces, so the held-back first chunk is sent first.
    """
    url = memory_store_url(stack)
    blobs = stack.enter_context(_closing(blob_grpc.from_url(url)))
    size = blob_grpc.WRITE_CHUNK_SIZE
    for n in (1, size - 1, size, size + 1, 2 * size + 7):
        data = os.urandom(n)
        writer = blobs.open_write()
        for i in range(0, n, 300_000):
            writer.write(data[i:i + 300_000])
        assert writer.close() == B3Digest.of(data)
        reader = blobs.open_read(B3Digest.of(data))
        with reader:
            assert reader.read() == data
    assert put(blobs, b"") == B3Digest.of(b"")


def test_single_chunk_put_errors_and_abort(stack):
    """The one-message Put maps server errors like the stream, and an aborted one sends nothing."""
    store = Store.open(StoreAddrs(blob="memory://", directory="memory://", path_info="memory://"))
    stack.callback(store.close)
    url = serve_in_process(stack, store, max_message_bytes=64 * 1024)
    blobs = stack.enter_context(_closing(blob_grpc.from_url(url)))
    data = os.urandom(100 * 1024)
    writer = blobs.open_write()
    writer.write(data)
    with pytest.raises(errors.ResourceExhausted, match="max_message_size=65536"):
        writer.close()
    with pytest.raises(errors.AlreadyClosed):
        writer.close()
    assert not blobs.has(B3Digest.of(data))
    small = b"aborted before close"
    writer = blobs.open_write()
    writer.write(small)
    writer.abort()
    with pytest.raises(errors.AlreadyClosed):
        writer.close()
    assert not blobs.has(B3Digest.of(small))
    assert put(blobs, small) == B3Digest.of(small)
    assert blobs.has(B3Digest.of(small))


def test_writers_and_putters_leave_no_threads(stack, tmp_path):
    """Aborted, failed and dropped uploads release grpcio's request-stream threads.

    The server is a subprocess, so every thread counted here is the client's.
    """
    from tests.daemon import start_daemon

    daemon = stack.enter_context(start_daemon(tmp_path, "--blob-service-addr", "memory://",
                                              "--directory-service-addr", "memory://",
                                              "--path-info-service-addr", "memory://"))
    url = daemon.addr
    blobs = stack.enter_context(_closing(blob_grpc.from_url(url)))
    dirs = stack.enter_context(_closing(directory_grpc.from_url(url)))
    put(blobs, b"warm-up")
    dirs.put(DIRECTORY_A)
    before = threading.active_count()
    for i in range(30):
        w = blobs.open_write()
        w.write(os.urandom(1000))
        if i % 3 == 0:
            w.abort()
        elif i % 3 == 1:
            w.close()
        else:
            del w  # dropped without close: aborted
        p = dirs.put_multiple_start()
        p.put(DIRECTORY_A)
        if i % 2:
            p.abort()
        else:
            with pytest.raises(errors.InvalidRequest):
                p.put(DIRECTORY_B.__class__(directories=[DIRECTORY_B.directories[0].__class__(
                    name=b"x", digest=bytes(32), size=0)]))
            with pytest.raises(errors.InvalidRequest):
                p.close()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before, [t.name for t in threading.enumerate()]


def test_recursive_get_accepts_repeats(stack):
    """Part A §4: the reference order repeats a directory reachable at two depths; our client accepts it."""
    from tvixd.castore.directory import directory_digest
    from tvixd.proto.castore_pb2 import Directory, DirectoryNode, SymlinkNode

    dirs = stack.enter_context(_closing(directory_grpc.from_url(memory_store_url(stack))))
    leaf = Directory(symlinks=[SymlinkNode(name=b"l", target=b"t")])
    mid = Directory(directories=[DirectoryNode(name=b"a", digest=directory_digest(leaf), size=1)])
    root = Directory(directories=[DirectoryNode(name=b"a", digest=directory_digest(leaf), size=1),
                                  DirectoryNode(name=b"b", digest=directory_digest(mid), size=2)])
    with dirs.put_multiple_start() as p:
        for d in (leaf, mid, root):
            p.put(d)
        root_digest = p.close()
    assert list(dirs.get_recursive(root_digest)) == [root, leaf, mid, leaf]
    with pytest.raises(errors.NotFound):
        dirs.get_recursive(bytes(32))


def test_unreachable(stack):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"grpc+http://127.0.0.1:{port}"
    blobs = stack.enter_context(_closing(blob_grpc.from_url(url)))
    with pytest.raises(errors.Unavailable, match=re.escape(f"no tvixd daemon reachable at {url}")):
        blobs.has(BLOB_A_DIGEST)
    writer = blobs.open_write()
    with pytest.raises(errors.Unavailable):
        writer.write(b"x" * 10)
        writer.close()
