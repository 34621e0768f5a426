"""StoreFS operations called directly (no kernel, no /dev/fuse): the error paths a mount can't easily provoke.

Unknown inodes and file handles must give errors, never crash the mount (Part A §10); a forward-only
blob reader (the gRPC client) must be reopened for a backward read.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

pyfuse3 = pytest.importorskip("pyfuse3")  # a test dependency; absent only outside the [test] extra
import trio  # noqa: E402

from tests.fixtures import BLOB_A, BLOB_B  # noqa: E402
from tests.fuse_helpers import DIR_COMPLICATED, FILE_A, FILE_B, populate_fixtures  # noqa: E402
from tvixd.fuse.fs import StoreFS  # noqa: E402
from tvixd.fuse.inodes import ROOT_INO  # noqa: E402
from tvixd.store import Store, StoreAddrs  # noqa: E402

UNKNOWN = 987654


@pytest.fixture
def store() -> Iterator[Store]:
    with Store.open(StoreAddrs(blob="memory://", directory="memory://", path_info="memory://")) as s:
        populate_fixtures(s)
        yield s


def call(fn, *args):
    """Run one async operation; return its result or the FUSE errno it failed with."""

    async def go():
        try:
            return await fn(*args)
        except pyfuse3.FUSEError as e:
            return ("errno", e.errno)

    return trio.run(go)


def test_unknown_inodes_and_handles(store: Store) -> None:
    fs = StoreFS(store)
    assert call(fs.getattr, UNKNOWN, None) == ("errno", errno.ENOENT)
    assert call(fs.lookup, UNKNOWN, b"x", None) == ("errno", errno.ENOENT)
    assert call(fs.readlink, UNKNOWN, None) == ("errno", errno.ENOENT)
    assert call(fs.open, UNKNOWN, os.O_RDONLY, None) == ("errno", errno.ENOENT)
    assert call(fs.opendir, UNKNOWN, None) == ("errno", errno.ENOENT)
    assert call(fs.getxattr, UNKNOWN, b"user.x", None) == ("errno", pyfuse3.ENOATTR)
    assert call(fs.read, UNKNOWN, 0, 10) == ("errno", errno.EBADF)
    assert call(fs.readdir, UNKNOWN, 0, None) == ("errno", errno.EBADF)
    assert call(fs.release, UNKNOWN) is None
    assert call(fs.releasedir, UNKNOWN) is None
    # still fully working afterwards
    assert call(fs.getattr, ROOT_INO, None).st_mode & 0o777 == 0o555


def test_wrong_kinds(store: Store) -> None:
    fs = StoreFS(store, show_xattr=True)
    f = call(fs.lookup, ROOT_INO, FILE_A.encode(), None).st_ino
    d = call(fs.lookup, ROOT_INO, DIR_COMPLICATED.encode(), None).st_ino
    assert call(fs.lookup, f, b"x", None) == ("errno", errno.ENOTDIR)
    assert call(fs.opendir, f, None) == ("errno", errno.ENOTDIR)
    assert call(fs.readlink, f, None) == ("errno", errno.EINVAL)
    assert call(fs.readlink, ROOT_INO, None) == ("errno", errno.EINVAL)
    assert call(fs.open, d, os.O_RDONLY, None) == ("errno", errno.EISDIR)
    assert call(fs.open, ROOT_INO, os.O_RDONLY, None) == ("errno", errno.EISDIR)
    assert call(fs.open, f, os.O_WRONLY, None) == ("errno", errno.EROFS)
    assert call(fs.lookup, ROOT_INO, b"\xff\xfe", None) == ("errno", errno.ENOENT)
    assert call(fs.listxattr, ROOT_INO, None) == []


def test_write_operations_are_erofs(store: Store) -> None:
    fs = StoreFS(store)
    for op, args in [
        (fs.mkdir, (ROOT_INO, b"d", 0o755, None)),
        (fs.create, (ROOT_INO, b"f", 0o644, os.O_WRONLY, None)),
        (fs.unlink, (ROOT_INO, b"f", None)),
        (fs.rmdir, (ROOT_INO, b"d", None)),
        (fs.symlink, (ROOT_INO, b"l", b"t", None)),
        (fs.rename, (ROOT_INO, b"a", ROOT_INO, b"b", 0, None)),
        (fs.link, (2, ROOT_INO, b"h", None)),
        (fs.write, (1, 0, b"x")),
        (fs.setattr, (ROOT_INO, None, None, None, None)),
        (fs.setxattr, (ROOT_INO, b"user.x", b"1", None)),
        (fs.removexattr, (ROOT_INO, b"user.x", None)),
        (fs.mknod, (ROOT_INO, b"n", 0o644, 0, None)),
    ]:
        assert call(op, *args) == ("errno", errno.EROFS), op


def test_backward_reads_reopen_a_forward_only_reader(store: Store) -> None:
    from tests.daemon import serve_in_process

    with ExitStack() as stack:
        url = serve_in_process(stack, store)
        with Store.open(StoreAddrs(blob=url, directory=url, path_info=url)) as remote:
            fs = StoreFS(remote)
            ino = call(fs.lookup, ROOT_INO, FILE_B.encode(), None).st_ino

            async def reads() -> list[bytes]:
                info = await fs.open(ino, os.O_RDONLY, None)
                out = []
                for off, n in [(1_000_000, 10), (5, 10), (1_044_470, 100), (0, 4096), (2_000_000, 1)]:
                    handle = fs._files[info.fh]
                    handle.buf = b""  # defeat the read-ahead buffer: every read goes to the reader
                    out.append(await fs.read(info.fh, off, n))
                await fs.release(info.fh)
                return out

            got = trio.run(reads)
            assert got == [BLOB_B[1_000_000:1_000_010], BLOB_B[5:15], BLOB_B[1_044_470:], BLOB_B[:4096], b""]
            assert call(fs.read, 1, 0, 1) == ("errno", errno.EBADF)  # released
            a = call(fs.lookup, ROOT_INO, FILE_A.encode(), None).st_ino

            async def small() -> bytes:
                info = await fs.open(a, os.O_RDONLY, None)
                return await fs.read(info.fh, 0, 4096)

            assert trio.run(small) == BLOB_A


def test_small_subtrees_are_fetched_whole(store: Store) -> None:
    """Looking into a store path populates its whole (small) directory tree with one fetch."""
    from tvixd.fuse.inodes import DirectoryData

    fs = StoreFS(store)
    root = call(fs.lookup, ROOT_INO, DIR_COMPLICATED.encode(), None).st_ino
    keep = call(fs.lookup, root, b"keep", None).st_ino
    data = fs.inodes.get(keep)
    assert isinstance(data, DirectoryData) and data.populated
    assert [bytes(n.name) for _, n in data.children] == [b".keep"]
    assert call(fs.lookup, root, b"missing", None) == ("errno", errno.ENOENT)
