"""Directory validation, canonical encoding, digest, size and merged child order
(SPEC Part B §1.4, §3.1-§3.3, §5.5, §5.6; test inventory §10.1, §10.2, §10.14)."""

from __future__ import annotations

import base64

import blake3
import pytest

from tests.fixtures import (
    DIRECTORY_A,
    DIRECTORY_A_DIGEST,
    DIRECTORY_B,
    DIRECTORY_B_DIGEST,
    DIRECTORY_C,
    DIRECTORY_C_DIGEST,
    DIRECTORY_COMPLICATED,
    DIRECTORY_COMPLICATED_DIGEST,
    DIRECTORY_WITH_KEEP,
    DIRECTORY_WITH_KEEP_DIGEST,
    DUMMY_DIGEST,
    EMPTY_DIGEST,
)
from tvixd.castore.digest import B3Digest
from tvixd.castore.directory import (
    canonical_bytes,
    directory_digest,
    directory_nodes,
    directory_size,
    validate_directory,
)
from tvixd.castore.entries import DirectoryValidationError
from tvixd.errors import InvalidRequest
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode

# --- the fixtures of §5.6: encoding, digest (hex and base64), size -------------------------------------

FIXTURES = [
    (
        "DIRECTORY_WITH_KEEP",
        DIRECTORY_WITH_KEEP,
        "12290a052e6b6565701220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e",
        "i1tdZCtka7jtUEsIYsOUE+h+V0kUl9570HWVP3uDgQ4=",
        1,
    ),
    (
        "DIRECTORY_COMPLICATED",
        DIRECTORY_COMPLICATED,
        "0a2a0a046b65657012208b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e180112290a052e6b65"
        "65701220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f32621a1e0a02616112182f6e69782f7374"
        "6f72652f736f6d657768657265656c7365",
        "3f951a15afd586fb3121ef4d13d582e811ce0e5a7f21c0497fd87490e9e2355a",
        "P5UaFa/VhvsxIe9NE9WC6BHODlp/IcBJf9h0kOniNVo=",
        4,
    ),
    (
        "DIRECTORY_A",
        DIRECTORY_A,
        "",
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        "rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI=",
        0,
    ),
    (
        "DIRECTORY_B",
        DIRECTORY_B,
        "0a250a01611220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        "8701f4722d8dae7f2c40fa003331b8437a3825f9e1bfd3a77998c64cc226b9cc",
        "hwH0ci2Nrn8sQPoAMzG4Q3o4Jfnhv9OneZjGTMImucw=",
        1,
    ),
    (
        "DIRECTORY_C",
        DIRECTORY_C,
        "0a250a01611220af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f32620a260a0261271220af1349b9"
        "f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        "78eb200ae0cc95d4ea954655fbcf91e285013a261310e161927f2401d2bca803",
        "eOsgCuDMldTqlUZV+8+R4oUBOiYTEOFhkn8kAdK8qAM=",
        2,
    ),
]


@pytest.mark.parametrize(
    ("label", "directory", "encoding", "digest", "b64", "size"), FIXTURES, ids=[f[0] for f in FIXTURES]
)
def test_fixture(label: str, directory: Directory, encoding: str, digest: str, b64: str, size: int) -> None:
    d = Directory()
    d.CopyFrom(directory)
    validate_directory(d)
    assert canonical_bytes(d).hex() == encoding
    assert directory_digest(d) == bytes.fromhex(digest)
    assert base64.b64encode(directory_digest(d)).decode() == b64
    assert str(directory_digest(d)) == "b3:" + b64
    assert isinstance(directory_digest(d), B3Digest)
    assert blake3.blake3(bytes.fromhex(encoding)).hexdigest() == digest
    assert directory_size(d) == size


def test_fixture_digest_constants() -> None:
    assert directory_digest(DIRECTORY_WITH_KEEP) == DIRECTORY_WITH_KEEP_DIGEST
    assert directory_digest(DIRECTORY_COMPLICATED) == DIRECTORY_COMPLICATED_DIGEST
    assert directory_digest(DIRECTORY_A) == DIRECTORY_A_DIGEST == EMPTY_DIGEST
    assert directory_digest(DIRECTORY_B) == DIRECTORY_B_DIGEST
    assert directory_digest(DIRECTORY_C) == DIRECTORY_C_DIGEST


