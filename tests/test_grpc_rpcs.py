"""Every RPC of SPEC Part B §2.5 with the Part A corrections, against a real ``tvixd daemon`` subprocess.

Uses raw grpcio stubs (not tvixd's client backends), so what is checked is the
wire: status codes, messages naming the offending field/digest, stream contents.
One daemon (memory backends) serves the whole module; tests use distinct data.
"""

from __future__ import annotations

import hashlib
import os

import grpc
import pytest

from tests.daemon import start_daemon
from tests.fixtures import (
    BLOB_A,
    BLOB_A_DIGEST,
    BLOB_B,
    BLOB_B_DIGEST,
    DIRECTORY_A,
    DIRECTORY_A_DIGEST,
    DIRECTORY_B,
    DIRECTORY_B_DIGEST,
    DIRECTORY_C,
    DIRECTORY_C_DIGEST,
    EMPTY_DIGEST,
    HELLOWORLD_BLOB,
    HELLOWORLD_DIGEST,
    NAR_CONTENTS_HELLOWORLD,
    NAR_CONTENTS_SYMLINK,
)
from tvixd.castore.digest import B3Digest
from tvixd.castore.directory import directory_digest
from tvixd.proto import rpc_blobstore_pb2_grpc, rpc_directory_pb2_grpc, rpc_pathinfo_pb2_grpc
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import NARInfo, Node, PathInfo
from tvixd.proto.rpc_blobstore_pb2 import BlobChunk, ReadBlobRequest, StatBlobRequest
from tvixd.proto.rpc_directory_pb2 import GetDirectoryRequest
from tvixd.proto.rpc_pathinfo_pb2 import GetPathInfoRequest, ListPathInfoRequest
from tvixd.server.servicers import READ_CHUNK_SIZE

MEMORY = ("--blob-service-addr", "memory://", "--directory-service-addr", "memory://",
          "--path-info-service-addr", "memory://")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with start_daemon(tmp_path_factory.mktemp("rpcs"), *MEMORY, "--max-message-size", "1MiB") as d:
        yield d


@pytest.fixture(scope="module")
def channel(daemon):
    with grpc.insecure_channel(daemon.target) as ch:
        yield ch


@pytest.fixture
def blobs(channel):
    return rpc_blobstore_pb2_grpc.BlobServiceStub(channel)


@pytest.fixture
def dirs(channel):
    return rpc_directory_pb2_grpc.DirectoryServiceStub(channel)


@pytest.fixture
def pathinfos(channel):
    return rpc_pathinfo_pb2_grpc.PathInfoServiceStub(channel)


def fails(code: grpc.StatusCode, fn, *args, match: str | None = None) -> str:
    """Call ``fn`` (draining a stream) and return the details of the expected failure."""
    with pytest.raises(grpc.RpcError) as e:
        result = fn(*args)
        if not hasattr(result, "SerializeToString"):
            list(result)
    assert e.value.code() == code, e.value.details()
    if match is not None:
        assert match in e.value.details(), e.value.details()
    return e.value.details()


def put_blob(blobs, data: bytes) -> bytes:
    return blobs.Put(iter([BlobChunk(data=data)])).digest


def random_digest() -> bytes:
    return os.urandom(32)


# --- BlobService -----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 31, 33])
def test_blob_stat_and_read_wrong_digest_length(blobs, length):
    fails(grpc.StatusCode.INVALID_ARGUMENT, blobs.Stat, StatBlobRequest(digest=b"x" * length),
          match=f"StatBlobRequest.digest: invalid digest length {length}")
    fails(grpc.StatusCode.INVALID_ARGUMENT, blobs.Read, ReadBlobRequest(digest=b"x" * length),
          match=f"ReadBlobRequest.digest: invalid digest length {length}")


def test_blob_absent(blobs):
    digest = random_digest()
    fails(grpc.StatusCode.NOT_FOUND, blobs.Stat, StatBlobRequest(digest=digest), match=str(B3Digest(digest)))
    call = blobs.Read(ReadBlobRequest(digest=digest))
    with pytest.raises(grpc.RpcError) as e:
        next(call)  # no message before the status
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert str(B3Digest(digest)) in e.value.details()


