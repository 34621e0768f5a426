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
from tvixd.castore.entries import UINT32_MAX
from tvixd.castore.storepath import DIGEST_SIZE, StorePath, StorePathError
from tvixd.errors import InvalidRequest

if TYPE_CHECKING:  # no protobuf at run time: validate_parts serves a one-file import and `path-info` without it
    from tvixd.castore.entries import PathInfoParts
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
    "InvalidNodeSize",
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
        raise _no_root_node()
    return getattr(path_info.node, kind)


def validate_path_info(path_info: PathInfo) -> StorePath:
    """Check ``path_info`` (rules in the module docstring) and return the root node's store path.

    Raises :class:`PathInfoValidationError` (an ``InvalidRequest``) naming the field.
    """
    return validate_parts(path_info_parts(path_info))


def path_info_parts(path_info: PathInfo) -> PathInfoParts:
    """The plain values of ``path_info`` (see ``tvixd.castore.entries.PathInfoParts``)."""
    from tvixd.castore.entries import PathInfoParts, node_entry

    kind = path_info.node.WhichOneof("node") if path_info.HasField("node") else None
    root = None if kind is None else node_entry(getattr(path_info.node, kind))
    narinfo = None
    if path_info.HasField("narinfo"):
        n = path_info.narinfo
        narinfo = (n.nar_size, n.nar_sha256, list(n.reference_names))
    return PathInfoParts(root, list(path_info.references), narinfo)


_KIND_NAMES = ("directory", "file", "symlink")
"""The Node field of each entry kind (``tvixd.castore.entries`` DIRECTORY, FILE, SYMLINK)."""


def validate_parts(parts: PathInfoParts) -> StorePath:
    """:func:`validate_path_info` of a PathInfo's plain values (a row read without protobuf, an import's)."""
    root, references, narinfo = parts
    if narinfo is not None and len(narinfo[2]) != len(references):
        raise PathInfoValidationError(
            "InconsistentNumberOfReferences",
            f"{len(references)} references but {len(narinfo[2])} narinfo.reference_names",
        )
    if root is None:
        raise _no_root_node()
    kind = _KIND_NAMES[root[0]]
    if kind != "symlink" and len(root[2]) != DIGEST_LEN:
        raise PathInfoValidationError(
            "InvalidDigestLen", f"node.{kind}.digest is {len(root[2])} bytes, expected {DIGEST_LEN}"
        )
    if kind != "symlink" and not 0 <= root[3] <= UINT32_MAX:  # only entries can: a message's size is a uint32
        raise PathInfoValidationError("InvalidNodeSize", f"node.{kind}.size {root[3]} is not a uint32")
    try:
        store_path = StorePath.from_basename(root[1])
    except StorePathError as exc:
        raise PathInfoValidationError("InvalidNodeName", f"node.{kind}.name: {exc}") from None

    for i, reference in enumerate(references):
        if len(reference) != DIGEST_SIZE:
            raise PathInfoValidationError(
                "InvalidReferenceLen",
                f"references[{i}] is {len(reference)} bytes, expected a {DIGEST_SIZE}-byte store path digest",
            )
    if narinfo is not None:
        _, nar_sha256, reference_names = narinfo
        if len(nar_sha256) != NAR_SHA256_LEN:
            raise PathInfoValidationError(
                "InvalidNarSha256Len", f"narinfo.nar_sha256 is {len(nar_sha256)} bytes, expected {NAR_SHA256_LEN}"
            )
        for i, (name, reference) in enumerate(zip(reference_names, references, strict=True)):
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


def _no_root_node() -> PathInfoValidationError:
    return PathInfoValidationError("NoNodePresent", "no root node present (path_info.node is unset)")
