"""The BlobService conformance suite (SPEC Part B §9.4, §10.7), run against every backend in tests/backends.py."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures import BLOB_A, BLOB_A_DIGEST, BLOB_B, BLOB_B_DIGEST, EMPTY_DIGEST
from tvixd.blobservice.base import BlobService
from tvixd.blobservice.from_addr import from_addr
from tvixd.castore.digest import B3Digest
from tvixd.errors import AlreadyClosed, InvalidRequest


def put(service: BlobService, data: bytes, chunk: int = 65536) -> B3Digest:
    writer = service.open_write()
    for i in range(0, len(data), chunk):
        assert writer.write(data[i : i + chunk]) == len(data[i : i + chunk])
    return writer.close()


def read_all(service: BlobService, digest: bytes) -> bytes:
    reader = service.open_read(digest)
    assert reader is not None
    with reader:
        return reader.read()


def test_has_nonexistent_false(blob_service):
    assert blob_service.has(BLOB_A_DIGEST) is False
    assert blob_service.size(BLOB_A_DIGEST) is None


def test_not_found_read(blob_service):
    assert blob_service.open_read(BLOB_A_DIGEST) is None


@pytest.mark.parametrize(("data", "digest"), [(BLOB_A, BLOB_A_DIGEST), (BLOB_B, BLOB_B_DIGEST)], ids=["small", "big"])
def test_put_has_get(blob_service, data, digest):
    assert put(blob_service, data) == digest
    assert blob_service.has(digest)
    assert blob_service.size(digest) == len(data)
    assert read_all(blob_service, digest) == data


def test_empty_blob(blob_service):
    writer = blob_service.open_write()
    assert writer.close() == EMPTY_DIGEST
    assert blob_service.has(EMPTY_DIGEST)
    assert read_all(blob_service, EMPTY_DIGEST) == b""


def test_chunking_irrelevant(blob_service):
    writer = blob_service.open_write()
    for b in (b"", BLOB_A[:1], b"", BLOB_A[1:], b""):
        writer.write(b)
    assert writer.close() == BLOB_A_DIGEST
    assert read_all(blob_service, BLOB_A_DIGEST) == BLOB_A


def test_put_twice_is_idempotent(blob_service):
    assert put(blob_service, BLOB_A) == BLOB_A_DIGEST
    assert put(blob_service, BLOB_A) == BLOB_A_DIGEST
    assert read_all(blob_service, BLOB_A_DIGEST) == BLOB_A


def test_put_seek(blob_service):
    """SPEC Part B §9.4 put_seek: forward seeks that every backend (also gRPC) supports."""
    assert put(blob_service, BLOB_B) == BLOB_B_DIGEST
    reader = blob_service.open_read(BLOB_B_DIGEST)
    assert reader is not None
    with reader:
        assert reader.read(10) == BLOB_B[0:10]
        assert reader.seek(10) == 10
        assert reader.read(10) == BLOB_B[10:20]
        assert reader.seek(25) == 25
        assert reader.read(10) == BLOB_B[25:35]
        assert reader.seek(12345, io.SEEK_CUR) == 35 + 12345
        assert reader.read(10) == BLOB_B[12380:12390]
        assert reader.seek(len(BLOB_B)) == len(BLOB_B)
        assert reader.read() == b""


def test_close_is_idempotent(blob_service):
    writer = blob_service.open_write()
    writer.write(BLOB_A)
    assert writer.close() == BLOB_A_DIGEST
    assert writer.close() == BLOB_A_DIGEST
    writer.abort()  # after a successful close: nothing happens
    assert blob_service.has(BLOB_A_DIGEST)


def test_write_after_close_fails(blob_service):
    writer = blob_service.open_write()
    writer.close()
    with pytest.raises(AlreadyClosed):
        writer.write(b"x")


def test_abort_leaves_nothing(blob_service):
    writer = blob_service.open_write()
    writer.write(BLOB_B)
    writer.abort()
    writer.abort()
    assert not blob_service.has(BLOB_B_DIGEST)
    assert blob_service.open_read(BLOB_B_DIGEST) is None
    with pytest.raises(AlreadyClosed):
        writer.write(b"x")


def test_exception_in_with_block_aborts(blob_service):
    with pytest.raises(RuntimeError), blob_service.open_write() as writer:
        writer.write(BLOB_A)
        raise RuntimeError("boom")
    assert not blob_service.has(BLOB_A_DIGEST)


def test_unclosed_writer_is_invisible(blob_service):
    writer = blob_service.open_write()
    writer.write(BLOB_A)
    assert not blob_service.has(BLOB_A_DIGEST)
    assert writer.close() == BLOB_A_DIGEST
    assert blob_service.has(BLOB_A_DIGEST)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33])
def test_invalid_digest_length(blob_service, bad):
    with pytest.raises(InvalidRequest, match=str(len(bad))):
        blob_service.has(bad)
    with pytest.raises(InvalidRequest, match=str(len(bad))):
        blob_service.open_read(bad)


def test_concurrent_writers_and_readers(blob_service):
    blobs = [bytes([i]) * (1000 + 997 * i) for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda b: put(blob_service, b, chunk=777), blobs))
    assert digests == [B3Digest.of(b) for b in blobs]
    errors: list[BaseException] = []

    def reader(i: int) -> None:
        try:
            for _ in range(3):
                assert read_all(blob_service, digests[i]) == blobs[i]
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(blobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_same_blob_written_concurrently(blob_service):
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda _: put(blob_service, BLOB_B, chunk=100_000), range(8)))
    assert set(digests) == {BLOB_B_DIGEST}
    assert read_all(blob_service, BLOB_B_DIGEST) == BLOB_B


# --- addresses (SPEC Part B §7.1, §10.7) -------------------------------------------------------------


@pytest.mark.parametrize("addr", ["memory://", "memory:"])
def test_from_addr_memory_valid(addr):
    assert from_addr(addr).has(BLOB_A_DIGEST) is False


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("http://foo.example/test", "unknown scheme"),
        ("foo", "no scheme"),
        ("memory://foo", "no host"),
        ("memory:///", "no path"),
        ("memory:///foo", "no path"),
        ("memory://?x=1", "query"),
        ("fs://", "absolute"),
        ("fs:", "absolute"),
        ("fs:///", "cowardly"),
        ("fs://foo.example", "invalid host"),
        ("fs://foo.example/tmp/x", "invalid host"),
        ("fs:relative/dir", "absolute"),
        ("sqlite:///tmp/x.sqlite", "unknown scheme"),
    ],
)
def test_from_addr_invalid(addr, why):
    with pytest.raises(InvalidRequest, match=why) as e:
        from_addr(addr)
    assert repr(addr) in str(e.value)
