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
from tvixd.castore.directory import directory_size
from tvixd.castore.entries import DIRECTORY, FILE, SYMLINK, directory_entries
from tvixd.fuse.inodes import ROOT_INO, DirectoryData, InodeTracker
from tvixd.fuse.inodes import directory_size as entries_size


def test_get_nonexistent() -> None:
    tracker = InodeTracker()
    assert tracker.get(ROOT_INO) is None
    assert tracker.get(2) is None
    assert tracker.get(-1) is None


def file_data(tracker: InodeTracker, ino: int) -> tuple[bytes, int, bool]:
    """What the tracker knows of file inode ``ino``: (digest, size, executable)."""
    data = tracker.get(ino)
    assert isinstance(data, tuple) and data[0] == FILE
    return data[2], data[3], data[4]


def test_put_regular() -> None:
    tracker = InodeTracker()
    ino = tracker.put_node((FILE, b"a", BLOB_A_DIGEST, 2, False))
    assert ino == 2
    assert file_data(tracker, ino) == (BLOB_A_DIGEST, 2, False)
    # Same content under another name: same inode.
    assert tracker.put_node((FILE, b"b", BLOB_A_DIGEST, 2, False)) == ino
    other = tracker.put_node((FILE, b"a", BLOB_B_DIGEST, len(BLOB_B_DIGEST), False))
    assert other not in (ino, ROOT_INO)


def test_executable_bit_is_part_of_the_file_key() -> None:
    tracker = InodeTracker()
    plain = tracker.put_node((FILE, b"a", BLOB_A_DIGEST, 2, False))
    exe = tracker.put_node((FILE, b"a", BLOB_A_DIGEST, 2, True))
    assert plain != exe
    assert file_data(tracker, plain) == (BLOB_A_DIGEST, 2, False)
    assert file_data(tracker, exe) == (BLOB_A_DIGEST, 2, True)
    assert tracker.put_node((FILE, b"z", BLOB_A_DIGEST, 2, True)) == exe


def test_put_symlink() -> None:
    tracker = InodeTracker()
    ino = tracker.put_node((SYMLINK, b"a", b"target", 0, False))
    assert tracker.get(ino) == (SYMLINK, b"a", b"target", 0, False)
    assert tracker.put_node((SYMLINK, b"b", b"target", 0, False)) == ino
    assert tracker.put_node((SYMLINK, b"a", b"target2", 0, False)) != ino


def test_key_spaces_are_separate() -> None:
    """A file, a directory and a symlink never share an inode, even with equal digest bytes."""
    tracker = InodeTracker()
    inos = {
        tracker.put_node((FILE, b"a", EMPTY_DIGEST, 0, False)),
        tracker.put_node((FILE, b"a", EMPTY_DIGEST, 0, True)),
        tracker.put_node((DIRECTORY, b"a", EMPTY_DIGEST, 0, False)),
        tracker.put_node((SYMLINK, b"a", bytes(EMPTY_DIGEST), 0, False)),
    }
    assert len(inos) == 4


def test_put_directory_leaf() -> None:
    tracker = InodeTracker()
    ino = tracker.put_directory(DIRECTORY_WITH_KEEP_DIGEST, directory_entries(DIRECTORY_WITH_KEEP))
    data = tracker.get(ino)
    assert isinstance(data, DirectoryData)
    assert data.populated and data.digest == DIRECTORY_WITH_KEEP_DIGEST
    assert data.size == directory_size(DIRECTORY_WITH_KEEP)
    assert data.entries is not None and data.inos is not None and len(data.entries) == len(data.inos) == 1
    child_ino, child = data.inos[0], data.entries[0]
    assert child_ino != ino
    assert child[1] == b".keep"
    assert file_data(tracker, child_ino) == (EMPTY_DIGEST, 0, False)
    # A directory never seen before gets its children's numbers first.
    assert child_ino < ino


def test_put_directory_complicated() -> None:
    tracker = InodeTracker()
    ino = tracker.put_directory(DIRECTORY_COMPLICATED_DIGEST, directory_entries(DIRECTORY_COMPLICATED))
    data = tracker.get(ino)
    assert isinstance(data, DirectoryData) and data.entries is not None and data.inos is not None
    assert [e[1] for e in data.entries] == [b".keep", b"aa", b"keep"]
    assert data.size == directory_size(DIRECTORY_COMPLICATED) == entries_size(data.entries)
    inos = data.inos
    assert len(set(inos)) == 3 and ino not in inos
    assert file_data(tracker, inos[0]) == (EMPTY_DIGEST, 0, False)
    assert tracker.get(inos[1]) == (SYMLINK, b"aa", b"/nix/store/somewhereelse", 0, False)
    keep = tracker.get(inos[2])
    assert isinstance(keep, DirectoryData)
    assert not keep.populated and keep.digest == DIRECTORY_WITH_KEEP_DIGEST and keep.size == 1
    # Populating the sparse child keeps its number and its size.
    assert tracker.put_directory(DIRECTORY_WITH_KEEP_DIGEST, directory_entries(DIRECTORY_WITH_KEEP)) == inos[2]
    keep = tracker.get(inos[2])
    assert isinstance(keep, DirectoryData) and keep.populated and keep.size == 1
    assert keep.entries is not None and [e[1] for e in keep.entries] == [b".keep"]
    # The .keep file inside shares the inode of the outer .keep (same content).
    assert keep.inos == [inos[0]]
    assert keep.child(b".keep") == inos[0] and keep.child(b"aa") is None


def test_put_populated_twice_is_a_noop() -> None:
    tracker = InodeTracker()
    entries = directory_entries(DIRECTORY_COMPLICATED)
    ino = tracker.put_directory(DIRECTORY_COMPLICATED_DIGEST, entries)
    data = tracker.get(ino)
    assert tracker.put_directory(DIRECTORY_COMPLICATED_DIGEST, entries) == ino
    assert tracker.get(ino) is data


def test_store_paths() -> None:
    tracker = InodeTracker()
    name = b"22222222222222222222222222222222-test"
    assert tracker.store_path(name) is None
    ino = tracker.put_store_path(name, (DIRECTORY, name, DIRECTORY_WITH_KEEP_DIGEST, 1, False))
    assert tracker.store_path(name) == ino
    # The store path's root shares its inode with the same directory found elsewhere.
    outer = tracker.put_directory(DIRECTORY_COMPLICATED_DIGEST, directory_entries(DIRECTORY_COMPLICATED))
    data = tracker.get(outer)
    assert isinstance(data, DirectoryData) and data.inos is not None
    assert data.inos[2] == ino
