"""The FUSE inode tracker (SPEC Part B §10.11, with Part A §10's executable bit). Needs no /dev/fuse."""

from __future__ import annotations

from tests.fixtures import (
    BLOB_A_DIGEST,
    BLOB_B_DIGEST,
    DIRECTORY_COMPLICATED,
    DIRECTORY_COMPLICATED_DIGEST,
    DIRECTORY_WITH_KEEP,
    DIRECTORY_WITH_KEEP_DIGEST,
    EMPTY_DIGEST,
)
from tvixd.fuse.inodes import ROOT_INO, DirectoryData, InodeTracker
from tvixd.proto.castore_pb2 import DirectoryNode, FileNode, SymlinkNode


def test_get_nonexistent() -> None:
    tracker = InodeTracker()
    assert tracker.get(ROOT_INO) is None
    assert tracker.get(2) is None
    assert tracker.get(-1) is None


def file_data(tracker: InodeTracker, ino: int) -> tuple[bytes, int, bool]:
    """What the tracker knows of file inode ``ino``: (digest, size, executable)."""
    data = tracker.get(ino)
    assert isinstance(data, FileNode)
    return data.digest, data.size, data.executable


def test_put_regular() -> None:
    tracker = InodeTracker()
    ino = tracker.put_node(FileNode(name=b"a", digest=BLOB_A_DIGEST, size=2))
    assert ino == 2
    assert file_data(tracker, ino) == (BLOB_A_DIGEST, 2, False)
    # Same content under another name: same inode.
    assert tracker.put_node(FileNode(name=b"b", digest=BLOB_A_DIGEST, size=2)) == ino
    other = tracker.put_node(FileNode(name=b"a", digest=BLOB_B_DIGEST, size=len(BLOB_B_DIGEST)))
    assert other not in (ino, ROOT_INO)


def test_executable_bit_is_part_of_the_file_key() -> None:
    tracker = InodeTracker()
    plain = tracker.put_node(FileNode(name=b"a", digest=BLOB_A_DIGEST, size=2))
    exe = tracker.put_node(FileNode(name=b"a", digest=BLOB_A_DIGEST, size=2, executable=True))
    assert plain != exe
    assert file_data(tracker, plain) == (BLOB_A_DIGEST, 2, False)
    assert file_data(tracker, exe) == (BLOB_A_DIGEST, 2, True)
    assert tracker.put_node(FileNode(name=b"z", digest=BLOB_A_DIGEST, size=2, executable=True)) == exe


def test_put_symlink() -> None:
    tracker = InodeTracker()
    ino = tracker.put_node(SymlinkNode(name=b"a", target=b"target"))
    data = tracker.get(ino)
    assert isinstance(data, SymlinkNode) and data.target == b"target"
    assert tracker.put_node(SymlinkNode(name=b"b", target=b"target")) == ino
    assert tracker.put_node(SymlinkNode(name=b"a", target=b"target2")) != ino


def test_key_spaces_are_separate() -> None:
    """A file, a directory and a symlink never share an inode, even with equal digest bytes."""
    tracker = InodeTracker()
    inos = {
        tracker.put_node(FileNode(name=b"a", digest=EMPTY_DIGEST, size=0)),
        tracker.put_node(DirectoryNode(name=b"a", digest=EMPTY_DIGEST, size=0)),
        tracker.put_node(SymlinkNode(name=b"a", target=bytes(EMPTY_DIGEST))),
    }
    assert len(inos) == 3


def test_put_directory_leaf() -> None:
    tracker = InodeTracker()
    ino = tracker.put_directory(DIRECTORY_WITH_KEEP_DIGEST, DIRECTORY_WITH_KEEP)
    data = tracker.get(ino)
    assert isinstance(data, DirectoryData)
    assert data.populated and data.digest == DIRECTORY_WITH_KEEP_DIGEST
    assert data.children is not None and len(data.children) == 1
    child_ino, child = data.children[0]
    assert child_ino != ino
    assert child.name == b".keep"
    assert file_data(tracker, child_ino) == (EMPTY_DIGEST, 0, False)
    # A directory never seen before gets its children's numbers first.
    assert child_ino < ino


def test_put_directory_complicated() -> None:
    tracker = InodeTracker()
    ino = tracker.put_directory(DIRECTORY_COMPLICATED_DIGEST, DIRECTORY_COMPLICATED)
    data = tracker.get(ino)
    assert isinstance(data, DirectoryData) and data.children is not None
    assert [bytes(node.name) for _, node in data.children] == [b".keep", b"aa", b"keep"]
    inos = [child_ino for child_ino, _ in data.children]
    assert len(set(inos)) == 3 and ino not in inos
    assert isinstance(tracker.get(inos[0]), FileNode)
    link = tracker.get(inos[1])
    assert isinstance(link, SymlinkNode) and link.target == b"/nix/store/somewhereelse"
    keep = tracker.get(inos[2])
    assert isinstance(keep, DirectoryData)
    assert not keep.populated and keep.digest == DIRECTORY_WITH_KEEP_DIGEST and keep.size == 1
    # Populating the sparse child keeps its number and its size.
    assert tracker.put_directory(DIRECTORY_WITH_KEEP_DIGEST, DIRECTORY_WITH_KEEP) == inos[2]
    keep = tracker.get(inos[2])
    assert isinstance(keep, DirectoryData) and keep.populated and keep.size == 1
    assert keep.children is not None and [bytes(n.name) for _, n in keep.children] == [b".keep"]
    # The .keep file inside shares the inode of the outer .keep (same content).
    assert keep.children[0][0] == inos[0]
    assert keep.child(b".keep") == inos[0] and keep.child(b"aa") is None


def test_put_populated_twice_is_a_noop() -> None:
    tracker = InodeTracker()
    ino = tracker.put_directory(DIRECTORY_COMPLICATED_DIGEST, DIRECTORY_COMPLICATED)
    data = tracker.get(ino)
    assert tracker.put_directory(DIRECTORY_COMPLICATED_DIGEST, DIRECTORY_COMPLICATED) == ino
    assert tracker.get(ino) is data


def test_store_paths() -> None:
    tracker = InodeTracker()
    node = DirectoryNode(name=b"22222222222222222222222222222222-test", digest=DIRECTORY_WITH_KEEP_DIGEST, size=1)
    assert tracker.store_path(node.name) is None
    ino = tracker.put_store_path(node.name, node)
    assert tracker.store_path(node.name) == ino
    # The store path's root shares its inode with the same directory found elsewhere.
    outer = tracker.put_directory(DIRECTORY_COMPLICATED_DIGEST, DIRECTORY_COMPLICATED)
    data = tracker.get(outer)
    assert isinstance(data, DirectoryData) and data.children is not None
    assert data.children[2][0] == ino
