"""The NAR renderer over services (SPEC Part B §5.7, Part A §2), on memory and persistent backends."""

from __future__ import annotations

import hashlib

import pytest

from tests.fixtures import (
    DIRECTORY_COMPLICATED,
    DIRECTORY_COMPLICATED_DIGEST,
    DIRECTORY_WITH_KEEP,
    EMPTY_DIGEST,
    HELLOWORLD_BLOB,
    HELLOWORLD_DIGEST,
    NAR_CONTENTS_COMPLICATED,
    NAR_CONTENTS_HELLOWORLD,
    NAR_CONTENTS_SYMLINK,
)
from tvixd.blobservice.memory import MemoryBlobService
from tvixd.castore.directory import directory_digest
from tvixd.directoryservice.memory import MemoryDirectoryService
from tvixd.errors import DataLoss, InvalidRequest, NotFound
from tvixd.nar import SMALL_FILE, calculate_nar, write_nar
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import Node


@pytest.fixture
def blobs():
    return MemoryBlobService()


@pytest.fixture
def dirs():
    return MemoryDirectoryService()


def render(node, blobs, dirs) -> bytes:
    out = bytearray()
    write_nar(out.extend, node, blobs, dirs)
    return bytes(out)


def put_blob(blobs, data: bytes) -> bytes:
    w = blobs.open_write()
    w.write(data)
    return w.close()


def test_single_symlink(blobs, dirs):
    node = SymlinkNode(name=b"doesntmatter", target=b"/nix/store/somewhereelse")
    assert render(node, blobs, dirs) == NAR_CONTENTS_SYMLINK
    assert render(Node(symlink=node), blobs, dirs) == NAR_CONTENTS_SYMLINK


def test_single_file_missing_blob(blobs, dirs):
    node = FileNode(name=b"doesntmatter", digest=HELLOWORLD_DIGEST, size=12)
    with pytest.raises(NotFound, match="doesntmatter") as e:
        render(node, blobs, dirs)
    assert str(HELLOWORLD_DIGEST) in str(e.value)


@pytest.mark.parametrize("size", [42, 2])
def test_single_file_wrong_blob_size(blobs, dirs, size):
    put_blob(blobs, HELLOWORLD_BLOB)
    with pytest.raises(DataLoss, match=str(size)):
        render(FileNode(name=b"doesntmatter", digest=HELLOWORLD_DIGEST, size=size), blobs, dirs)


def test_single_file(blobs, dirs):
    put_blob(blobs, HELLOWORLD_BLOB)
    assert render(FileNode(name=b"doesntmatter", digest=HELLOWORLD_DIGEST, size=12), blobs, dirs) == (
        NAR_CONTENTS_HELLOWORLD
    )


def test_complicated(blobs, dirs):
    put_blob(blobs, b"")
    with dirs.put_multiple_start() as putter:
        putter.put(DIRECTORY_WITH_KEEP)
        putter.put(DIRECTORY_COMPLICATED)
        putter.close()
    node = DirectoryNode(name=b"doesntmatter", digest=DIRECTORY_COMPLICATED_DIGEST, size=4)
    assert render(node, blobs, dirs) == NAR_CONTENTS_COMPLICATED
    assert calculate_nar(node, blobs, dirs) == (840, hashlib.sha256(NAR_CONTENTS_COMPLICATED).digest())


def test_missing_directory_names_entry(blobs, dirs):
    node = DirectoryNode(name=b"doesntmatter", digest=DIRECTORY_COMPLICATED_DIGEST, size=4)
    with pytest.raises(NotFound, match="doesntmatter"):
        render(node, blobs, dirs)


def test_missing_blob_deep_names_entry(blobs, dirs):
    """The empty blob is missing: the error names it and the entry that refers to it."""
    with dirs.put_multiple_start() as putter:
        putter.put(DIRECTORY_WITH_KEEP)
        putter.put(DIRECTORY_COMPLICATED)
        putter.close()
    node = DirectoryNode(name=b"x", digest=DIRECTORY_COMPLICATED_DIGEST, size=4)
    with pytest.raises(NotFound, match=r"\.keep") as e:
        render(node, blobs, dirs)
    assert str(EMPTY_DIGEST) in str(e.value)


@pytest.mark.parametrize(
    "node",
    [
        Node(),
        FileNode(name=b"f", digest=b"\x00" * 31, size=0),
        DirectoryNode(name=b"d", digest=b"", size=0),
        Node(directory=DirectoryNode(name=b"d", digest=b"\x01", size=0)),
    ],
    ids=["unset", "file-digest", "dir-digest", "node-dir-digest"],
)
def test_malformed_node(blobs, dirs, node):
    with pytest.raises(InvalidRequest):
        render(node, blobs, dirs)