def test_blob_put_stat_read(blobs):
    """grpc_blobservice put_read_stat, plus Part A §6: one ChunkMeta for the whole blob."""
    assert put_blob(blobs, BLOB_A) == BLOB_A_DIGEST
    assert blobs.Stat(StatBlobRequest(digest=BLOB_A_DIGEST)).SerializeToString() == b""
    meta = blobs.Stat(StatBlobRequest(digest=BLOB_A_DIGEST, include_chunks=True))
    assert [(c.digest, c.size) for c in meta.chunks] == [(BLOB_A_DIGEST, len(BLOB_A))]
    chunks = [c.data for c in blobs.Read(ReadBlobRequest(digest=BLOB_A_DIGEST))]
    assert chunks == [BLOB_A]


def test_blob_stat_include_bao_unimplemented(blobs):
    put_blob(blobs, BLOB_A)
    fails(grpc.StatusCode.UNIMPLEMENTED, blobs.Stat, StatBlobRequest(digest=BLOB_A_DIGEST, include_bao=True),
          match="include_bao")


def test_blob_read_chunking(blobs):
    """Chunks concatenate to the blob, none empty, none over the chunk size; more than one for a big blob."""
    data = os.urandom(3 * READ_CHUNK_SIZE + 12345)
    digest = blobs.Put(BlobChunk(data=data[i : i + 65536]) for i in range(0, len(data), 65536)).digest
    chunks = [c.data for c in blobs.Read(ReadBlobRequest(digest=digest))]
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= READ_CHUNK_SIZE for c in chunks)
    assert len(chunks) == 4
    assert blobs.Stat(StatBlobRequest(digest=digest, include_chunks=True)).chunks[0].size == len(data)


def test_blob_empty(blobs):
    assert blobs.Put(iter([])).digest == EMPTY_DIGEST
    assert list(blobs.Read(ReadBlobRequest(digest=EMPTY_DIGEST))) == []
    assert blobs.Put(iter([BlobChunk(), BlobChunk(data=b""), BlobChunk()])).digest == EMPTY_DIGEST


def test_blob_put_chunk_boundaries_irrelevant(blobs):
    pieces = [BLOB_B[i : i + 7777] for i in range(0, len(BLOB_B), 7777)]
    assert blobs.Put(BlobChunk(data=p) for p in [b"", *pieces, b""]).digest == BLOB_B_DIGEST
    assert b"".join(c.data for c in blobs.Read(ReadBlobRequest(digest=BLOB_B_DIGEST))) == BLOB_B


def test_blob_put_over_message_limit(blobs):
    """Part A §11: a message over the configured limit is RESOURCE_EXHAUSTED naming the limit; nothing stored."""
    data = os.urandom(1024 * 1024 + 100)
    details = fails(grpc.StatusCode.RESOURCE_EXHAUSTED, blobs.Put, iter([BlobChunk(data=data)]))
    assert "max_message_size=1048576" in details and "--max-message-size" in details
    fails(grpc.StatusCode.NOT_FOUND, blobs.Stat, StatBlobRequest(digest=B3Digest.of(data)))
    # Chunked, the same blob is fine.
    assert blobs.Put(BlobChunk(data=data[i : i + 65536]) for i in range(0, len(data), 65536)).digest == \
        B3Digest.of(data)


# --- DirectoryService ------------------------------------------------------------------------------


def get(dirs, digest: bytes, recursive: bool = False) -> list[Directory]:
    return list(dirs.Get(GetDirectoryRequest(digest=digest, recursive=recursive)))


def test_directory_get_by_what_unset(dirs):
    fails(grpc.StatusCode.INVALID_ARGUMENT, dirs.Get, GetDirectoryRequest(recursive=True), match="by_what")


@pytest.mark.parametrize("length", [0, 2, 64])
def test_directory_get_wrong_digest_length(dirs, length):
    fails(grpc.StatusCode.INVALID_ARGUMENT, dirs.Get, GetDirectoryRequest(digest=b"d" * length),
          match=f"GetDirectoryRequest.digest: invalid digest length {length}")


@pytest.mark.parametrize("recursive", [False, True])
def test_directory_get_absent_is_not_found_before_any_message(dirs, recursive):
    """Part A §1: also a recursive Get of a missing root is NOT_FOUND (the reference: INTERNAL)."""
    digest = random_digest()
    call = dirs.Get(GetDirectoryRequest(digest=digest, recursive=recursive))
    with pytest.raises(grpc.RpcError) as e:
        next(call)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert str(B3Digest(digest)) in e.value.details()


def test_directory_put_get(dirs):
    assert dirs.Put(iter([DIRECTORY_A])).root_digest == DIRECTORY_A_DIGEST
    assert get(dirs, DIRECTORY_A_DIGEST) == [DIRECTORY_A]


