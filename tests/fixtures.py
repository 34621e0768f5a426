"""The reference's test fixtures (SPEC Part B §5.6), shared by every test module."""

from __future__ import annotations

from tvixd.castore.digest import B3Digest
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode

HELLOWORLD_BLOB = b"Hello World!"
HELLOWORLD_DIGEST = B3Digest(bytes.fromhex("5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"))
EMPTY_BLOB = b""
EMPTY_DIGEST = B3Digest(bytes.fromhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"))
BLOB_A = b"\x00\x01"
BLOB_A_DIGEST = B3Digest(bytes.fromhex("7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63"))
BLOB_B = bytes(range(255)) * 4096
BLOB_B_DIGEST = B3Digest(bytes.fromhex("a82c5154a7a0c262c6fdb929a317585646f8fbcf80326d0a7b8747edaf2d99d2"))

DUMMY_DIGEST = bytes(32)
DUMMY_OUTPUT_HASH = bytes(20)

DIRECTORY_WITH_KEEP = Directory(files=[FileNode(name=b".keep", digest=EMPTY_DIGEST, size=0)])
DIRECTORY_WITH_KEEP_DIGEST = B3Digest(
    bytes.fromhex("8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e")
)
DIRECTORY_COMPLICATED = Directory(
    directories=[DirectoryNode(name=b"keep", digest=DIRECTORY_WITH_KEEP_DIGEST, size=1)],
    files=[FileNode(name=b".keep", digest=EMPTY_DIGEST, size=0)],
    symlinks=[SymlinkNode(name=b"aa", target=b"/nix/store/somewhereelse")],
)
DIRECTORY_COMPLICATED_DIGEST = B3Digest(
    bytes.fromhex("3f951a15afd586fb3121ef4d13d582e811ce0e5a7f21c0497fd87490e9e2355a")
)
DIRECTORY_A = Directory()
DIRECTORY_A_DIGEST = EMPTY_DIGEST
DIRECTORY_B = Directory(directories=[DirectoryNode(name=b"a", digest=DIRECTORY_A_DIGEST, size=0)])
DIRECTORY_B_DIGEST = B3Digest(bytes.fromhex("8701f4722d8dae7f2c40fa003331b8437a3825f9e1bfd3a77998c64cc226b9cc"))
DIRECTORY_C = Directory(
    directories=[
        DirectoryNode(name=b"a", digest=DIRECTORY_A_DIGEST, size=0),
        DirectoryNode(name=b"a'", digest=DIRECTORY_A_DIGEST, size=0),
    ]
)
DIRECTORY_C_DIGEST = B3Digest(bytes.fromhex("78eb200ae0cc95d4ea954655fbcf91e285013a261310e161927f2401d2bca803"))


def _nar_str(b: bytes) -> bytes:
    return len(b).to_bytes(8, "little") + b + b"\0" * (-len(b) % 8)


def _nar(*tokens: bytes) -> bytes:
    return b"".join(_nar_str(t) for t in tokens)


# Built independently of tvixd's NAR writer, straight from the grammar (SPEC §5.2).
NAR_CONTENTS_SYMLINK = _nar(b"nix-archive-1", b"(", b"type", b"symlink", b"target",
                            b"/nix/store/somewhereelse", b")")
NAR_CONTENTS_HELLOWORLD = _nar(b"nix-archive-1", b"(", b"type", b"regular", b"contents",
                               HELLOWORLD_BLOB, b")")
NAR_CONTENTS_COMPLICATED = _nar(
    b"nix-archive-1", b"(", b"type", b"directory",
    b"entry", b"(", b"name", b".keep", b"node", b"(", b"type", b"regular", b"contents", b"", b")", b")",
    b"entry", b"(", b"name", b"aa", b"node", b"(", b"type", b"symlink", b"target",
    b"/nix/store/somewhereelse", b")", b")",
    b"entry", b"(", b"name", b"keep", b"node", b"(", b"type", b"directory",
    b"entry", b"(", b"name", b".keep", b"node", b"(", b"type", b"regular", b"contents", b"", b")", b")",
    b")", b")",
    b")",
)  # fmt: skip
