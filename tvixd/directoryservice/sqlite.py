"""``sqlite:///abs/file`` (or ``sqlite://``, temporary): directories in a SQLite table (see ``tvixd.sqlite``).

Rows are (digest, canonical encoding). A putter buffers and validates its
directories and commits all of them in ONE transaction on close, so a reader
(any thread or process) sees a directory only together with its closure.
Reads re-decode, re-validate and re-hash; a row that fails is ``DataLoss``.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import DecodeError

from tvixd.castore.digest import B3Digest
from tvixd.castore.directory import directory_digest, validate_directory
from tvixd.directoryservice.base import DirectoryPutter, DirectoryService
from tvixd.directoryservice.putter import ValidatingPutter
from tvixd.directoryservice.traverse import bfs
from tvixd.errors import DataLoss, InvalidRequest
from tvixd.proto.castore_pb2 import Directory
from tvixd.sqlite import BUSY_TIMEOUT, SqliteDatabase


class SqliteDirectoryService(DirectoryService):
    """Directories in table ``directories`` of a (possibly shared) SQLite file."""

    def __init__(self, path: str | None, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.db = SqliteDatabase(path, busy_timeout)

    def get(self, digest: bytes) -> Directory | None:
        digest = B3Digest(digest)
        with self.db.errors(f"get directory {digest}"):
            row = self.db.conn().execute("SELECT data FROM directories WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return None
        try:
            directory = Directory.FromString(row[0])
            validate_directory(directory)
        except (DecodeError, InvalidRequest) as e:
            raise DataLoss(f"stored directory {digest} in {self.db.path} is corrupt: {e}") from e
        actual = directory_digest(directory)
        if actual != digest:
            raise DataLoss(f"stored directory {digest} in {self.db.path} has digest {actual}")
        return directory

    def get_recursive(self, digest: bytes) -> Iterator[Directory]:
        return bfs(self.get, digest)

    def put_multiple_start(self) -> DirectoryPutter:
        return ValidatingPutter(self._commit)

    def _commit(self, directories: dict[B3Digest, bytes]) -> None:
        with self.db.transaction(f"store {len(directories)} directories") as conn:
            conn.executemany("INSERT OR IGNORE INTO directories (digest, data) VALUES (?, ?)", directories.items())

    def close(self) -> None:
        self.db.close()