def test_directory_put_get_multiple(dirs):
    """B alone fails even though A is stored (children must come earlier in the same stream)."""
    dirs.Put(iter([DIRECTORY_A]))
    details = fails(grpc.StatusCode.INVALID_ARGUMENT, dirs.Put, iter([DIRECTORY_B]))
    assert "'a'" in details.replace('"', "'") and str(DIRECTORY_A_DIGEST) in details and "not seen" in details
    assert dirs.Put(iter([DIRECTORY_A, DIRECTORY_B])).root_digest == DIRECTORY_B_DIGEST
    assert get(dirs, DIRECTORY_B_DIGEST) == [DIRECTORY_B]
    assert get(dirs, DIRECTORY_B_DIGEST, recursive=True) == [DIRECTORY_B, DIRECTORY_A]


def test_directory_put_get_dedup(dirs):
    assert dirs.Put(iter([DIRECTORY_A, DIRECTORY_A, DIRECTORY_C])).root_digest == DIRECTORY_C_DIGEST
    assert get(dirs, DIRECTORY_C_DIGEST, recursive=True) == [DIRECTORY_C, DIRECTORY_A]


def test_directory_recursive_keeps_reference_order_with_repeats(dirs):
    """R → {a: A', b: B'}, B' → {a: A'}: the reference emits [R, A', B', A'] (pending-queue dedup only)."""
    leaf = Directory(symlinks=[SymlinkNode(name=b"l", target=b"t-repeat")])
    leaf_d = directory_digest(leaf)
    mid = Directory(directories=[DirectoryNode(name=b"a", digest=leaf_d, size=1)])
    mid_d = directory_digest(mid)
    root = Directory(directories=[DirectoryNode(name=b"a", digest=leaf_d, size=1),
                                  DirectoryNode(name=b"b", digest=mid_d, size=2)])
    root_d = dirs.Put(iter([leaf, mid, root])).root_digest
    assert get(dirs, root_d, recursive=True) == [root, leaf, mid, leaf]


@pytest.mark.parametrize(
    ("directory", "needle"),
    [
        (Directory(symlinks=[SymlinkNode(name=b"", target=b"x")]), "invalid name ''"),
        (Directory(symlinks=[SymlinkNode(name=b"b", target=b"x"), SymlinkNode(name=b"a", target=b"x")]),
         "'a' is not sorted"),
        (Directory(files=[FileNode(name=b"a", digest=EMPTY_DIGEST)], symlinks=[SymlinkNode(name=b"a", target=b"x")]),
         "'a' is a duplicate name"),
        (Directory(files=[FileNode(name=b"f", digest=b"\x00" * 31)]), "'f': invalid digest length 31"),
        (Directory(directories=[DirectoryNode(name=b"d", digest=b"\x01" * 2)]), "'d': invalid digest length 2"),
    ],
    ids=["empty-name", "unsorted", "duplicate", "file-digest-31", "dir-digest-2"],
)
def test_directory_put_invalid(dirs, directory, needle):
    details = fails(grpc.StatusCode.INVALID_ARGUMENT, dirs.Put, iter([directory]))
    assert needle in details and str(directory_digest(directory)) in details
    fails(grpc.StatusCode.NOT_FOUND, dirs.Get, GetDirectoryRequest(digest=directory_digest(directory)))


def test_directory_put_wrong_size(dirs):
    bad = Directory(directories=[DirectoryNode(name=b"foo", digest=DIRECTORY_A_DIGEST, size=42)])
    details = fails(grpc.StatusCode.INVALID_ARGUMENT, dirs.Put, iter([DIRECTORY_A, bad]))
    assert "wrong size, expected 0, actual 42" in details


def test_directory_put_empty_stream(dirs):
    fails(grpc.StatusCode.INVALID_ARGUMENT, dirs.Put, iter([]), match="no directories")


def test_directory_put_is_all_or_nothing(dirs):
    """Part A §3: a valid directory sent before a failing one is not visible afterwards."""
    fresh = Directory(symlinks=[SymlinkNode(name=b"only-in-failed-put", target=b"x")])
    bad = Directory(directories=[DirectoryNode(name=b"x", digest=random_digest(), size=0)])
    fails(grpc.StatusCode.INVALID_ARGUMENT, dirs.Put, iter([fresh, bad]), match="not seen")
    fails(grpc.StatusCode.NOT_FOUND, dirs.Get, GetDirectoryRequest(digest=directory_digest(fresh)))


# --- PathInfoService -------------------------------------------------------------------------------

