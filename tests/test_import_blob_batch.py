"""The BlobBatch hook the importer writes through: visibility only at commit, abort leaves nothing."""

from __future__ import annotations

import os
import threading

import blake3
import pytest

from tvixd.blobservice.from_addr import from_addr


@pytest.fixture(params=["memory", "fs"])
def blob_service(request, tmp_path):
    service = from_addr("memory://" if request.param == "memory" else f"fs://{tmp_path / 'blobs'}")
    yield service
    service.close()


def _digest(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def test_commit_makes_blobs_visible(blob_service):
    batch = blob_service.batch()
    blobs = [os.urandom(n) for n in (0, 1, 4096, 100_000)] + [b"dup", b"dup"]
    digests = []
    for data in blobs:
        w = batch.open_write()
        w.write(data)
        digests.append(w.close())
    assert digests == [_digest(b) for b in blobs]
    batch.commit()
    for data, digest in zip(blobs, digests, strict=True):
        reader = blob_service.open_read(digest)
        assert reader is not None
        with reader:
            assert reader.read() == data
    batch.commit()  # nothing pending: fine


def test_fs_batch_defers_visibility_and_abort_discards(tmp_path):
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    batch = service.batch()
    w = batch.open_write()
    w.write(b"not yet")
    digest = w.close()
    assert not service.has(digest)  # closed, but invisible until commit
    batch.abort()
    assert not service.has(digest)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []  # no temp file left behind
    batch.commit()
    assert not service.has(digest)


def test_fs_batch_writers_from_many_threads(tmp_path):
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    batch = service.batch()
    blobs = [i.to_bytes(4, "little") * 1000 for i in range(64)]
    digests: list[bytes] = []
    lock = threading.Lock()

    def write(data: bytes) -> None:
        w = batch.open_write()
        w.write(data)
        d = w.close()
        with lock:
            digests.append(d)

    threads = [threading.Thread(target=write, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batch.commit()
    assert sorted(digests) == sorted(_digest(b) for b in blobs)
    assert all(service.has(d) for d in digests)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