def test_deep_tree_no_recursion_limit(blobs, dirs):
    """3,000 nested directories: the walk is iterative."""
    put_blob(blobs, b"")
    with dirs.put_multiple_start() as putter:
        current = Directory(files=[FileNode(name=b"f", digest=EMPTY_DIGEST, size=0)])
        size = 1
        putter.put(current)
        for _ in range(3000):
            current = Directory(directories=[DirectoryNode(name=b"d", digest=directory_digest(current), size=size)])
            size += 1
            putter.put(current)
        root = putter.close()
    nar = render(DirectoryNode(name=b"r", digest=root, size=size), blobs, dirs)
    assert nar.count(b"directory") == 3001


@pytest.mark.parametrize("size", [100, SMALL_FILE + 3], ids=["small", "big"])
def test_corrupt_blob_on_disk_is_data_loss_naming_the_entry(tmp_path, size):
    """fs:// + SQLite (the embedded store): none of a corrupt file's bytes reach the sink, small
    (read whole) or big (verified whole over mappings before the first byte is written)."""
    import os
    import re

    from tvixd.blobservice.fs import FsBlobService
    from tvixd.directoryservice.sqlite import SqliteDirectoryService

    blobs = FsBlobService(str(tmp_path / "blobs"))
    dirs = SqliteDirectoryService(str(tmp_path / "store.sqlite"))
    data = os.urandom(size)
    digest = put_blob(blobs, data)
    directory = Directory(
        files=[FileNode(name=b"a", digest=HELLOWORLD_DIGEST, size=12), FileNode(name=b"b", digest=digest, size=size)]
    )
    put_blob(blobs, HELLOWORLD_BLOB)
    node = DirectoryNode(name=b"root", digest=dirs.put(directory), size=2)
    expected = render(node, blobs, dirs)
    assert expected.count(data) == 1

    path = blobs.path_of(digest)
    os.chmod(path, 0o644)
    corrupt = data[:-1] + bytes([data[-1] ^ 1])
    with open(path, "wb") as f:
        f.write(corrupt)
    out = bytearray()
    with pytest.raises(DataLoss, match=re.escape(str(digest))) as e:
        write_nar(out.extend, node, blobs, dirs)
    assert "'b'" in str(e.value)
    assert corrupt[-100:] not in out
    assert corrupt[:50] not in out
    assert expected.startswith(bytes(out))  # what went out before the error is right (here: nothing of "b")
    # Wrong declared size: DataLoss naming both sizes.
    os.unlink(path)
    put_blob(blobs, data)
    wrong = Directory(files=[FileNode(name=b"b", digest=digest, size=size - 1)])
    with pytest.raises(DataLoss, match=re.escape(str(digest))) as e:
        render(DirectoryNode(name=b"root", digest=dirs.put(wrong), size=1), blobs, dirs)
    assert str(size) in str(e.value) and str(size - 1) in str(e.value)
    blobs.close()
    dirs.close()


def test_repeated_blobs_are_read_once_and_written_each_time(tmp_path):
    """A blob under several names (and in a directory that occurs twice) is written at each of them; the
    renderer keeps its verified contents instead of reading it again, and a later entry declaring
    another size for it is still DataLoss."""
    from tvixd.blobservice.fs import FsBlobService
    from tvixd.directoryservice.sqlite import SqliteDirectoryService

    class CountingBlobs(FsBlobService):
        reads = 0

        def read_verified(self, digest: bytes, size: int) -> bytes | None:
            CountingBlobs.reads += 1
            return super().read_verified(digest, size)

    blobs = CountingBlobs(str(tmp_path / "blobs"))
    dirs = SqliteDirectoryService(str(tmp_path / "store.sqlite"))
    data = b"same contents" * 100
    digest = put_blob(blobs, data)
    inner = Directory(files=[FileNode(name=b"c", digest=digest, size=len(data))])
    with dirs.put_multiple_start() as putter:
        inner_digest = putter.put(inner)
        root = putter.put(
            Directory(
                directories=[DirectoryNode(name=b"d1", digest=inner_digest, size=1),
                             DirectoryNode(name=b"d2", digest=inner_digest, size=1)],
                files=[FileNode(name=n, digest=digest, size=len(data)) for n in (b"a", b"b", b"e")],
            )
        )  # fmt: skip
        putter.close()
    node = DirectoryNode(name=b"r", digest=root, size=6)
    nar = render(node, blobs, dirs)
    assert nar.count(data) == 5
    assert CountingBlobs.reads < 5
    memory = MemoryBlobService()
    put_blob(memory, data)
    assert nar == render(node, memory, dirs)  # the memory backend reads every time: the same NAR

    wrong = Directory(files=[FileNode(name=b"a", digest=digest, size=len(data)),
                             FileNode(name=b"b", digest=digest, size=len(data) + 1)])  # fmt: skip
    with pytest.raises(DataLoss, match="'b'"):
        render(DirectoryNode(name=b"r", digest=dirs.put(wrong), size=2), blobs, dirs)
    blobs.close()
    dirs.close()
