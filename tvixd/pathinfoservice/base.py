"""The PathInfoService contract: store path digest -> root node + NAR metadata."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tvixd.blobservice.base import BlobService
from tvixd.directoryservice.base import DirectoryService

if TYPE_CHECKING:  # annotations only: a SQLite store's `dump-path` never imports protobuf
    from tvixd.castore.entries import Entry, PathInfoParts
    from tvixd.proto.pathinfo_pb2 import Node, PathInfo


class PathInfoService(ABC):
    """Maps the 20-byte digest of a store path to its :class:`PathInfo`.

    A PathInfoService is built over a blob and a directory service: it checks
    that the content a PathInfo points at exists, and renders NARs from it.
    """

    def __init__(self, blob_service: BlobService, directory_service: DirectoryService) -> None:
        self.blob_service = blob_service
        self.directory_service = directory_service

    @abstractmethod
    def get(self, digest: bytes) -> PathInfo | None:
        """The PathInfo stored under this 20-byte store path digest, or ``None``.

        A digest that is not 20 bytes raises ``InvalidRequest`` naming the length.
        """

    def get_root_entry(self, digest: bytes) -> Entry | None:
        """The root node of the PathInfo stored under this 20-byte digest, as an entry
        (``tvixd.castore.entries``), or ``None``: all that ``dump-path`` needs of it.

        Errors as :meth:`get`. SQLite reads it from the row without protobuf; this default
        converts the message.
        """
        from tvixd.castore.entries import node_entry
        from tvixd.castore.pathinfo import root_node

        path_info = self.get(digest)
        return None if path_info is None else node_entry(root_node(path_info))

    def get_parts(self, digest: bytes) -> PathInfoParts | None:
        """The PathInfo stored under this 20-byte digest as plain values (see
        ``tvixd.castore.entries.PathInfoParts``: what `tvixd path-info` prints), checked as
        :meth:`get` checks it; ``None`` if there is none.

        Here from :meth:`get`; a backend may read them without protobuf (SQLite: `path-info`
        then imports none, ~40 ms of its start-up).
        """
        from tvixd.castore.pathinfo import path_info_parts

        path_info = self.get(digest)
        return None if path_info is None else path_info_parts(path_info)

    @abstractmethod
    def put(self, path_info: PathInfo) -> PathInfo:
        """Validate and store ``path_info`` (overwriting), and return it unchanged.

        Checks, in order (SPEC Part B §3.4 plus Part A §5), each failure an
        ``InvalidRequest`` naming the field: the reference count matches
        ``narinfo.reference_names``; a root node is set; its digest is 32 bytes;
        its name is a valid store path basename (name at most 211 bytes); every
        reference is 20 bytes; with ``narinfo``, ``nar_sha256`` is 32 bytes and
        each reference name is a valid basename whose digest equals the
        reference at the same position. Then the root's content must exist
        (the blob, or the directory, whose closure is then complete by the
        directory store's invariant): ``FailedPrecondition`` naming the digest.
        """

    def put_imported(self, root: Entry, nar_size: int, nar_sha256: bytes) -> None:
        """:meth:`put` the PathInfo an import makes: root node ``root`` (an entry, see
        ``tvixd.castore.entries``, named by its store path), no references, and a narinfo
        holding only ``nar_size`` and ``nar_sha256``. Same checks, same stored message.

        Here the message is built and put; a backend may store it without building it
        (SQLite: a one-file ``tvixd import`` then never imports protobuf, ~40 ms of start-up).
        """
        from tvixd.castore.entries import imported_parts, imported_path_info
        from tvixd.castore.pathinfo import validate_parts

        validate_parts(imported_parts(root, nar_size, nar_sha256))  # what a message can't carry, too
        self.put(imported_path_info(root, nar_size, nar_sha256))

    @abstractmethod
    def list(self) -> Iterator[PathInfo]:
        """Every stored PathInfo, streamed (never all loaded at once), in unspecified order."""

    @abstractmethod
    def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        """``(nar_size, nar_sha256)`` of the NAR rendering of ``node``.

        The node's name is ignored. Results are cached (persistently where the
        backend is persistent), keyed by the node's content without its name.
        Errors (SPEC Part A §2): node unset or malformed → ``InvalidRequest``;
        missing blob or directory → ``NotFound`` naming it; a FileNode size that
        differs from its blob → ``DataLoss``.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. The service is unusable afterwards."""
