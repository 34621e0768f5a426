"""The validating, buffering DirectoryPutter shared by the memory and SQLite backends.

Every ``put`` is checked at once (SPEC Part A §3, Part B §2.2): the directory
validates, each child directory was sent earlier *to this putter* with the
size computed for it. Accepted directories are buffered (as canonical bytes)
and handed to the backend's ``commit`` in one call on ``close``, which stores
them in one transaction, so a failed or abandoned upload leaves nothing
visible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tvixd.blobservice.base import Precommit, run_precommit
from tvixd.castore.digest import B3Digest
from tvixd.castore.entries import (
    Entry,
    directory_entries_size,
    directory_lists,
    encode_directory,
    validate_directory_entries,
)
from tvixd.directoryservice.base import DirectoryPutter
from tvixd.errors import AlreadyClosed, InvalidRequest, TvixError

if TYPE_CHECKING:  # messages only where put() receives them: the importer's put_entries needs no protobuf
    from tvixd.proto.castore_pb2 import Directory

Commit = Callable[[dict[B3Digest, bytes]], None]
"""Store every (digest → canonical encoding) pair atomically; already-present digests are fine."""


class ValidatingPutter(DirectoryPutter):
    """Validates each directory on ``put``; commits all of them atomically on ``close``."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._pending: dict[B3Digest, bytes] = {}
        self._sizes: dict[B3Digest, int] = {}
        self._last: B3Digest | None = None
        self._error: TvixError | None = None
        self._root: B3Digest | None = None
        self._done = False

    def put(self, directory: Directory) -> B3Digest:
        from tvixd.castore.directory import canonical_bytes

        data = canonical_bytes(directory)  # unknown fields dropped; the entries of exactly these bytes
        return self._guarded(*directory_lists(directory), data)

    def put_entries(self, dirs: list[Entry], files: list[Entry], links: list[Entry]) -> B3Digest:
        return self._guarded(dirs, files, links, None)

    def _guarded(self, dirs: list[Entry], files: list[Entry], links: list[Entry], data: bytes | None) -> B3Digest:
        if self._done:
            raise AlreadyClosed("directory putter already closed")
        if self._error is not None:
            raise self._error
        try:
            return self._accept(dirs, files, links, data)
        except TvixError as e:
            self._error = e
            self._pending.clear()
            raise

    def _accept(self, dirs: list[Entry], files: list[Entry], links: list[Entry], data: bytes | None) -> B3Digest:
        if data is None:
            data = encode_directory(dirs, files, links)
        digest = B3Digest.of(data)
        try:
            validate_directory_entries(dirs, files, links)
        except InvalidRequest as e:
            raise InvalidRequest(f"directory {digest} failed validation: {e}") from e
        for _, name, child, size, _ in dirs:
            child_digest = B3Digest(child)
            expected = self._sizes.get(child_digest)
            if expected is None:
                raise InvalidRequest(
                    f"child directory {name!r} ({child_digest}) in directory {digest} not seen yet "
                    "(children must be sent earlier in the same upload)"
                )
            if size != expected:
                raise InvalidRequest(
                    f"child directory {name!r} ({child_digest}) in directory {digest} "
                    f"referred with wrong size, expected {expected}, actual {size}"
                )
        self._sizes[digest] = directory_entries_size(dirs, files, links)
        self._pending[digest] = data
        self._last = digest
        return digest

    def close(self, precommit: Precommit | None = None) -> B3Digest:
        if self._root is not None:
            return self._root
        if self._error is not None:
            raise self._error  # poisoned: every close raises the put's error
        if self._done:
            raise AlreadyClosed("directory putter was aborted")
        if self._last is None:
            raise InvalidRequest("no directories sent, can't show root digest")
        run_precommit(precommit, self.abort)
        # If the commit fails (e.g. Unavailable: the database stayed locked), nothing was stored
        # and the putter keeps its directories, so close() may simply be called again.
        self._commit(self._pending)
        self._pending = {}
        self._done = True
        self._root = self._last
        return self._root

    def abort(self) -> None:
        self._done = True
        self._pending.clear()
