"""The BlobService contract: blobs are byte strings named by their blake3 digest.

Every backend (memory, fs, gRPC client) subclasses :class:`BlobService` and
nothing else; the shared conformance suite (``tests/test_blobservice.py``) is
run against each one. Everything here is blocking: callers that want
concurrency use threads.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from types import TracebackType

from tvixd.castore.digest import B3Digest
from tvixd.errors import DataLoss


class BlobReader(io.RawIOBase):
    """A readable, seekable stream over one blob's bytes.

    Contract:
    - ``read``/``readinto`` return the blob's bytes in order; ``b""`` only at EOF.
    - ``seek(pos, whence)`` and ``tell()`` work like a file's. Backends that can
      only stream forward (the gRPC client) raise ``io.UnsupportedOperation`` for
      backward seeks and ``SEEK_END``; callers that need random access reopen the
      blob instead (the FUSE layer does).
    - Backends that verify content raise :class:`tvixd.errors.DataLoss` from
      ``read`` when the bytes turn out not to hash to the digest: never return
      the final bytes of a corrupt blob without raising. Verification covers
      reads that run sequentially from offset 0; after a seek elsewhere a
      reader may stop verifying (fs:// does: random access can't be checked
      without reading the whole blob).
    - ``size`` is the blob's length in bytes when the backend knows it cheaply,
      else ``None``.
    """

    size: int | None = None

    def readable(self) -> bool:
        return True


Precommit = Callable[[], None]
"""A last check before a write becomes visible: raising from it discards the write."""


def run_precommit(precommit: Precommit | None, abort: Callable[[], None]) -> None:
    """Call ``precommit`` if given; if it raises, ``abort`` the write first, then re-raise."""
    if precommit is None:
        return
    try:
        precommit()
    except BaseException:
        abort()
        raise


class BlobWriter(ABC):
    """A byte sink that becomes a blob named by its digest when closed.

    Contract:
    - ``write(data)`` accepts any number of chunks of any size (empty chunks too).
    - ``close()`` makes the blob durable and visible under its digest, then
      returns the digest; nothing is visible before that. If the blob already
      exists it is not rewritten. Closing again returns the same digest.
      Closing without writing stores the empty blob.
    - ``abort()`` discards everything written; nothing becomes visible. Aborting
      after a successful close does nothing.
    - ``write`` after ``close``/``abort`` raises :class:`tvixd.errors.AlreadyClosed`.
    - Used as a context manager, an exception inside the block aborts; a clean
      exit does *not* close (the caller wants the digest from ``close()``).
    - A writer is used from one thread at a time; different writers from
      different threads are fine.
    """

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; return ``len(data)``."""

    @abstractmethod
    def close(self, precommit: Precommit | None = None) -> B3Digest:
        """Commit the blob (durably, atomically) and return its digest. Idempotent.

        ``precommit``, if given, is called once, after the bytes are durable and
        just before the blob becomes visible; if it raises, the blob is discarded
        (as by ``abort``) and the exception propagates. The gRPC server uses it to
        commit an upload only if the client did not go away (see
        ``tvixd.server.servicers``).
        """

    @abstractmethod
    def abort(self) -> None:
        """Discard what was written; nothing becomes visible. Idempotent."""

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


class BlobBatch:
    """A group of blob writes made durable and visible together, at :meth:`commit`.

    Bulk writers (the importer) use it so a backend can pay one filesystem sync for
    many blobs instead of one or two fsyncs per blob (fs://: about 7x faster on
    /usr/share/doc, see ``tvixd.blobservice.fs``).

    Contract:
    - ``open_write()`` gives a writer like :meth:`BlobService.open_write`, except that
      its ``close()`` returns the digest while the blob may stay invisible (and not
      durable) until ``commit()``.
    - ``commit()`` makes every blob whose writer was closed before the call durable
      and visible; the batch can be used and committed again afterwards.
      ``commit(precommit)`` calls ``precommit`` once, after those blobs are durable and
      before any of them becomes visible where the backend defers visibility; if it
      raises, they are discarded (as by ``abort``) and the exception propagates. The
      gRPC server's PutBlobs uses it to commit only if the client did not go away.
    - ``abort()`` discards the blobs not committed yet: they never become visible.
      A crash before ``commit()`` leaves nothing visible of them either.
    - Writers of one batch may be used from several threads at once; ``commit`` and
      ``abort`` are called by the batch's owner.

    This default commits each blob when its writer closes (``commit`` only runs the
    precommit check, ``abort`` has nothing to do), which is correct for every backend:
    a blob becomes visible only whole and verified, just earlier.
    """

    closes_wait: bool = True
    """Whether a writer's ``close()`` waits for the backend (a disk, a round trip), so bulk writers
    close from worker threads to overlap those waits. False for a batch whose ``close()`` only
    hands the blob over (the gRPC client's: the upload runs on, ``commit`` waits for it)."""

    def __init__(self, service: BlobService) -> None:
        self.service = service

    def open_write(self) -> BlobWriter:
        """A writer whose blob becomes visible at the latest at ``commit()``."""
        return self.service.open_write()

    def put_whole(self, data: bytes | bytearray | memoryview, precommit: Precommit | None = None) -> B3Digest:
        """Write one blob held whole in memory through a writer of this batch; its digest (aborted on error)."""
        with self.open_write() as writer:
            writer.write(data)
            return writer.close(precommit)

    def commit(self, precommit: Precommit | None = None) -> None:
        """Make every blob closed so far durable and visible (``precommit``: see the class docstring)."""
        if precommit is not None:
            precommit()

    def commit_behind(self) -> None:
        """Start making the blobs closed so far durable and visible, without waiting for it.

        A hint from a bulk writer that goes on writing meanwhile (the importer, every
        few hundred files), so a backend can overlap its syncs with the writes instead
        of paying them all at the final :meth:`commit`. Each blob stays invisible until
        it is durable, as with ``commit``, and may become visible only at a later call
        (fs:// names them at the next one); the next ``commit()`` (or ``abort()``) waits
        for the work started here first and raises its error, if it failed (its blobs
        are then discarded). Called by the batch's owner, like ``commit``. This default
        does nothing: the final ``commit`` does it all.
        """

    def abort(self) -> None:
        """Discard blobs not committed yet."""


