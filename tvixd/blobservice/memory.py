"""``memory://``: blobs in a process-local dict. A real implementation, used heavily in tests."""

from __future__ import annotations

import io
import threading

import blake3

from tvixd.blobservice.base import BlobBatch, BlobReader, BlobService, BlobWriter, Precommit, run_precommit
from tvixd.castore.digest import B3Digest
from tvixd.errors import AlreadyClosed


class BytesBlobReader(BlobReader):
    """A reader over bytes already in memory: full seeking, like the reference's cursor.

    Seeking past the end is allowed; reads there return ``b""``.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._buf = io.BytesIO(data)
        self.size = len(data)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._buf.readinto(b)

    def read(self, size: int | None = -1) -> bytes:
        return self._buf.read(size)

    def readall(self) -> bytes:
        return self._buf.read()

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self._buf.seek(pos, whence)

    def tell(self) -> int:
        return self._buf.tell()


class _MemoryBlobWriter(BlobWriter):
    """Buffers the blob in memory and hashes it as it arrives; inserts on close (into its batch, if any)."""

    def __init__(self, service: MemoryBlobService, batch: _MemoryBlobBatch | None = None) -> None:
        self._service = service
        self._batch = batch
        self._buf: bytearray | None = bytearray()
        self._hasher = blake3.blake3()
        self._digest: B3Digest | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._buf is None:
            raise AlreadyClosed("blob writer already closed")
        self._hasher.update(data)
        self._buf += data
        return len(data)

    def close(self, precommit: Precommit | None = None) -> B3Digest:
        if self._digest is not None:
            return self._digest
        if self._buf is None:
            raise AlreadyClosed("blob writer was aborted")
        digest = B3Digest(self._hasher.digest())
        run_precommit(precommit, self.abort)
        if self._batch is not None:
            self._batch._add(digest, bytes(self._buf))
        else:
            self._service._insert(digest, bytes(self._buf))
        self._buf = None
        self._digest = digest
        return digest

    def abort(self) -> None:
        self._buf = None


class _MemoryBlobBatch(BlobBatch):
    """Blobs closed into the batch become visible together at ``commit``; ``abort`` drops them.

    Why not the default batch (visible at each close): the daemon's PutBlobs promises that nothing of a
    failed or cancelled call becomes visible, and a daemon on memory:// should keep that promise too.
    """

    def __init__(self, service: MemoryBlobService) -> None:
        super().__init__(service)
        self._lock = threading.Lock()
        self._pending: dict[B3Digest, bytes] = {}

    def open_write(self) -> BlobWriter:
        return _MemoryBlobWriter(self.service, self)  # type: ignore[arg-type]

    def _add(self, digest: B3Digest, data: bytes) -> None:
        with self._lock:
            self._pending.setdefault(digest, data)

    def commit(self, precommit: Precommit | None = None) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if precommit is not None:
            precommit()  # raises: the blobs taken above are dropped, as by abort()
        for digest, data in pending.items():
            self.service._insert(digest, data)  # type: ignore[attr-defined]

    def abort(self) -> None:
        with self._lock:
            self._pending.clear()


class MemoryBlobService(BlobService):
    """Blobs in a dict behind a lock. Readers get a cursor over the (immutable) stored bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[B3Digest, bytes] = {}

    def _insert(self, digest: B3Digest, data: bytes) -> None:
        with self._lock:
            self._blobs.setdefault(digest, data)

    def size(self, digest: bytes) -> int | None:
        digest = B3Digest(digest)
        with self._lock:
            data = self._blobs.get(digest)
        return None if data is None else len(data)

    def open_read(self, digest: bytes) -> BlobReader | None:
        digest = B3Digest(digest)
        with self._lock:
            data = self._blobs.get(digest)
        return None if data is None else BytesBlobReader(data)

    def open_write(self) -> BlobWriter:
        return _MemoryBlobWriter(self)

    def batch(self) -> BlobBatch:
        return _MemoryBlobBatch(self)
