"""Uploaded NARs waiting for their .narinfo.

``nix copy --to http://...`` PUTs the (compressed) NAR first, then the
narinfo that names it by URL and carries the NarHash/NarSize to check it
against. Between the two requests the NAR's blobs are already stored (they
are content-addressed and invisible as store paths), but its directories are
not: they are spooled to a temporary file by :class:`SpoolingPutter` and only
sent to the directory service, through one putter, when a narinfo with a
matching hash arrives. A NAR that never gets a (matching) narinfo therefore
leaves no directory and no PathInfo behind.

Pending uploads live in the binary-cache process (lost on restart, then Nix's
narinfo PUT gets a 400 and the copy fails loudly) and expire after a TTL.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field

from tvixd.blobservice.base import Precommit, run_precommit
from tvixd.castore.digest import B3Digest
from tvixd.castore.directory import canonical_bytes, directory_digest
from tvixd.directoryservice.base import DirectoryPutter, DirectoryService
from tvixd.errors import AlreadyClosed, InvalidRequest, ResourceExhausted
from tvixd.proto.castore_pb2 import Directory

_SPOOL_IN_MEMORY = 4 << 20
"""Directories of a pending upload stay in memory up to this many bytes, then go to a temp file."""


class SpoolingPutter(DirectoryPutter):
    """A DirectoryPutter that only records: ``close()`` seals the spool, :meth:`replay` commits it for real."""

    def __init__(self, tmp_dir: str | None = None) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, dir=tmp_dir)
        self._last: B3Digest | None = None
        self._state = "open"

    def put(self, directory: Directory) -> B3Digest:
        if self._state != "open":
            raise AlreadyClosed("directory spool already closed")
        data = canonical_bytes(directory)
        self._file.write(len(data).to_bytes(8, "little"))
        self._file.write(data)
        self._last = directory_digest(directory)
        return self._last

    def close(self, precommit: Precommit | None = None) -> B3Digest:
        if self._state == "aborted":
            raise AlreadyClosed("directory spool was aborted")
        if self._last is None:
            raise InvalidRequest("no directories sent")
        run_precommit(precommit, self.abort)
        self._state = "sealed"
        return self._last

    def abort(self) -> None:
        self._state = "aborted"
        self._file.close()

    @property
    def empty(self) -> bool:
        return self._last is None

    def replay(self, directory_service: DirectoryService) -> B3Digest:
        """Send every spooled directory, in order, through one real putter; return the committed root digest."""
        if self._state != "sealed":
            raise AlreadyClosed("directory spool is not sealed")
        self._file.seek(0)
        with directory_service.put_multiple_start() as putter:
            while header := self._file.read(8):
                data = self._file.read(int.from_bytes(header, "little"))
                putter.put(Directory.FromString(data))
            return putter.close()


@dataclass
class PendingNar:
    """One uploaded NAR: where its content is and what it hashed to."""

    url: str
    root: object  # tvixd.proto.pathinfo_pb2.Node, named b""
    nar_size: int
    nar_sha256: bytes
    file_size: int
    file_sha256: bytes
    spool: SpoolingPutter
    created: float = field(default_factory=time.monotonic)

    def discard(self) -> None:
        self.spool.abort()


class PendingUploads:
    """URL → :class:`PendingNar`, bounded in number (``max_pending``) and age (``ttl`` seconds)."""

    def __init__(self, max_pending: int, ttl: float) -> None:
        self.max_pending = max_pending
        self.ttl = ttl
        self._lock = threading.Lock()
        self._items: dict[str, PendingNar] = {}

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl
        for url in [u for u, p in self._items.items() if p.created < cutoff]:
            self._items.pop(url).discard()

    def add(self, pending: PendingNar) -> None:
        """Register an upload (replacing one with the same URL)."""
        with self._lock:
            self._expire()
            old = self._items.pop(pending.url, None)
            if old is not None:
                old.discard()
            if len(self._items) >= self.max_pending:
                pending.discard()
                raise ResourceExhausted(
                    f"too many NAR uploads waiting for their narinfo (max_pending_uploads = {self.max_pending})"
                )
            self._items[pending.url] = pending

    def take(self, url: str) -> PendingNar | None:
        """Remove and return the upload stored under ``url`` (None if unknown or expired)."""
        with self._lock:
            self._expire()
            return self._items.pop(url, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            for p in self._items.values():
                p.discard()
            self._items.clear()