class VerifiedBlob(ABC):
    """An open blob whose whole contents were verified (see :meth:`BlobService.open_verified`)."""

    size: int

    @abstractmethod
    def windows(self) -> Iterator[memoryview]:
        """The contents in order, as read-only buffers (valid while referenced; no copy made)."""

    @abstractmethod
    def close(self) -> None:
        """Release the file; buffers still referenced stay valid."""

    def __enter__(self) -> VerifiedBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobService(ABC):
    """Stores and retrieves blobs by blake3 digest.

    Digest arguments are 32-byte ``bytes``; anything else raises
    :class:`tvixd.errors.InvalidRequest` naming the length. Backend failures
    raise subclasses of :class:`tvixd.errors.TvixError` (``Unavailable`` for
    transient trouble, ``ResourceExhausted`` for a full disk, ``DataLoss`` for
    corruption, ``StorageError`` otherwise); never a bare ``OSError``.
    """

    @abstractmethod
    def size(self, digest: bytes) -> int | None:
        """The blob's length in bytes, or ``None`` if the blob does not exist."""

    def has(self, digest: bytes) -> bool:
        """Whether the blob exists."""
        return self.size(digest) is not None

    @abstractmethod
    def open_read(self, digest: bytes) -> BlobReader | None:
        """A reader over the blob, or ``None`` if it does not exist."""

    def read_verified(self, digest: bytes, size: int) -> bytes | None:
        """The whole blob in one piece, checked against its digest, or ``None`` if it does not exist.

        For callers that know the length (a FileNode's ``size``) and keep the blob in
        memory anyway (small files of a NAR): a backend can then fetch it in one go
        (fs:// does one open, one read, one hash). The bytes come back only after the
        whole blob was verified (``DataLoss`` naming the digest otherwise, as a reader
        raises); a blob of another length raises ``DataLoss`` naming both lengths,
        having read at most ``size + 1`` bytes. This default reads through
        :meth:`open_read` up to EOF, where a verifying reader makes its check.
        """
        reader = self.open_read(digest)
        if reader is None:
            return None
        with reader:
            if reader.size is not None and reader.size != size:
                raise DataLoss(f"blob {B3Digest(digest)} has {reader.size} bytes, not the {size} expected")
            parts = []
            got = 0
            while got <= size and (chunk := reader.read(size + 1 - got)):
                parts.append(chunk)
                got += len(chunk)
        if got != size:
            has = f"more than {size}" if got > size else str(got)
            raise DataLoss(f"blob {B3Digest(digest)} has {has} bytes, not the {size} expected")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def open_verified(self, digest: bytes, size: int) -> VerifiedBlob | None:
        """A big blob checked whole against its digest before any of its bytes is handed out.

        Optional (backends whose blobs are local files implement it; the others raise
        ``NotImplementedError`` and callers stream through :meth:`open_read`). Returns
        ``None`` if the blob does not exist; raises ``DataLoss`` naming the digest if it
        does not hash to it or is not ``size`` bytes long. Why: a NAR or FUSE reader can
        then send a 1 GiB file without copying it through Python after one multi-threaded
        hash pass, and never sends a byte that was not verified.
        """
        raise NotImplementedError

    @abstractmethod
    def open_write(self) -> BlobWriter:
        """A fresh writer. Opening never fails for lack of connectivity (errors surface on write/close)."""

    def batch(self) -> BlobBatch:
        """A :class:`BlobBatch` for many writes committed together (the default commits each on close)."""
        return BlobBatch(self)

    def bulk_batch(self) -> BlobBatch:
        """A :meth:`batch` for one long bulk write (importing a tree): a backend may spend a helper process on it.

        The same contract as :meth:`batch`; this default is :meth:`batch`.
        """
        return self.batch()

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release resources (connections, channels). The service is unusable afterwards."""
