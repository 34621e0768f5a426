"""tvixd.castore.entries: the protobuf-free decoder agrees with protobuf on canonical bytes and refuses the rest."""

from __future__ import annotations

import os
import random

import pytest

from tests.fixtures import DIRECTORY_B, DIRECTORY_C, DIRECTORY_COMPLICATED, DIRECTORY_WITH_KEEP
from tvixd.castore.directory import canonical_bytes, directory_nodes, directory_size, validate_directory
from tvixd.castore.entries import (
    DIRECTORY,
    FILE,
    SYMLINK,
    decode_directory,
    decode_path_info,
    decode_root_node,
    directory_entries,
    directory_entries_size,
    encode_directory,
    encode_imported_path_info,
    entry_node,
    merge,
    node_entry,
)
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import NARInfo, Node, PathInfo


def random_directory(rng: random.Random) -> Directory:
    """Names of 1-255 bytes (lengths past one varint byte), sizes from 0 to 2**32-1, long targets, both bits."""
    names = sorted({rng.randbytes(rng.choice([1, 5, 127, 128, 200, 255])).replace(b"/", b"a").replace(b"\0", b"b")
                    for _ in range(rng.randrange(0, 12))} - {b".", b".."})  # fmt: skip
    d = Directory()
    for name in names:
        kind, size = rng.randrange(3), rng.choice([0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1])
        if kind == 0:
            d.directories.add(name=name, digest=rng.randbytes(32), size=size)
        elif kind == 1:
            d.files.add(name=name, digest=rng.randbytes(32), size=size, executable=rng.random() < 0.5)
        else:
            d.symlinks.add(name=name, target=rng.randbytes(rng.choice([0, 1, 127, 128, 4095])))
    return d


@pytest.mark.parametrize(
    "directory", [Directory(), DIRECTORY_WITH_KEEP, DIRECTORY_B, DIRECTORY_C, DIRECTORY_COMPLICATED]
)
def test_fixtures_decode_as_protobuf_does(directory: Directory):
    assert decode_directory(canonical_bytes(Directory.FromString(directory.SerializeToString()))) == (
        directory_entries(directory)
    )


def test_random_directories_decode_as_protobuf_does():
    rng = random.Random(7)
    for _ in range(300):
        directory = random_directory(rng)
        entries = decode_directory(canonical_bytes(directory))
        assert entries == directory_entries(directory)
        assert [e[1] for e in entries] == [n.name for n in directory_nodes(directory)]  # NAR order


def test_entry_layout():
    d = Directory(
        directories=[DirectoryNode(name=b"d", digest=bytes(32), size=3)],
        files=[FileNode(name=b"f", digest=b"\1" * 32, size=5, executable=True)],
        symlinks=[SymlinkNode(name=b"s", target=b"/t")],
    )
    assert decode_directory(canonical_bytes(d)) == [
        (DIRECTORY, b"d", bytes(32), 3, False),
        (FILE, b"f", b"\1" * 32, 5, True),
        (SYMLINK, b"s", b"/t", 0, False),
    ]


def _with_unknown_field(directory: Directory) -> bytes:
    return canonical_bytes(directory) + b"\x22\x01x"  # field 4, length-delimited


@pytest.mark.parametrize(
    "data",
    [
        _with_unknown_field(DIRECTORY_COMPLICATED),
        # the files before the directories (valid protobuf, not canonical)
        canonical_bytes(Directory(files=[FileNode(name=b"f", digest=bytes(32))]))
        + canonical_bytes(Directory(directories=[DirectoryNode(name=b"d", digest=bytes(32))])),
        # size written although 0; executable written as 2; digest of 31 bytes; no name
        b"\x12\x26\x0a\x01f\x12\x20" + bytes(32) + b"\x18\x00",
        b"\x12\x26\x0a\x01f\x12\x20" + bytes(32) + b"\x20\x02",
        b"\x12\x23\x0a\x01f\x12\x1f" + bytes(31),
        b"\x12\x22\x12\x20" + bytes(32),
        # truncated: a node longer than the message, a length cut short, a varint that never ends
        canonical_bytes(DIRECTORY_COMPLICATED)[:-3],
        b"\x12",
        b"\x12\x80",
        b"\x12\x05\x0a\x80\x80\x80\x80",
        # a wire type other than length-delimited, a two-byte tag
        b"\x08\x01",
        b"\x82\x01\x00",
    ],
)
def test_anything_but_the_canonical_form_is_left_to_protobuf(data: bytes):
    assert decode_directory(data) is None


