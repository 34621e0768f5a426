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

The NAR renderer reads closures, and ``ls``/``cat`` single directories, as entry tuples decoded
from the rows without protobuf (:meth:`SqliteDirectoryService.get_closure_entries`,
:meth:`~SqliteDirectoryService.get_entries`), so protobuf, the putter and the traverser are
imported where they are used, not with this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import blake3

from tvixd.castore.digest import B3Digest
from tvixd.castore.entries import DIRECTORY, decode_directory, directory_entries
from tvixd.directoryservice.base import DirectoryPutter, DirectoryService
from tvixd.errors import DataLoss, NotFound
from tvixd.sqlite import BUSY_TIMEOUT, SqliteDatabase

if TYPE_CHECKING:
    from tvixd.castore.entries import Entry
    from tvixd.proto.castore_pb2 import Directory

T = TypeVar("T")

CLOSURE_BATCH = 500
"""Digests per ``IN (...)`` query: well below SQLite's bound on parameters."""


class SqliteDirectoryService(DirectoryService):
    """Directories in table ``directories`` of a (possibly shared) SQLite file."""

    def __init__(self, path: str | None, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.db = SqliteDatabase(path, busy_timeout)

    def get(self, digest: bytes) -> Directory | None:
        digest = B3Digest(digest)
        data = self._row(digest)
        return None if data is None else self._decode(digest, data)

    def get_entries(self, digest: bytes) -> list[Entry] | None:
        digest = B3Digest(digest)
        data = self._row(digest)
        return None if data is None else self._decode_entries(digest, data)

    def _row(self, digest: B3Digest) -> bytes | None:
        with self.db.errors(f"get directory {digest}"):
            row = self.db.conn().execute("SELECT data FROM directories WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else row[0]

    def _check(self, digest: bytes, data: bytes) -> None:
        """DataLoss unless the row ``data`` stored under ``digest`` still hashes to it (see the module docstring)."""
        actual = blake3.blake3(data).digest()
        if actual != digest:
            where = f"stored directory {B3Digest(digest)} in {self.db.path}"
            raise DataLoss(f"{where} is corrupt: its bytes hash to {B3Digest(actual)}")

    def _parse(self, digest: bytes, data: bytes) -> Directory:
        """The checked row ``data`` of ``digest`` as a message (DataLoss if it does not decode)."""
        from google.protobuf.message import DecodeError

        from tvixd.proto.castore_pb2 import Directory

        try:
            return Directory.FromString(data)
        except DecodeError as e:
            raise DataLoss(f"stored directory {B3Digest(digest)} in {self.db.path} is corrupt: {e}") from e

    def _decode(self, digest: bytes, data: bytes) -> Directory:
        """The directory stored under ``digest``, if ``data`` still hashes to it and decodes."""
        self._check(digest, data)
        return self._parse(digest, data)

    def _decode_entries(self, digest: bytes, data: bytes) -> list[Entry]:
        """The entries of the row ``data`` stored under ``digest``: decoded without protobuf when canonical
        (as the putter stores every row), through it otherwise."""
        self._check(digest, data)
        entries = decode_directory(data)
        return directory_entries(self._parse(digest, data)) if entries is None else entries

    def get_recursive(self, digest: bytes) -> Iterator[Directory]:
        from tvixd.directoryservice.traverse import bfs

        return bfs(self.get, digest)

    def get_closure(self, digest: bytes) -> dict[B3Digest, Directory]:
        return self._closure(digest, self._decode, lambda d: [c.digest for c in d.directories])  # type: ignore[return-value]

    def get_closure_entries(self, digest: bytes) -> dict[bytes, list[Entry]]:
        return self._closure(digest, self._decode_entries, lambda es: [e[2] for e in es if e[0] == DIRECTORY])

    def _closure(
        self, digest: bytes, decode: Callable[[bytes, bytes], T], children: Callable[[T], list[bytes]]
    ) -> dict[bytes, T]:
        """One ``SELECT ... IN`` per tree level (of at most CLOSURE_BATCH digests) instead of one per directory.

        ``decode(digest, row)`` makes each directory; ``children(directory)`` gives its child digests.
        Keys are B3Digests (as the contract of ``get_closure`` says).
        """
        root = B3Digest(digest)
        found: dict[bytes, T] = {}
        level: list[bytes] = [root]
        while level:
            for i in range(0, len(level), CLOSURE_BATCH):
                part = level[i : i + CLOSURE_BATCH]
                query = f"SELECT digest, data FROM directories WHERE digest IN ({','.join('?' * len(part))})"
                with self.db.errors(f"get the closure of directory {root}"):
                    rows = self.db.conn().execute(query, part).fetchall()
                for key, data in rows:
                    found[B3Digest(key)] = decode(key, data)
            missing = [d for d in level if d not in found]
            if missing:
                raise NotFound(f"directory {B3Digest(missing[0])} not found (in the closure of {root})")
            below: dict[bytes, None] = {}  # the next level, deduplicated, in order
            for d in level:
                for child in children(found[d]):
                    if child not in found:
                        below[child] = None
            level = list(below)
        return found

    def put_multiple_start(self) -> DirectoryPutter:
        from tvixd.directoryservice.putter import ValidatingPutter

        return ValidatingPutter(self._commit)

    def _commit(self, directories: dict[B3Digest, bytes]) -> None:
        with self.db.transaction(f"store {len(directories)} directories") as conn:
            conn.executemany("INSERT OR IGNORE INTO directories (digest, data) VALUES (?, ?)", directories.items())

    def close(self) -> None:
        self.db.close()