def test_encoding_parses_back() -> None:
    for _, directory, encoding, _digest, _b64, _size in FIXTURES:
        parsed = Directory.FromString(bytes.fromhex(encoding))
        assert parsed == directory


# --- §1.4: canonical encoding, unknown fields dropped before hashing --------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    """A protobuf field, encoded by hand (independent of the protobuf library)."""
    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def test_unknown_top_level_field_discarded_before_hashing() -> None:
    clean = canonical_bytes(DIRECTORY_COMPLICATED)
    raw = clean + field(4, 2, b"extra bytes") + field(99, 0, varint(12345))
    received = Directory.FromString(raw)
    assert received.SerializeToString(deterministic=True) != clean  # Python keeps and re-emits them
    assert directory_digest(received) == DIRECTORY_COMPLICATED_DIGEST
    assert canonical_bytes(received) == clean


def test_unknown_fields_in_child_nodes_discarded_before_hashing() -> None:
    keep = field(1, 2, b"keep") + field(2, 2, DIRECTORY_WITH_KEEP_DIGEST) + field(3, 0, varint(1))
    dot_keep = field(1, 2, b".keep") + field(2, 2, EMPTY_DIGEST) + field(7, 2, b"unknown in FileNode")
    aa = field(1, 2, b"aa") + field(2, 2, b"/nix/store/somewhereelse") + field(3, 0, varint(1))
    raw = field(1, 2, keep + field(9, 5, b"\0\0\0\0")) + field(2, 2, dot_keep) + field(3, 2, aa)
    received = Directory.FromString(raw)
    validate_directory(received)
    assert directory_digest(received) == DIRECTORY_COMPLICATED_DIGEST
    assert directory_size(received) == 4


def test_non_canonical_field_order_and_explicit_defaults() -> None:
    """Input with symlinks first and explicit zero/false values re-encodes to the canonical bytes."""
    dot_keep = field(1, 2, b".keep") + field(2, 2, EMPTY_DIGEST) + field(3, 0, varint(0)) + field(4, 0, b"\x00")
    keep = field(3, 0, varint(1)) + field(2, 2, DIRECTORY_WITH_KEEP_DIGEST) + field(1, 2, b"keep")
    aa = field(2, 2, b"/nix/store/somewhereelse") + field(1, 2, b"aa")
    raw = field(3, 2, aa) + field(2, 2, dot_keep) + field(1, 2, keep)
    assert directory_digest(Directory.FromString(raw)) == DIRECTORY_COMPLICATED_DIGEST


def test_executable_changes_the_digest() -> None:
    d = Directory(files=[FileNode(name=b".keep", digest=EMPTY_DIGEST, size=0, executable=True)])
    assert canonical_bytes(d).hex().endswith("2001")
    assert directory_digest(d) != DIRECTORY_WITH_KEEP_DIGEST


# --- §10.1 / §10.14: size, digest, validation --------------------------------------------------------


def test_size() -> None:
    assert directory_size(Directory()) == 0
    assert directory_size(Directory(directories=[DirectoryNode(name=b"foo", digest=DUMMY_DIGEST, size=0)])) == 1
    assert directory_size(Directory(directories=[DirectoryNode(name=b"foo", digest=DUMMY_DIGEST, size=4)])) == 5
    assert directory_size(Directory(files=[FileNode(name=b"foo", digest=DUMMY_DIGEST, size=42)])) == 1
    assert directory_size(Directory(symlinks=[SymlinkNode(name=b"foo", target=b"bar")])) == 1


def test_size_overflow_is_an_error_not_a_wrap() -> None:
    d = Directory(directories=[DirectoryNode(name=b"a", digest=DUMMY_DIGEST, size=2**32 - 1)])
    with pytest.raises(InvalidRequest, match="does not fit in uint32"):
        directory_size(d)
    ok = Directory(directories=[DirectoryNode(name=b"a", digest=DUMMY_DIGEST, size=2**32 - 2)])
    assert directory_size(ok) == 2**32 - 1


def test_digest_of_empty() -> None:
    assert directory_digest(Directory()).hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_validate_empty() -> None:
    validate_directory(Directory())


