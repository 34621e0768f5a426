"""What every local PathInfoService backend shares: the put checks and the NAR cache key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvixd.blobservice.base import BlobService
from tvixd.castore.digest import B3Digest
from tvixd.directoryservice.base import DirectoryService
from tvixd.errors import FailedPrecondition, InvalidRequest

if TYPE_CHECKING:  # protobuf where it is used: `dump-path` needs only check_output_digest
    from tvixd.castore.entries import Entry, PathInfoParts
    from tvixd.castore.storepath import StorePath
    from tvixd.proto.pathinfo_pb2 import Node, PathInfo

STORE_PATH_DIGEST_LEN = 20


def check_output_digest(digest: bytes) -> bytes:
    """A lookup key must be the 20-byte store path digest."""
    if len(digest) != STORE_PATH_DIGEST_LEN:
        raise InvalidRequest(f"invalid output digest length: {len(digest)} (expected {STORE_PATH_DIGEST_LEN})")
    return bytes(digest)


def validate_stored_path_info(path_info: PathInfo | PathInfoParts, key: bytes) -> None:
    """Re-check a PathInfo read back from storage (the message or its parts): still valid, and stored
    under its own digest."""
    from tvixd.castore.entries import PathInfoParts
    from tvixd.castore.pathinfo import path_info_parts, validate_parts

    store_path = validate_parts(path_info if isinstance(path_info, PathInfoParts) else path_info_parts(path_info))
    if bytes(store_path.digest) != key:
        raise InvalidRequest(f"stored under {key.hex()} but its root node names {store_path}")


def check_path_info(path_info: PathInfo, blob: BlobService, directory: DirectoryService) -> bytes:
    """All put checks of ``PathInfoService.put``; returns the 20-byte key to store under.

    The pure checks are ``tvixd.castore.pathinfo.validate_path_info``; then the
    root's content must exist (a directory's closure is complete by the
    directory store's invariant): ``FailedPrecondition`` naming the digest.
    """
    from tvixd.castore.pathinfo import validate_path_info

    store_path = validate_path_info(path_info)
    kind = path_info.node.WhichOneof("node")
    if kind != "symlink":
        _check_content_present(kind, getattr(path_info.node, kind).digest, store_path, blob, directory)
    return bytes(store_path.digest)


def check_imported_root(
    root: Entry, nar_sha256: bytes, blob: BlobService, directory: DirectoryService
) -> bytes:
    """:func:`check_path_info` of an import's PathInfo (see ``PathInfoService.put_imported``), unbuilt."""
    from tvixd.castore.pathinfo import KIND_NAMES, validate_imported_root

    store_path = validate_imported_root(root, nar_sha256)
    kind = KIND_NAMES[root[0]]
    if kind != "symlink":
        _check_content_present(kind, root[2], store_path, blob, directory)
    return bytes(store_path.digest)


def _check_content_present(
    kind: str, digest: bytes, store_path: StorePath, blob: BlobService, directory: DirectoryService
) -> None:
    """The root's content must be stored: the directory (its closure complete by the directory store's
    invariant) or the blob."""
    digest = B3Digest(digest)
    if kind == "directory":
        if directory.get(digest) is None:
            raise FailedPrecondition(
                f"root directory {digest} of {store_path} is not in the store (upload the directories first)"
            )
    elif not blob.has(digest):
        raise FailedPrecondition(f"root blob {digest} of {store_path} is not in the store (upload the blob first)")


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

