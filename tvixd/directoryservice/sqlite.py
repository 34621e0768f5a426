"""``sqlite:///abs/file`` (or ``sqlite://``, temporary): directories in a SQLite table (see ``tvixd.sqlite``).

Rows are (digest, canonical encoding). A putter buffers and validates its
directories and commits all of them in ONE transaction on close, so a reader
(any thread or process) sees a directory only together with its closure.

Reads hash the stored bytes and decode them; a row whose bytes do not hash to
its digest (or do not decode) is ``DataLoss``. They are not validated again: a
row that hashes to its key holds exactly the canonical bytes the putter
validated before storing them, so re-validation could only catch a row written
by something other than a putter, not corruption (and the NAR writer and
``traverse`` still refuse invalid names). Decoding plus validating plus
re-encoding to hash cost ~3x a blake3 of the row (measured per directory of /usr/share/doc).
"""

from __future__ import annotations

from collections.abc import Iterator

import blake3
from google.protobuf.message import DecodeError

from tvixd.castore.digest import B3Digest
from tvixd.directoryservice.base import DirectoryPutter, DirectoryService
from tvixd.directoryservice.putter import ValidatingPutter
from tvixd.directoryservice.traverse import bfs
from tvixd.errors import DataLoss, NotFound
from tvixd.proto.castore_pb2 import Directory
from tvixd.sqlite import BUSY_TIMEOUT, SqliteDatabase

CLOSURE_BATCH = 500
"""Digests per ``IN (...)`` query: well below SQLite's bound on parameters."""


class SqliteDirectoryService(DirectoryService):
    """Directories in table ``directories`` of a (possibly shared) SQLite file."""

    def __init__(self, path: str | None, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.db = SqliteDatabase(path, busy_timeout)

    def get(self, digest: bytes) -> Directory | None:
        digest = B3Digest(digest)
        with self.db.errors(f"get directory {digest}"):
            row = self.db.conn().execute("SELECT data FROM directories WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else self._decode(digest, row[0])

    def _decode(self, digest: B3Digest, data: bytes) -> Directory:
        """The directory stored under ``digest``, if ``data`` still hashes to it (see the module docstring)."""
        actual = blake3.blake3(data).digest()
        if actual != digest:
            raise DataLoss(
                f"stored directory {digest} in {self.db.path} is corrupt: its bytes hash to {B3Digest(actual)}"
            )
        try:
            return Directory.FromString(data)
        except DecodeError as e:
            raise DataLoss(f"stored directory {digest} in {self.db.path} is corrupt: {e}") from e

    def get_recursive(self, digest: bytes) -> Iterator[Directory]:
        return bfs(self.get, digest)

    def get_closure(self, digest: bytes) -> dict[B3Digest, Directory]:
        """One ``SELECT ... IN`` per tree level (of at most CLOSURE_BATCH digests) instead of one per directory."""
        root = B3Digest(digest)
        found: dict[B3Digest, Directory] = {}
        level = [root]
        while level:
            for i in range(0, len(level), CLOSURE_BATCH):
                part = level[i : i + CLOSURE_BATCH]
                query = f"SELECT digest, data FROM directories WHERE digest IN ({','.join('?' * len(part))})"
                with self.db.errors(f"get the closure of directory {root}"):
                    rows = self.db.conn().execute(query, part).fetchall()
                for key, data in rows:
                    key = B3Digest(key)
                    found[key] = self._decode(key, data)
            missing = [d for d in level if d not in found]
            if missing:
                raise NotFound(f"directory {missing[0]} not found (in the closure of {root})")
            below: dict[bytes, None] = {}  # the next level, deduplicated, in order
            for d in level:
                for child in found[d].directories:
                    if child.digest not in found:
                        below[child.digest] = None
            level = [B3Digest(d) for d in below]
        return found

    def put_multiple_start(self) -> DirectoryPutter:
        return ValidatingPutter(self._commit)

    def _commit(self, directories: dict[B3Digest, bytes]) -> None:
        with self.db.transaction(f"store {len(directories)} directories") as conn:
            conn.executemany("INSERT OR IGNORE INTO directories (digest, data) VALUES (?, ?)", directories.items())

    def close(self) -> None:
        self.db.close()