SYMLINK_PATH = b"00000000000000000000000000000000-foo"


def symlink_pathinfo(name: bytes = SYMLINK_PATH, target: bytes = b"doesntmatter") -> PathInfo:
    return PathInfo(node=Node(symlink=SymlinkNode(name=name, target=target)))


def test_pathinfo_get_by_what_unset(pathinfos):
    """Part A §1: INVALID_ARGUMENT (the reference says UNIMPLEMENTED)."""
    fails(grpc.StatusCode.INVALID_ARGUMENT, pathinfos.Get, GetPathInfoRequest(), match="by_what")


@pytest.mark.parametrize("length", [0, 19, 32])
def test_pathinfo_get_wrong_length(pathinfos, length):
    fails(grpc.StatusCode.INVALID_ARGUMENT, pathinfos.Get, GetPathInfoRequest(by_output_hash=b"\x01" * length),
          match=f"by_output_hash: invalid output digest length {length}")


def test_pathinfo_get_absent(pathinfos):
    fails(grpc.StatusCode.NOT_FOUND, pathinfos.Get, GetPathInfoRequest(by_output_hash=b"\x07" * 20),
          match="07" * 20)


def test_pathinfo_put_get(pathinfos):
    pi = symlink_pathinfo()
    assert pathinfos.Put(pi) == pi
    assert pathinfos.Get(GetPathInfoRequest(by_output_hash=bytes(20))) == pi


@pytest.mark.parametrize(
    ("path_info", "needle"),
    [
        (PathInfo(), "node"),
        (PathInfo(node=Node()), "node"),
        (symlink_pathinfo(name=b"invalid"), "invalid"),
        (PathInfo(node=Node(file=FileNode(name=b"00000000000000000000000000000000-f", digest=b"\x01" * 3))),
         "digest"),
        (PathInfo(node=Node(symlink=SymlinkNode(name=SYMLINK_PATH, target=b"t")), references=[b"\x00" * 19]),
         "reference"),
        (PathInfo(node=Node(symlink=SymlinkNode(name=SYMLINK_PATH, target=b"t")), references=[b"\x00" * 20],
                  narinfo=NARInfo(nar_sha256=b"\x00" * 32, reference_names=[])),
         "reference"),
    ],
    ids=["no-node", "unset-oneof", "bad-name", "bad-digest", "reference-19", "reference-names-count"],
)
def test_pathinfo_put_invalid(pathinfos, path_info, needle):
    details = fails(grpc.StatusCode.INVALID_ARGUMENT, pathinfos.Put, path_info)
    assert needle in details.lower()


def test_pathinfo_put_missing_content_failed_precondition(pathinfos):
    """Part A §5: a PathInfo pointing at content the store lacks is FAILED_PRECONDITION naming the digest."""
    digest = random_digest()
    file_pi = PathInfo(node=Node(file=FileNode(name=b"11111111111111111111111111111111-f", digest=digest, size=3)))
    fails(grpc.StatusCode.FAILED_PRECONDITION, pathinfos.Put, file_pi, match=str(B3Digest(digest)))
    dir_pi = PathInfo(node=Node(directory=DirectoryNode(name=b"11111111111111111111111111111111-d",
                                                        digest=digest, size=0)))
    fails(grpc.StatusCode.FAILED_PRECONDITION, pathinfos.Put, dir_pi, match=str(B3Digest(digest)))
    fails(grpc.StatusCode.NOT_FOUND, pathinfos.Get, GetPathInfoRequest(by_output_hash=b"\x00" * 19 + b"\x01"))


def test_calculate_nar(pathinfos, blobs):
    node = Node(symlink=SymlinkNode(name=b"whatever", target=b"/nix/store/somewhereelse"))
    resp = pathinfos.CalculateNAR(node)
    expected = (len(NAR_CONTENTS_SYMLINK), hashlib.sha256(NAR_CONTENTS_SYMLINK).digest())
    assert (resp.nar_size, resp.nar_sha256) == expected
    assert put_blob(blobs, HELLOWORLD_BLOB) == HELLOWORLD_DIGEST
    node = Node(file=FileNode(name=b"x", digest=HELLOWORLD_DIGEST, size=len(HELLOWORLD_BLOB)))
    for _ in range(2):  # the second answer comes from the cache
        resp = pathinfos.CalculateNAR(node)
        assert resp.nar_size == len(NAR_CONTENTS_HELLOWORLD)
        assert resp.nar_sha256 == hashlib.sha256(NAR_CONTENTS_HELLOWORLD).digest()


