"""PathInfo validation: SPEC Part B §3.4 / §10.3 vectors, then the Part A §5 additions."""

from __future__ import annotations

import pytest

from tests.fixtures import DUMMY_DIGEST, DUMMY_OUTPUT_HASH
from tvixd.castore.pathinfo import PathInfoValidationError, root_node, validate_path_info
from tvixd.castore.storepath import StorePath, build_nar_based_store_path
from tvixd.errors import InvalidRequest
from tvixd.proto.castore_pb2 import DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import NARInfo, Node, PathInfo

DUMMY_NAME = b"00000000000000000000000000000000-dummy"
DUMMY_PATH = StorePath(DUMMY_OUTPUT_HASH, "dummy")
NAR_SHA256 = bytes(range(32))


def kind_of(pi: PathInfo) -> str:
    with pytest.raises(PathInfoValidationError) as info:
        validate_path_info(pi)
    assert isinstance(info.value, InvalidRequest)
    return info.value.kind


# --- §10.3 ------------------------------------------------------------------------------------------


def test_validate_no_node() -> None:
    assert kind_of(PathInfo()) == "NoNodePresent"
    assert kind_of(PathInfo(node=Node())) == "NoNodePresent"
    with pytest.raises(PathInfoValidationError, match="no root node"):
        root_node(PathInfo(node=Node()))


@pytest.mark.parametrize("make", [DirectoryNode, FileNode])
def test_validate_directory_and_file(make: type) -> None:
    field = "directory" if make is DirectoryNode else "file"
    ok = PathInfo(node=Node(**{field: make(name=DUMMY_NAME, digest=DUMMY_DIGEST, size=0)}))
    sp = validate_path_info(ok)
    assert sp == DUMMY_PATH
    assert sp.digest == bytes(20)
    assert sp.name == "dummy"
    assert root_node(ok) == make(name=DUMMY_NAME, digest=DUMMY_DIGEST)

    empty_digest = PathInfo(node=Node(**{field: make(name=DUMMY_NAME, digest=b"")}))
    with pytest.raises(PathInfoValidationError, match=f"node.{field}.digest is 0 bytes"):
        validate_path_info(empty_digest)
    assert kind_of(empty_digest) == "InvalidDigestLen"

    bad_name = PathInfo(node=Node(**{field: make(name=b"invalid", digest=DUMMY_DIGEST)}))
    assert kind_of(bad_name) == "InvalidNodeName"
    with pytest.raises(PathInfoValidationError, match=f"node.{field}.name: invalid store path 'invalid'"):
        validate_path_info(bad_name)

    # digest length is checked before the name
    assert kind_of(PathInfo(node=Node(**{field: make(name=b"invalid", digest=b"\x01")}))) == "InvalidDigestLen"


def test_validate_symlink() -> None:
    ok = PathInfo(node=Node(symlink=SymlinkNode(name=DUMMY_NAME, target=b"foo")))
    assert validate_path_info(ok) == DUMMY_PATH
    assert root_node(ok).target == b"foo"
    assert kind_of(PathInfo(node=Node(symlink=SymlinkNode(name=b"invalid", target=b"foo")))) == "InvalidNodeName"
    # the target is not checked, and symlinks have no digest to check
    assert validate_path_info(PathInfo(node=Node(symlink=SymlinkNode(name=DUMMY_NAME)))) == DUMMY_PATH


def dir_root(**kwargs: object) -> PathInfo:
    return PathInfo(node=Node(directory=DirectoryNode(name=DUMMY_NAME, digest=DUMMY_DIGEST, size=0)), **kwargs)


def test_validate_references_reference_vectors() -> None:
    """§10.3 validate_references, as Part A changes it: references must be 20-byte digests
    and reference_names basenames (the reference accepted a 32-byte reference and an absolute name)."""
    assert kind_of(dir_root(references=[DUMMY_DIGEST])) == "InvalidReferenceLen"
    assert validate_path_info(dir_root(references=[DUMMY_OUTPUT_HASH])) == DUMMY_PATH
    assert (
        kind_of(dir_root(references=[DUMMY_OUTPUT_HASH], narinfo=NARInfo(nar_sha256=NAR_SHA256)))
        == "InconsistentNumberOfReferences"
    )
    good = dir_root(
        references=[DUMMY_OUTPUT_HASH],
        narinfo=NARInfo(nar_size=1, nar_sha256=NAR_SHA256, reference_names=[DUMMY_NAME.decode()]),
    )
    assert validate_path_info(good) == DUMMY_PATH
    absolute = dir_root(
        references=[DUMMY_OUTPUT_HASH],
        narinfo=NARInfo(nar_sha256=NAR_SHA256, reference_names=["/nix/store/" + DUMMY_NAME.decode()]),
    )
    assert kind_of(absolute) == "InvalidReferenceName"


