"""``memory://``: directories in a process-local dict. A real implementation, used heavily in tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from tvixd.castore.digest import B3Digest
from tvixd.directoryservice.base import DirectoryPutter, DirectoryService
from tvixd.directoryservice.putter import ValidatingPutter
from tvixd.directoryservice.traverse import bfs
from tvixd.proto.castore_pb2 import Directory


class MemoryDirectoryService(DirectoryService):
    """Canonical encodings keyed by digest, behind a lock.

    Only putters write, and they validate everything first, so stored bytes
    are trusted; ``get`` parses a fresh message each time (callers may mutate it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirs: dict[B3Digest, bytes] = {}

    def get(self, digest: bytes) -> Directory | None:
        digest = B3Digest(digest)
        with self._lock:
            data = self._dirs.get(digest)
        return None if data is None else Directory.FromString(data)

    def get_recursive(self, digest: bytes) -> Iterator[Directory]:
        return bfs(self.get, digest)

    def put_multiple_start(self) -> DirectoryPutter:
        return ValidatingPutter(self._commit)

    def _commit(self, directories: dict[B3Digest, bytes]) -> None:
        with self._lock:
            for digest, data in directories.items():
                self._dirs.setdefault(digest, data)
