"""``sqlite:///abs/file`` (or ``sqlite://``, temporary): path infos in a SQLite table (see ``tvixd.sqlite``).

Rows are (20-byte store path digest, PathInfo protobuf bytes). Reads re-decode,
re-validate and check the key against the root node's name (``DataLoss`` if
not). The CalculateNAR cache is a table keyed by the root node's canonical
encoding with the name cleared, so it survives restarts and is shared by every
process using the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from tvixd.blobservice.base import BlobService
from tvixd.castore.entries import decode_path_info, decode_root_node
from tvixd.directoryservice.base import DirectoryService
from tvixd.errors import DataLoss, InvalidRequest
from tvixd.pathinfoservice.base import PathInfoService
from tvixd.pathinfoservice.common import (
    check_output_digest,
    check_parts,
    check_path_info,
    nar_cache_key,
    validate_stored_path_info,
)
from tvixd.sqlite import BUSY_TIMEOUT, SqliteDatabase

if TYPE_CHECKING:  # protobuf where it is used: `dump-path` reads the root node without it (get_root_entry)
    from tvixd.castore.entries import Entry, PathInfoParts
    from tvixd.proto.pathinfo_pb2 import Node, PathInfo

LIST_PAGE = 256
"""Rows per query in ``list``: each page is a short read, so a slow consumer holds no snapshot open."""


class SqlitePathInfoService(PathInfoService):
    """Path infos in table ``path_infos`` of a (possibly shared) SQLite file."""

    def __init__(
        self,
        path: str | None,
        blob_service: BlobService,
        directory_service: DirectoryService,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        super().__init__(blob_service, directory_service)
        self.db = SqliteDatabase(path, busy_timeout)

    def _decode(self, key: bytes, data: bytes) -> PathInfo:
        from google.protobuf.message import DecodeError

        from tvixd.castore.pathinfo import path_info_parts
        from tvixd.proto.pathinfo_pb2 import PathInfo

        try:
            path_info = PathInfo.FromString(data)
            validate_stored_path_info(path_info_parts(path_info), key)
        except (DecodeError, InvalidRequest) as e:
            raise self._corrupt(key, e) from e
        return path_info

    def _corrupt(self, key: bytes, e: Exception) -> DataLoss:
        return DataLoss(f"stored PathInfo {key.hex()} in {self.db.path} is corrupt: {e}")

    def _row(self, key: bytes) -> bytes | None:
        """The stored bytes of the PathInfo under ``key`` (checked by check_output_digest), or None."""
        with self.db.errors(f"get PathInfo {key.hex()}"):
            row = self.db.conn().execute("SELECT data FROM path_infos WHERE digest = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get(self, digest: bytes) -> PathInfo | None:
        key = check_output_digest(digest)
        data = self._row(key)
        return None if data is None else self._decode(key, data)

    def get_parts(self, digest: bytes) -> PathInfoParts | None:
        """Decoded without protobuf (``decode_path_info``) and checked as :meth:`get` checks the message;
        a row in another wire form (or with signatures) is decoded by protobuf, as by :meth:`get`."""
        from tvixd.castore.pathinfo import path_info_parts

        key = check_output_digest(digest)
        data = self._row(key)
        if data is None:
            return None
        parts = decode_path_info(data)
        if parts is None:
            return path_info_parts(self._decode(key, data))
        try:
            validate_stored_path_info(parts, key)
        except InvalidRequest as e:
            raise self._corrupt(key, e) from e
        return parts

    def get_root_entry(self, digest: bytes) -> Entry | None:
        """The root node read from the row without protobuf, checked as far as it is used: a valid store
        path name whose digest is the key (else the whole row is decoded and checked, as :meth:`get` does)."""
        from tvixd.castore.storepath import StorePath, StorePathError

        key = check_output_digest(digest)
        data = self._row(key)
        if data is None:
            return None
        entry = decode_root_node(data)
        try:
            if entry is not None and StorePath.from_basename(entry[1]).digest == key:
                return entry
        except StorePathError:
            pass
        # Through protobuf, from the same row: DataLoss naming what is wrong, or the entry.
        from tvixd.castore.entries import node_entry
        from tvixd.castore.pathinfo import root_node

        return node_entry(root_node(self._decode(key, data)))

    def put(self, path_info: PathInfo) -> PathInfo:
        key = check_path_info(path_info, self.blob_service, self.directory_service)
        self._store(key, path_info.SerializeToString(deterministic=True))
        return path_info

    def put_imported(self, root: Entry, nar_size: int, nar_sha256: bytes) -> None:
        """:meth:`put` of an import's PathInfo, encoded here (``encode_imported_path_info``): no protobuf."""
        from tvixd.castore.entries import encode_imported_path_info, imported_parts

        key = check_parts(imported_parts(root, nar_size, nar_sha256), self.blob_service, self.directory_service)
        self._store(key, encode_imported_path_info(root, nar_size, nar_sha256))

    def _store(self, key: bytes, data: bytes) -> None:
        with self.db.transaction(f"store PathInfo {key.hex()}") as conn:
            conn.execute("INSERT OR REPLACE INTO path_infos (digest, data) VALUES (?, ?)", (key, data))

    def list(self) -> Iterator[PathInfo]:
        # Keyset pagination in key order rather than one long cursor: the generator may be consumed
        # slowly (a gRPC stream) or from another thread, and each page uses the current thread's
        # connection for one short read.
        after = b""
        while True:
            with self.db.errors("list PathInfos"):
                rows = (
                    self.db.conn()
                    .execute(
                        "SELECT digest, data FROM path_infos WHERE digest > ? ORDER BY digest LIMIT ?",
                        (after, LIST_PAGE),
                    )
                    .fetchmany(LIST_PAGE)
                )
            for key, data in rows:
                yield self._decode(key, data)
            if len(rows) < LIST_PAGE:
                return
            after = rows[-1][0]

    def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        key = nar_cache_key(node)
        with self.db.errors("read the NAR cache"):
            row = self.db.conn().execute(
                "SELECT nar_size, nar_sha256 FROM nar_cache WHERE node_key = ?", (key,)
            ).fetchone()
        if row is not None:
            return row[0], row[1]
        from tvixd.nar import calculate_nar

        size, sha256 = calculate_nar(node, self.blob_service, self.directory_service)
        with self.db.transaction("write the NAR cache") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO nar_cache (node_key, nar_size, nar_sha256) VALUES (?, ?, ?)",
                (key, size, sha256),
            )
        return size, sha256

    def close(self) -> None:
        self.db.close()