@pytest.mark.parametrize(
    "directory",
    [
        Directory(directories=[DirectoryNode(name=b"", digest=DUMMY_DIGEST, size=42)]),
        Directory(directories=[DirectoryNode(name=b".", digest=DUMMY_DIGEST, size=42)]),
        Directory(files=[FileNode(name=b"..", digest=DUMMY_DIGEST, size=42)]),
        Directory(symlinks=[SymlinkNode(name=b"\x00", target=b"foo")]),
        Directory(symlinks=[SymlinkNode(name=b"foo/bar", target=b"foo")]),
        Directory(files=[FileNode(name=b"/", digest=DUMMY_DIGEST)]),
        Directory(files=[FileNode(name=b"a\x00b", digest=DUMMY_DIGEST)]),
    ],
)
def test_validate_invalid_names(directory: Directory) -> None:
    with pytest.raises(DirectoryValidationError, match="invalid name") as info:
        validate_directory(directory)
    assert isinstance(info.value, InvalidRequest)


@pytest.mark.parametrize("length", [0, 2, 31, 33])
def test_validate_invalid_digest(length: int) -> None:
    for d in (
        Directory(directories=[DirectoryNode(name=b"foo", digest=bytes(length), size=42)]),
        Directory(files=[FileNode(name=b"foo", digest=bytes(length), size=42)]),
    ):
        with pytest.raises(DirectoryValidationError, match=f"invalid digest length {length}"):
            validate_directory(d)


def test_validate_invalid_digest_nil() -> None:
    """Go helper: a node without a digest at all."""
    with pytest.raises(DirectoryValidationError, match="invalid digest length 0"):
        validate_directory(Directory(directories=[DirectoryNode(name=b"foo")]))


def test_name_checked_before_digest() -> None:
    with pytest.raises(DirectoryValidationError, match="invalid name"):
        validate_directory(Directory(files=[FileNode(name=b"", digest=b"")]))


def test_symlink_targets_unchecked() -> None:
    for target in (b"", b"\x00", b"a/../..", b"x" * 10000):
        validate_directory(Directory(symlinks=[SymlinkNode(name=b"l", target=target)]))


def test_unusual_valid_names() -> None:
    validate_directory(
        Directory(
            files=[
                FileNode(name=b"...", digest=DUMMY_DIGEST),
                FileNode(name=b".keep", digest=DUMMY_DIGEST),
                FileNode(name=b"a b", digest=DUMMY_DIGEST),
                FileNode(name=b"\xff", digest=DUMMY_DIGEST),
            ]
        )
    )


def dirs(*names: bytes) -> list[DirectoryNode]:
    return [DirectoryNode(name=n, digest=DUMMY_DIGEST, size=42) for n in names]


def test_validate_sorting() -> None:
    with pytest.raises(DirectoryValidationError, match="'a' is not sorted"):
        validate_directory(Directory(directories=dirs(b"b", b"a")))
    with pytest.raises(DirectoryValidationError, match="'a' is a duplicate name"):
        validate_directory(Directory(directories=dirs(b"a", b"a")))
    validate_directory(Directory(directories=dirs(b"a", b"b")))
    validate_directory(Directory(directories=dirs(b"b", b"c"), symlinks=[SymlinkNode(name=b"a", target=b"foo")]))


def test_validate_sorting_is_bytewise() -> None:
    validate_directory(Directory(directories=dirs(b"B", b"a", b"\xc3\xa9")))
    with pytest.raises(DirectoryValidationError, match="not sorted"):
        validate_directory(Directory(directories=dirs(b"a", b"B")))
    validate_directory(Directory(directories=dirs(b"a", b"a'")))  # DIRECTORY_C's names: prefix first


def test_duplicate_across_lists() -> None:
    with pytest.raises(DirectoryValidationError, match="'a' is a duplicate name"):
        validate_directory(Directory(directories=dirs(b"a"), files=[FileNode(name=b"a", digest=DUMMY_DIGEST, size=1)]))
    with pytest.raises(DirectoryValidationError, match="duplicate"):
        validate_directory(
            Directory(files=[FileNode(name=b"x", digest=DUMMY_DIGEST)], symlinks=[SymlinkNode(name=b"x")])
        )


def test_first_failure_wins_in_list_order() -> None:
    """Directories are checked before files, files before symlinks."""
    d = Directory(
        directories=dirs(b"b", b"a"),
        files=[FileNode(name=b"", digest=DUMMY_DIGEST)],
        symlinks=[SymlinkNode(name=b"/")],
    )
    with pytest.raises(DirectoryValidationError, match="not sorted"):
        validate_directory(d)
    d = Directory(files=[FileNode(name=b"f", digest=b"")], symlinks=[SymlinkNode(name=b"/")])
    with pytest.raises(DirectoryValidationError, match="digest"):
        validate_directory(d)