def test_inconsistent_number_message_names_both_counts() -> None:
    pi = dir_root(references=[DUMMY_OUTPUT_HASH] * 3, narinfo=NARInfo(nar_sha256=NAR_SHA256, reference_names=["a"]))
    with pytest.raises(PathInfoValidationError, match=r"3 references but 1 narinfo\.reference_names"):
        validate_path_info(pi)


def test_order_inconsistent_count_before_node() -> None:
    pi = PathInfo(references=[b"x"], narinfo=NARInfo())
    assert kind_of(pi) == "InconsistentNumberOfReferences"
    assert kind_of(PathInfo(references=[b"x"])) == "NoNodePresent"


def test_order_node_before_part_a_checks() -> None:
    pi = PathInfo(
        node=Node(file=FileNode(name=b"invalid", digest=DUMMY_DIGEST)),
        references=[b"short"],
        narinfo=NARInfo(nar_sha256=b"", reference_names=["bad"]),
    )
    assert kind_of(pi) == "InvalidNodeName"


# --- Part A §5 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 19, 21, 32])
def test_reference_length(length: int) -> None:
    pi = dir_root(references=[DUMMY_OUTPUT_HASH, bytes(length)])
    with pytest.raises(PathInfoValidationError, match=rf"references\[1\] is {length} bytes, expected a 20-byte"):
        validate_path_info(pi)


@pytest.mark.parametrize("length", [0, 20, 31, 33, 64])
def test_nar_sha256_length(length: int) -> None:
    pi = dir_root(narinfo=NARInfo(nar_size=96, nar_sha256=bytes(length)))
    assert kind_of(pi) == "InvalidNarSha256Len"
    with pytest.raises(PathInfoValidationError, match=rf"narinfo\.nar_sha256 is {length} bytes, expected 32"):
        validate_path_info(pi)


def test_nar_sha256_not_required_without_narinfo() -> None:
    assert validate_path_info(dir_root()) == DUMMY_PATH


def test_reference_names_must_match_references_in_order() -> None:
    a = build_nar_based_store_path(bytes(32), "a")
    b = build_nar_based_store_path(bytes(range(32)), "b")
    ok = dir_root(
        references=[a.digest, b.digest], narinfo=NARInfo(nar_sha256=NAR_SHA256, reference_names=[str(a), str(b)])
    )
    assert validate_path_info(ok) == DUMMY_PATH
    swapped = dir_root(
        references=[a.digest, b.digest], narinfo=NARInfo(nar_sha256=NAR_SHA256, reference_names=[str(b), str(a)])
    )
    assert kind_of(swapped) == "ReferenceMismatch"
    with pytest.raises(PathInfoValidationError, match=r"narinfo.reference_names\[0\] .* references\[0\] is"):
        validate_path_info(swapped)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "dummy",
        "/nix/store/00000000000000000000000000000000-dummy",
        "00000000000000000000000000000000-dummy/bin",
        "00000000000000000000000000000000-.dummy",
        "0000000000000000000000000000000u-dummy",
        "00000000000000000000000000000000-" + "d" * 212,
    ],
)
def test_reference_names_must_be_valid_basenames(name: str) -> None:
    pi = dir_root(references=[DUMMY_OUTPUT_HASH], narinfo=NARInfo(nar_sha256=NAR_SHA256, reference_names=[name]))
    assert kind_of(pi) == "InvalidReferenceName"


def test_root_name_length_limit() -> None:
    ok = PathInfo(node=Node(symlink=SymlinkNode(name=b"0" * 32 + b"-" + b"n" * 211, target=b"x")))
    assert validate_path_info(ok).name == "n" * 211
    too_long = PathInfo(node=Node(symlink=SymlinkNode(name=b"0" * 32 + b"-" + b"n" * 212, target=b"x")))
    assert kind_of(too_long) == "InvalidNodeName"
    with pytest.raises(PathInfoValidationError, match="longer than 211"):
        validate_path_info(too_long)


def test_root_node_kinds() -> None:
    f = FileNode(name=DUMMY_NAME, digest=DUMMY_DIGEST, size=3, executable=True)
    assert root_node(PathInfo(node=Node(file=f))) == f
    d = DirectoryNode(name=DUMMY_NAME, digest=DUMMY_DIGEST, size=5)
    assert root_node(PathInfo(node=Node(directory=d))) == d
