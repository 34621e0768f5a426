"""PathInfo validation: the pure checks of SPEC Part B §3.4 plus tvixd's stricter Part A §5.

Part B (the reference), in its order, first failure wins:
1. with ``narinfo``, ``len(reference_names) == len(references)``;
2. a root node is set;
3. directory/file root: 32-byte digest, then a valid store path basename as name;
   symlink root: the name only.
Part A (ours), after those: every reference is a 20-byte store path digest; with
``narinfo``, ``nar_sha256`` is 32 bytes and each ``reference_names[i]`` is a valid
basename whose digest is ``references[i]``. Name limits (211 bytes) come from
:mod:`tvixd.castore.storepath`. Whether the content exists is the service's check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from tvixd.castore.digest import DIGEST_LEN
from tvixd.castore.storepath import DIGEST_SIZE, StorePath, StorePathError
from tvixd.errors import InvalidRequest

if TYPE_CHECKING:  # no protobuf at run time: validate_imported_root serves a one-file import without it
    from tvixd.castore.entries import Entry
    from tvixd.proto.castore_pb2 import DirectoryNode, FileNode, SymlinkNode
    from tvixd.proto.pathinfo_pb2 import PathInfo

NAR_SHA256_LEN = 32

ErrorKind = Literal[
    "InconsistentNumberOfReferences",
    "NoNodePresent",
    "InvalidDigestLen",
    "InvalidNodeName",
    "InvalidReferenceLen",
    "InvalidReferenceName",
    "ReferenceMismatch",
    "InvalidNarSha256Len",
]


class PathInfoValidationError(InvalidRequest):
    """A PathInfo breaks one of the rules above; ``kind`` names it (the reference's variant names)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(f"invalid PathInfo: {message}")
        self.kind = kind


def root_node(path_info: PathInfo) -> DirectoryNode | FileNode | SymlinkNode:
    """The root node set in ``path_info.node`` (directory, file or symlink)."""
    kind = path_info.node.WhichOneof("node") if path_info.HasField("node") else None
    if kind is None:
        raise PathInfoValidationError("NoNodePresent", "no root node present (path_info.node is unset)")
    return getattr(path_info.node, kind)


def validate_path_info(path_info: PathInfo) -> StorePath:
    """Check ``path_info`` (rules in the module docstring) and return the root node's store path.

    Raises :class:`PathInfoValidationError` (an ``InvalidRequest``) naming the field.
    """
    references = path_info.references
    has_narinfo = path_info.HasField("narinfo")
    narinfo = path_info.narinfo
    if has_narinfo and len(narinfo.reference_names) != len(references):
        raise PathInfoValidationError(
            "InconsistentNumberOfReferences",
            f"{len(references)} references but {len(narinfo.reference_names)} narinfo.reference_names",
        )

    node = root_node(path_info)
    kind = path_info.node.WhichOneof("node")
    store_path = _root_store_path(kind, node.name, b"" if kind == "symlink" else node.digest)

    for i, reference in enumerate(references):
        if len(reference) != DIGEST_SIZE:
            raise PathInfoValidationError(
                "InvalidReferenceLen",
                f"references[{i}] is {len(reference)} bytes, expected a {DIGEST_SIZE}-byte store path digest",
            )
    if has_narinfo:
        _check_nar_sha256(narinfo.nar_sha256)
        for i, (name, reference) in enumerate(zip(narinfo.reference_names, references, strict=True)):
            try:
                ref_path = StorePath.from_basename(name)
            except StorePathError as exc:
                raise PathInfoValidationError(
                    "InvalidReferenceName", f"narinfo.reference_names[{i}] is not a store path basename: {exc}"
                ) from None
            if ref_path.digest != reference:
                raise PathInfoValidationError(
                    "ReferenceMismatch",
                    f"narinfo.reference_names[{i}] {name!r} has digest {ref_path.digest.hex()}, "
                    f"but references[{i}] is {reference.hex()}",
                )
    return store_path


KIND_NAMES = ("directory", "file", "symlink")
"""The Node field of each entry kind (``tvixd.castore.entries`` DIRECTORY, FILE, SYMLINK)."""


def validate_imported_root(root: Entry, nar_sha256: bytes) -> StorePath:
    """:func:`validate_path_info` of the PathInfo an import makes (root ``root``, no references, a
    narinfo of the NAR's size and ``nar_sha256``), without building it: the same checks and errors."""
    kind = KIND_NAMES[root[0]]
    store_path = _root_store_path(kind, root[1], b"" if kind == "symlink" else root[2])
    _check_nar_sha256(nar_sha256)
    return store_path


def _root_store_path(kind: str, name: bytes, digest: bytes) -> StorePath:
    """Rule 3: a directory or file root's digest is 32 bytes; the root's name is a store path basename."""
    if kind != "symlink" and len(digest) != DIGEST_LEN:
        raise PathInfoValidationError(
            "InvalidDigestLen", f"node.{kind}.digest is {len(digest)} bytes, expected {DIGEST_LEN}"
        )
    try:
        return StorePath.from_basename(name)
    except StorePathError as exc:
        raise PathInfoValidationError("InvalidNodeName", f"node.{kind}.name: {exc}") from None


def _check_nar_sha256(nar_sha256: bytes) -> None:
    if len(nar_sha256) != NAR_SHA256_LEN:
        raise PathInfoValidationError(
            "InvalidNarSha256Len", f"narinfo.nar_sha256 is {len(nar_sha256)} bytes, expected {NAR_SHA256_LEN}"
        )