def test_non_utf8_name_shown_as_base64() -> None:
    with pytest.raises(DirectoryValidationError, match=r"base64:/w==") as info:
        validate_directory(Directory(directories=dirs(b"\xff\xff", b"\xff")))
    assert "not sorted" in str(info.value)


# --- §5.5 / §10.2: merged child order ----------------------------------------------------------------


def test_nodes_iterator() -> None:
    d = Directory(
        directories=dirs(b"c", b"d", b"h", b"l"),
        files=[FileNode(name=n, digest=DUMMY_DIGEST) for n in (b"b", b"e", b"g", b"j")],
        symlinks=[SymlinkNode(name=n, target=b"x") for n in (b"a", b"f", b"i", b"k")],
    )
    assert [n.name for n in directory_nodes(d)] == [bytes([c]) for c in b"abcdefghijkl"]


def test_nodes_complicated() -> None:
    nodes = list(directory_nodes(DIRECTORY_COMPLICATED))
    assert [(type(n).__name__, n.name) for n in nodes] == [
        ("FileNode", b".keep"),
        ("SymlinkNode", b"aa"),
        ("DirectoryNode", b"keep"),
    ]


def test_nodes_empty_and_single_lists() -> None:
    assert list(directory_nodes(Directory())) == []
    assert [n.name for n in directory_nodes(Directory(symlinks=[SymlinkNode(name=b"z")]))] == [b"z"]
    assert [n.name for n in directory_nodes(DIRECTORY_C)] == [b"a", b"a'"]


def test_nodes_tie_rule_for_invalid_input() -> None:
    """§5.5's selection rule on equal names: directories need to be strictly smaller than files and
    symlinks, files strictly smaller than symlinks; otherwise the later list wins."""
    d = Directory(
        directories=[DirectoryNode(name=b"x", digest=DUMMY_DIGEST)],
        files=[FileNode(name=b"x", digest=DUMMY_DIGEST)],
        symlinks=[SymlinkNode(name=b"x")],
    )
    assert [type(n).__name__ for n in directory_nodes(d)] == ["SymlinkNode", "FileNode", "DirectoryNode"]
    d = Directory(directories=[DirectoryNode(name=b"x", digest=DUMMY_DIGEST)], files=[FileNode(name=b"x")])
    assert [type(n).__name__ for n in directory_nodes(d)] == ["FileNode", "DirectoryNode"]
    d = Directory(directories=[DirectoryNode(name=b"x", digest=DUMMY_DIGEST)], symlinks=[SymlinkNode(name=b"x")])
    assert [type(n).__name__ for n in directory_nodes(d)] == ["SymlinkNode", "DirectoryNode"]


def _selection_rule_order(d: Directory) -> list[tuple[str, bytes]]:
    """§5.5 stated directly: take the head of the lists each step; a directory goes first only when its name is
    strictly smaller than the file's and the symlink's, a file only when strictly smaller than the symlink's."""
    heads = [list(d.directories), list(d.files), list(d.symlinks)]
    out = []
    while any(heads):
        dn, fn, sn = (h[0].name if h else None for h in heads)
        if dn is not None and (fn is None or dn < fn) and (sn is None or dn < sn):
            pick = 0
        elif fn is not None and (sn is None or fn < sn) and not (dn is not None and dn < fn):
            pick = 1
        else:
            pick = 2
        node = heads[pick].pop(0)
        out.append((type(node).__name__, node.name))
    return out


def test_nodes_follow_the_selection_rule_for_any_input() -> None:
    """Random directories, also unsorted or with names repeated across lists (single-kind ones included: they
    are returned as the list itself)."""
    import random

    rnd = random.Random(5)
    for _ in range(3000):
        def names() -> list[bytes]:
            found = [bytes([rnd.choice(b"abc")]) * rnd.randint(1, 2) for _ in range(rnd.randint(0, 4))]
            return sorted(found) if rnd.random() < 0.5 else found

        d = Directory(directories=[DirectoryNode(name=n) for n in names()],
                      files=[FileNode(name=n) for n in names()], symlinks=[SymlinkNode(name=n) for n in names()])
        assert [(type(n).__name__, n.name) for n in directory_nodes(d)] == _selection_rule_order(d), d
