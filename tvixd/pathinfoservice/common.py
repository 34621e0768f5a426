"""What every local PathInfoService backend shares: the put checks and the NAR cache key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvixd.blobservice.base import BlobService
from tvixd.castore.digest import B3Digest
from tvixd.directoryservice.base import DirectoryService
from tvixd.errors import FailedPrecondition, InvalidRequest

if TYPE_CHECKING:  # protobuf where it is used: `dump-path` needs only check_output_digest
    from tvixd.castore.entries import PathInfoParts
    from tvixd.proto.pathinfo_pb2 import Node, PathInfo

STORE_PATH_DIGEST_LEN = 20


def check_output_digest(digest: bytes) -> bytes:
    """A lookup key must be the 20-byte store path digest."""
    if len(digest) != STORE_PATH_DIGEST_LEN:
        raise InvalidRequest(f"invalid output digest length: {len(digest)} (expected {STORE_PATH_DIGEST_LEN})")
    return bytes(digest)


def validate_stored_path_info(parts: PathInfoParts, key: bytes) -> None:
    """Re-check a PathInfo read back from storage (its parts): still valid, and stored under its own digest."""
    from tvixd.castore.pathinfo import validate_parts

    store_path = validate_parts(parts)
    if bytes(store_path.digest) != key:
        raise InvalidRequest(f"stored under {key.hex()} but its root node names {store_path}")


def check_path_info(path_info: PathInfo, blob: BlobService, directory: DirectoryService) -> bytes:
    """All put checks of ``PathInfoService.put``; returns the 20-byte key to store under.

    The pure checks are ``tvixd.castore.pathinfo.validate_path_info``; then the
    root's content must exist (a directory's closure is complete by the
    directory store's invariant): ``FailedPrecondition`` naming the digest.
    """
    from tvixd.castore.pathinfo import path_info_parts

    return check_parts(path_info_parts(path_info), blob, directory)


def check_parts(parts: PathInfoParts, blob: BlobService, directory: DirectoryService) -> bytes:
    """:func:`check_path_info` of a PathInfo's plain values (``PathInfoService.put_imported``'s)."""
    from tvixd.castore.entries import DIRECTORY, SYMLINK
    from tvixd.castore.pathinfo import validate_parts

    store_path = validate_parts(parts)
    assert parts.root is not None  # validated
    kind, _, digest = parts.root[:3]
    if kind == DIRECTORY:
        if directory.get_entries(digest) is None:  # (SQLite: read without protobuf)
            raise FailedPrecondition(
                f"root directory {B3Digest(digest)} of {store_path} is not in the store (upload the directories first)"
            )
    elif kind != SYMLINK and not blob.has(digest):
        raise FailedPrecondition(
            f"root blob {B3Digest(digest)} of {store_path} is not in the store (upload the blob first)"
        )
    return bytes(store_path.digest)


def nar_cache_key(node: Node) -> bytes:
    """The root node's canonical encoding with its name cleared: NARs don't depend on the name."""
    from tvixd.proto.pathinfo_pb2 import Node

    kind = node.WhichOneof("node")
    if kind is None:
        raise InvalidRequest("no root node sent")
    keyed = Node()
    keyed.CopyFrom(node)
    keyed.DiscardUnknownFields()
    getattr(keyed, kind).name = b""
    return keyed.SerializeToString(deterministic=True)