def test_calculate_nar_errors(pathinfos, blobs):
    """Part A §2: never a crash: unset → INVALID_ARGUMENT, missing → NOT_FOUND, size mismatch → DATA_LOSS."""
    fails(grpc.StatusCode.INVALID_ARGUMENT, pathinfos.CalculateNAR, Node(), match="node")
    missing = random_digest()
    fails(grpc.StatusCode.NOT_FOUND, pathinfos.CalculateNAR, Node(file=FileNode(name=b"x", digest=missing, size=1)),
          match=str(B3Digest(missing)))
    fails(grpc.StatusCode.NOT_FOUND, pathinfos.CalculateNAR,
          Node(directory=DirectoryNode(name=b"x", digest=missing, size=0)), match=str(B3Digest(missing)))
    put_blob(blobs, HELLOWORLD_BLOB)
    fails(grpc.StatusCode.DATA_LOSS, pathinfos.CalculateNAR,
          Node(file=FileNode(name=b"x", digest=HELLOWORLD_DIGEST, size=5)), match=str(HELLOWORLD_DIGEST))
    fails(grpc.StatusCode.INVALID_ARGUMENT, pathinfos.CalculateNAR,
          Node(file=FileNode(name=b"x", digest=b"\x01" * 5, size=5)), match="5")


def test_pathinfo_list(pathinfos):
    names = [f"{i:032d}-listed".encode().replace(b"0", b"1", 1) for i in range(3)]
    for i, name in enumerate(names):
        pathinfos.Put(symlink_pathinfo(name=name, target=f"t{i}".encode()))
    listed = list(pathinfos.List(ListPathInfoRequest()))
    for name in names:
        assert any(p.node.symlink.name == name for p in listed)


# --- malformed input: the daemon answers and keeps serving ---------------------------------------


@pytest.mark.parametrize(
    ("method", "kind", "message"),
    [
        ("/tvix.store.v1.BlobService/Stat", "unary_unary", "tvix.store.v1.StatBlobRequest"),
        ("/tvix.store.v1.BlobService/Read", "unary_stream", "tvix.store.v1.ReadBlobRequest"),
        ("/tvix.store.v1.BlobService/Put", "stream_unary", "tvix.store.v1.BlobChunk"),
        ("/tvix.store.v1.DirectoryService/Get", "unary_stream", "tvix.store.v1.GetDirectoryRequest"),
        ("/tvix.store.v1.DirectoryService/Put", "stream_unary", "tvix.store.v1.Directory"),
        ("/tvix.store.v1.PathInfoService/Get", "unary_unary", "tvix.store.v1.GetPathInfoRequest"),
        ("/tvix.store.v1.PathInfoService/Put", "unary_unary", "tvix.store.v1.PathInfo"),
        ("/tvix.store.v1.PathInfoService/CalculateNAR", "unary_unary", "tvix.store.v1.Node"),
    ],
)
def test_malformed_protobuf(channel, blobs, method, kind, message):
    """Bytes that are not a protobuf message: INVALID_ARGUMENT naming the message type (grpcio: INTERNAL)."""
    garbage = b"\x0a\xff\xff\xff\xff\x0f\x01"  # field 1, length ~4 GiB, 1 byte of data
    call = getattr(channel, kind)(method)
    arg = iter([garbage]) if kind.startswith("stream") else garbage
    details = fails(grpc.StatusCode.INVALID_ARGUMENT, call, arg)
    assert f"malformed {message} message" in details
    assert put_blob(blobs, BLOB_A) == BLOB_A_DIGEST  # still serving


def test_unknown_fields_are_dropped(channel, dirs):
    """Like prost, the daemon drops unknown fields: the digest is that of the known fields only."""
    raw = DIRECTORY_A.SerializeToString() + b"\xa0\x06\x01"  # field 100 (varint) = 1
    put = channel.stream_unary("/tvix.store.v1.DirectoryService/Put")
    from tvixd.proto.rpc_directory_pb2 import PutDirectoryResponse

    assert PutDirectoryResponse.FromString(put(iter([raw]))).root_digest == DIRECTORY_A_DIGEST


def test_oversized_directory_message(dirs):
    big = Directory(symlinks=[SymlinkNode(name=f"{i:08d}".encode(), target=b"t" * 200) for i in range(6000)])
    details = fails(grpc.StatusCode.RESOURCE_EXHAUSTED, dirs.Put, iter([big]))
    assert "tvix.store.v1.Directory" in details and "max_message_size=1048576" in details