def test_root_node_of_a_path_info():
    file = FileNode(name=b"00000000000000000000000000000000-x", digest=os.urandom(32), size=2**32 - 1, executable=True)
    for node in (Node(file=file), Node(directory=DirectoryNode(name=b"n", digest=bytes(32), size=2)),
                 Node(symlink=SymlinkNode(name=b"n", target=b"t" * 300))):  # fmt: skip
        kind = node.WhichOneof("node")
        info = PathInfo(node=node, references=[bytes(20)],
                        narinfo=NARInfo(nar_size=5, nar_sha256=bytes(32), reference_names=["a"]))  # fmt: skip
        assert decode_root_node(info.SerializeToString(deterministic=True)) == node_entry(getattr(node, kind))


def _lists(directory: Directory) -> tuple[list, list, list]:
    return (
        [(DIRECTORY, n.name, n.digest, n.size, False) for n in directory.directories],
        [(FILE, n.name, n.digest, n.size, n.executable) for n in directory.files],
        [(SYMLINK, n.name, n.target, 0, False) for n in directory.symlinks],
    )


def test_directories_encode_size_and_validate_as_protobuf_does():
    """encode_directory / directory_entries_size / validate_directory_entries of a directory's entry lists:
    the canonical bytes, the size, and the same error (or none) as for the message; random directories,
    valid ones and ones broken in each way the rules name."""
    from tvixd.castore.entries import validate_directory_entries
    from tvixd.errors import InvalidRequest

    def outcome(check, *args):
        try:
            check(*args)
        except InvalidRequest as e:
            return f"{type(e).__name__}: {e}"
        return None

    rng = random.Random(17)
    broken = 0
    for i in range(400):
        directory = random_directory(rng)
        if i % 2 and (directory.directories or directory.files or directory.symlinks):
            nodes = rng.choice([x for x in (directory.directories, directory.files, directory.symlinks) if x])
            node = nodes[rng.randrange(len(nodes))]
            damage = rng.randrange(4)
            if damage == 0:
                node.name = rng.choice([b"", b".", b"..", b"a/b", b"a\0b"])
            elif damage == 1 and not hasattr(node, "target"):
                node.digest = node.digest[:31]
            elif damage == 2:
                nodes.add().CopyFrom(nodes[0])  # a duplicate, out of order unless it is the only one
            else:
                node.name = b"\xff" * 300  # sorts last: out of order unless last
        lists = _lists(directory)
        assert encode_directory(*lists) == canonical_bytes(directory)
        expected = outcome(validate_directory, directory)
        broken += expected is not None
        assert outcome(validate_directory_entries, *lists) == expected
        if expected is None:  # sizes up to 2**32-1 per child: some sums overflow uint32, refused alike
            size = outcome(directory_size, directory) or directory_size(directory)
            assert (outcome(directory_entries_size, *lists) or directory_entries_size(*lists)) == size
    assert 50 < broken < 200


def test_directory_entries_with_a_size_past_uint32_are_refused():
    """A message cannot hold such a size; entries can, and are refused naming the entry."""
    from tvixd.castore.entries import DirectoryValidationError, validate_directory_entries

    for dirs, files in (([(DIRECTORY, b"d", bytes(32), 2**32, False)], []), ([], [(FILE, b"f", bytes(32), -1, False)])):
        with pytest.raises(DirectoryValidationError, match="is not a uint32"):
            validate_directory_entries(dirs, files, [])


def test_imported_path_info_encodes_as_protobuf_does():
    """Every kind of root, names and targets across varint lengths, sizes 0 .. 2**32-1, NAR sizes past 2**32."""
    rng = random.Random(11)
    for directory in (random_directory(rng) for _ in range(60)):
        for root in directory_entries(directory):
            nar_size, nar_sha256 = rng.choice([1, 127, 128, 2**35 + 3]), rng.randbytes(32)
            info = PathInfo(node=entry_node(root), narinfo=NARInfo(nar_size=nar_size, nar_sha256=nar_sha256))
            encoded = encode_imported_path_info(root, nar_size, nar_sha256)
            assert encoded == info.SerializeToString(deterministic=True), root
            assert decode_root_node(encoded) == root  # and entry_node is node_entry's inverse
            assert node_entry(getattr(info.node, info.node.WhichOneof("node"))) == root


def test_path_infos_decode_as_protobuf_does():
    """Any root (or none), references of any length, narinfo absent, empty or full: protobuf's values."""
    from tvixd.castore.pathinfo import path_info_parts

    rng = random.Random(13)
    for directory in (random_directory(rng) for _ in range(200)):
        for root in [None, *directory_entries(directory)[:3]]:
            info = PathInfo(references=[rng.randbytes(rng.choice([0, 20, 32])) for _ in range(rng.randrange(3))])
            if root is not None and root[1]:
                info.node.CopyFrom(entry_node(root))
            if rng.random() < 0.7:
                names = [rng.choice(["a", "\u00fc" * 3, "", "x" * 200]) for _ in range(rng.randrange(3))]
                info.narinfo.CopyFrom(NARInfo(nar_size=rng.choice([0, 1, 2**40]), reference_names=names,
                                              nar_sha256=rng.choice([b"", rng.randbytes(32)])))  # fmt: skip
            assert decode_path_info(info.SerializeToString(deterministic=True)) == path_info_parts(info)


@pytest.mark.parametrize(
    "data",
    [
        PathInfo(node=Node(symlink=SymlinkNode(name=b"n"))).SerializeToString() * 2,  # twice: protobuf merges
        PathInfo(narinfo=NARInfo(nar_size=1)).SerializeToString() * 2,  # narinfo twice
        PathInfo(narinfo=NARInfo(signatures=[NARInfo.Signature(name="k", data=b"s")])).SerializeToString(),
        PathInfo(narinfo=NARInfo(reference_names=["a"])).SerializeToString()[:-1] + b"\xff",  # not UTF-8
        PathInfo(references=[b"r"]).SerializeToString() + b"\x28\x01",  # an unknown varint field
        b"\x1a\x02\x08\x00",  # nar_size 0 written out
        PathInfo(references=[b"r"], narinfo=NARInfo(nar_size=1)).SerializeToString()[::-1],  # not even protobuf
    ],
)
def test_path_info_in_another_form_is_left_to_protobuf(data: bytes):
    assert decode_path_info(data) is None


@pytest.mark.parametrize(
    "data",
    [
        PathInfo().SerializeToString(),  # no node
        PathInfo(node=Node()).SerializeToString(),  # an empty Node
        PathInfo(node=Node(symlink=SymlinkNode(name=b"n"))).SerializeToString() * 2,  # twice: protobuf merges
        PathInfo(node=Node(symlink=SymlinkNode(name=b"n"))).SerializeToString() + b"\x28\x01",  # a varint field
    ],
)
def test_root_node_left_to_protobuf(data: bytes):
    assert decode_root_node(data) is None


def test_merge_keeps_the_tie_rule_of_directory_nodes():
    """Invalid input (a name in two lists, unsorted lists) comes out in directory_nodes' order, for the
    NAR writer to refuse the same way."""
    d = Directory(
        directories=[DirectoryNode(name=b"b", digest=bytes(32)), DirectoryNode(name=b"a", digest=bytes(32))],
        files=[FileNode(name=b"b", digest=bytes(32)), FileNode(name=b"c", digest=bytes(32))],
        symlinks=[SymlinkNode(name=b"b", target=b"x"), SymlinkNode(name=b"a", target=b"y")],
    )
    expected = [node_entry(n) for n in directory_nodes(d)]
    assert directory_entries(d) == expected
    assert merge(*([node_entry(n) for n in nodes] for nodes in (d.directories, d.files, d.symlinks))) == expected
