"""``tvixd mount`` through the kernel (SPEC Part B §10.12 adapted to Part A §10: exec bit, nlink 1).

Each test talks to a real ``python -m tvixd mount`` subprocess over a store populated through the
Python API; skipped only where /dev/fuse is absent. Teardown always runs ``fusermount3 -u``.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.fixtures import (
    BLOB_A,
    BLOB_A_DIGEST,
    BLOB_B,
    DIRECTORY_COMPLICATED_DIGEST,
    DIRECTORY_WITH_KEEP,
    EMPTY_DIGEST,
)
from tests.fuse_helpers import (
    ALL_FIXTURE_PATHS,
    DANGLING,
    DIR_COMPLICATED,
    DIR_WITH_KEEP,
    FILE_A,
    FILE_A_EXE,
    FILE_B,
    SYMLINK,
    SYMLINK2,
    Mounted,
    fusermount_u,
    import_tree,
    make_nasty_tree,
    mount_args,
    mounted,
    needs_fuse,
    populate_fixtures,
    put_blob,
    put_path_info,
)
from tvixd.castore.directory import directory_size
from tvixd.store import Store, StoreAddrs

pytestmark = [pytest.mark.fuse, needs_fuse]



def embedded_store(state_dir: Path) -> StoreAddrs:
    """The embedded store (fs:// blobs, one sqlite:// file) in ``state_dir``: shareable across processes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return StoreAddrs.embedded(state_dir)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StoreAddrs, Path, str]:
    """A populated embedded store: (state dir, its addresses, the nasty source tree, its store path basename)."""
    base = tmp_path_factory.mktemp("fuse-store")
    addrs = embedded_store(base / "state")
    source = make_nasty_tree(base / "source")
    with Store.open(addrs) as store:
        populate_fixtures(store)
    return base, addrs, source, import_tree(addrs, source)


@pytest.fixture(scope="module")
def mnt(store_dir: tuple[Path, StoreAddrs, Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    """One mount (listing disabled, no xattrs) shared by the read-only tests of this module."""
    _, addrs, _, _ = store_dir
    with mounted(tmp_path_factory.mktemp("fuse-mnt"), addrs) as m:
        yield m
        assert m.proc.poll() is None, "the mount died during the tests:\n" + m.stderr()


def test_mount_empty_store_and_sigterm(tmp_path: Path) -> None:
    addrs = embedded_store(tmp_path / "state")
    with mounted(tmp_path, addrs) as m:
        st = os.stat(m.path)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555
        assert st.st_ino == 1 and st.st_uid == 0 and st.st_gid == 0
        assert not (m.path / FILE_A).exists()
        assert m.stop(signal.SIGTERM) == 0, m.stderr()
        assert not os.path.ismount(m.path)
        assert '"unmounting"' in m.stderr()


def test_sd_notify_ready_and_stopping(tmp_path: Path, stack: ExitStack) -> None:
    """Under systemd (Type=notify) the mount reports READY=1 once mounted and STOPPING=1 on SIGTERM."""
    from tests.daemon import short_socket_dir

    sock_path = short_socket_dir(stack) / "notify"
    sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    sock.bind(str(sock_path))
    sock.settimeout(60)
    with mounted(tmp_path, embedded_store(tmp_path / "state"), env={"NOTIFY_SOCKET": str(sock_path)}) as m:
        assert sock.recv(4096) == b"READY=1"
        assert os.path.ismount(m.path)
        assert m.stop() == 0
        assert sock.recv(4096) == b"STOPPING=1"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may change a device's read-ahead")
def test_kernel_read_ahead_is_widened(tmp_path: Path) -> None:
    """The mount's own backing device gets a 1 MiB read-ahead (fewer, larger read requests)."""
    from tvixd.fuse.mount import KERNEL_READ_AHEAD_KIB

    with mounted(tmp_path, embedded_store(tmp_path / "state"), name="mount point") as m:
        dev = os.stat(m.path).st_dev
        bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        assert int(bdi.read_text()) == KERNEL_READ_AHEAD_KIB == 1024


def test_sigint_unmounts_cleanly(tmp_path: Path) -> None:
    with mounted(tmp_path, embedded_store(tmp_path / "state")) as m:
        assert m.stop(signal.SIGINT) == 0, m.stderr()
        assert not os.path.ismount(m.path)
        assert "Traceback" not in m.stderr()


def test_stale_mount_is_reported_with_the_fix(tmp_path: Path) -> None:
    addrs = embedded_store(tmp_path / "state")
    with mounted(tmp_path, addrs) as m:
        m.stop(signal.SIGKILL)  # a crash: the kernel mount stays behind
        with pytest.raises(OSError) as e:
            os.statvfs(m.path)  # stat may still be answered from the kernel's attribute cache
        assert e.value.errno == errno.ENOTCONN
        result = subprocess.run(mount_args(m.path, addrs), capture_output=True, timeout=60, check=False)
        err = result.stderr.decode()
        assert result.returncode == 1
        assert err.count("\n") == 1, err
        assert "stale" in err and f"fusermount3 -u {m.path}" in err
        fusermount_u(m.path)
        assert os.stat(m.path).st_ino != 1  # back to the plain directory


def test_dest_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    for dest in (tmp_path / "file", tmp_path / "missing"):
        result = subprocess.run(
            mount_args(dest, StoreAddrs.embedded(tmp_path / "state")), capture_output=True, timeout=60, check=False
        )
        assert result.returncode == 1
        err = result.stderr.decode()
        assert err.startswith("tvixd mount: error: ") and str(dest) in err and "Traceback" not in err


def test_root_listing_refused(mnt: Mounted) -> None:
    with pytest.raises(PermissionError):
        os.listdir(mnt.path)


def test_stat_file_at_root(mnt: Mounted) -> None:
    st = os.stat(mnt.path / FILE_A)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
    assert st.st_size == 2 and st.st_nlink == 1


def test_read_file_at_root(mnt: Mounted) -> None:
    assert (mnt.path / FILE_A).read_bytes() == BLOB_A


def test_close_and_fsync_succeed(mnt: Mounted) -> None:
    """FLUSH and FSYNC get ENOSYS (the reference's answer): the kernel then makes close() and fsync() succeed."""
    for _ in range(2):  # the second time the kernel asks us no more
        fd = os.open(mnt.path / FILE_A, os.O_RDONLY)
        os.fsync(fd)
        assert os.read(fd, 100) == BLOB_A
        os.close(fd)


def test_executable_file_at_root(mnt: Mounted) -> None:
    st = os.stat(mnt.path / FILE_A_EXE)
    assert stat.S_IMODE(st.st_mode) == 0o555
    assert os.access(mnt.path / FILE_A_EXE, os.X_OK)
    assert (mnt.path / FILE_A_EXE).read_bytes() == BLOB_A
    # Same bytes, different mode: not the same inode (Part A §10).
    assert st.st_ino != os.stat(mnt.path / FILE_A).st_ino


def test_read_large_file_at_root(mnt: Mounted) -> None:
    p = mnt.path / FILE_B
    assert os.stat(p).st_size == len(BLOB_B) == 1_044_480
    assert p.read_bytes() == BLOB_B


def test_random_access_reads(mnt: Mounted) -> None:
    """O_DIRECT bypasses the page cache, so every pread reaches the filesystem at its own offset."""
    fd = os.open(mnt.path / FILE_B, os.O_RDONLY | os.O_DIRECT)
    try:
        for off, n in [(1_000_000, 10), (5, 10), (500_000, 70_000), (0, 4096), (1_044_470, 100), (2_000_000, 10)]:
            assert os.pread(fd, n, off) == BLOB_B[off : off + n], (off, n)
    finally:
        os.close(fd)


def test_symlink_readlink(mnt: Mounted) -> None:
    p = mnt.path / DANGLING
    assert os.readlink(p) == "77777777777777777777777777777777-test"
    assert stat.S_ISLNK(os.lstat(p).st_mode)
    with pytest.raises(FileNotFoundError):
        os.stat(p)
    with pytest.raises(FileNotFoundError):
        p.read_bytes()


def test_read_stat_through_symlink(mnt: Mounted) -> None:
    link, target = mnt.path / SYMLINK, mnt.path / FILE_A
    assert os.readlink(link) == FILE_A
    assert os.stat(link) == os.stat(target)
    assert os.lstat(link) != os.stat(target)
    assert link.read_bytes() == target.read_bytes() == BLOB_A


def test_read_stat_directory(mnt: Mounted) -> None:
    st = os.stat(mnt.path / DIR_WITH_KEEP)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555


def test_read_blob_inside_dir(mnt: Mounted) -> None:
    p = mnt.path / DIR_WITH_KEEP / ".keep"
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444 and st.st_size == 0
    assert p.read_bytes() == b""


def test_read_blob_deep_inside_dir(mnt: Mounted) -> None:
    p = mnt.path / DIR_COMPLICATED / "keep" / ".keep"
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444 and st.st_size == 0
    assert p.read_bytes() == b""


def test_readdir(mnt: Mounted) -> None:
    entries = list(os.scandir(mnt.path / DIR_COMPLICATED))
    assert [e.name for e in entries] == [".keep", "aa", "keep"]  # merged name order, no . or ..
    keep_file, aa, keep_dir = entries
    assert keep_file.is_file(follow_symlinks=False) and keep_file.stat(follow_symlinks=False).st_size == 0
    assert aa.is_symlink()
    assert keep_dir.is_dir(follow_symlinks=False)


def test_readdir_deep(mnt: Mounted) -> None:
    entries = list(os.scandir(mnt.path / DIR_COMPLICATED / "keep"))
    assert [e.name for e in entries] == [".keep"]
    assert entries[0].is_file(follow_symlinks=False) and entries[0].stat(follow_symlinks=False).st_size == 0


def test_check_attributes(mnt: Mounted) -> None:
    f = os.lstat(mnt.path / FILE_A)
    d = os.lstat(mnt.path / DIR_WITH_KEEP)
    s = os.lstat(mnt.path / SYMLINK2)
    assert stat.S_IMODE(f.st_mode) == 0o444
    assert stat.S_IMODE(d.st_mode) == 0o555
    assert stat.S_IMODE(s.st_mode) == 0o444
    assert f.st_size == 2
    assert d.st_size == directory_size(DIRECTORY_WITH_KEEP) == 1
    assert s.st_size == len("/nix/store/somewhereelse")
    for st in (f, d, s):
        assert st.st_uid == st.st_gid == 0
        assert st.st_atime == st.st_mtime == st.st_ctime == 0
        assert st.st_nlink == 1


def test_directory_size_is_stable(mnt: Mounted) -> None:
    """The reference changed a directory's size on population (4 → 3); tvixd keeps the recursive count."""
    p = mnt.path / DIR_COMPLICATED
    before = os.stat(p).st_size
    os.listdir(p)
    assert os.stat(p).st_size == before == 4


def test_compare_inodes_directories(mnt: Mounted) -> None:
    assert os.stat(mnt.path / DIR_WITH_KEEP).st_ino == os.stat(mnt.path / DIR_COMPLICATED / "keep").st_ino


def test_compare_inodes_files(mnt: Mounted) -> None:
    a = os.stat(mnt.path / DIR_COMPLICATED / ".keep").st_ino
    assert a == os.stat(mnt.path / DIR_COMPLICATED / "keep" / ".keep").st_ino


def test_compare_inodes_symlinks(mnt: Mounted) -> None:
    assert os.lstat(mnt.path / DIR_COMPLICATED / "aa").st_ino == os.lstat(mnt.path / SYMLINK2).st_ino


def test_read_wrong_paths_in_root(mnt: Mounted) -> None:
    assert not (mnt.path / "00000000000000000000000000000000-tes").exists()
    assert not (mnt.path / "0000000000000000000000000000000-test").exists()  # 31-char hash
    assert not (mnt.path / "not a store path").exists()
    assert not os.path.lexists(os.fsencode(mnt.path) + b"/00000000000000000000000000000000-\xff")
    assert (mnt.path / FILE_A).exists()
    assert not (mnt.path / "00000000000000000000000000000000-tes").exists()


def test_disallow_writes(mnt: Mounted) -> None:
    def erofs(fn, *args) -> None:
        with pytest.raises(OSError) as e:
            fn(*args)
        assert e.value.errno == errno.EROFS, (fn, args, e.value)

    erofs(os.open, mnt.path / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    erofs(os.open, mnt.path / FILE_A, os.O_WRONLY)
    erofs(os.open, mnt.path / FILE_A, os.O_RDWR)
    erofs(os.mkdir, mnt.path / DIR_WITH_KEEP / "sub")
    erofs(os.unlink, mnt.path / FILE_A)
    erofs(os.rmdir, mnt.path / DIR_COMPLICATED / "keep")
    erofs(os.rename, mnt.path / FILE_A, mnt.path / FILE_B)
    erofs(os.symlink, "x", mnt.path / DIR_WITH_KEEP / "link")
    erofs(os.link, mnt.path / FILE_A, mnt.path / DIR_WITH_KEEP / "hard")
    erofs(os.chmod, mnt.path / FILE_A, 0o777)
    erofs(os.truncate, mnt.path / FILE_A, 0)
    erofs(os.setxattr, mnt.path / FILE_A, "user.x", b"1")
    assert (mnt.path / FILE_A).read_bytes() == BLOB_A


def test_diff_against_source_tree(mnt: Mounted, store_dir: tuple[Path, StoreAddrs, Path, str]) -> None:
    """The imported, mounted tree is indistinguishable from its source for ``diff -r``, exec bits included."""
    _, _, source, nasty = store_dir
    result = subprocess.run(
        ["diff", "-r", "--no-dereference", str(source), str(mnt.path / nasty)], capture_output=True, check=False
    )
    assert result.returncode == 0 and result.stdout == b"", result.stdout.decode(errors="replace")
    src, dst = os.fsencode(source), os.fsencode(mnt.path / nasty)
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            a = os.lstat(os.path.join(dirpath, name))
            b = os.lstat(dst + os.path.join(dirpath, name)[len(src) :])
            assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), name
            if stat.S_ISREG(a.st_mode):
                assert stat.S_IMODE(b.st_mode) == (0o555 if a.st_mode & 0o100 else 0o444), name
                assert a.st_size == b.st_size
    # diff does not look at empty directories' contents; make sure they are there and empty.
    assert os.listdir(mnt.path / nasty / "empty-dir") == []


def test_mount_stays_up(mnt: Mounted) -> None:
    assert mnt.proc.poll() is None
    assert "Traceback" not in mnt.stderr()


@pytest.fixture(scope="module")
def listing_mnt(store_dir: tuple[Path, StoreAddrs, Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    Mounted
]:
    _, addrs, _, _ = store_dir
    with mounted(tmp_path_factory.mktemp("fuse-list"), addrs, "--list-root", "--show-xattr") as m:
        yield m


def test_root_with_listing(listing_mnt: Mounted, store_dir: tuple[Path, StoreAddrs, Path, str]) -> None:
    names = os.listdir(listing_mnt.path)
    assert set(names) == ALL_FIXTURE_PATHS | {store_dir[3]}
    assert len(names) == len(set(names))
    st = os.lstat(listing_mnt.path / FILE_A)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444 and st.st_size == 2
    # Entries found by listing and by lookup are the same inodes.
    by_name = {e.name: e.inode() for e in os.scandir(listing_mnt.path)}
    assert by_name[DIR_WITH_KEEP] == os.stat(listing_mnt.path / DIR_COMPLICATED / "keep").st_ino


def test_mount_options_from_the_environment(store_dir: tuple[Path, StoreAddrs, Path, str], tmp_path: Path) -> None:
    """The [mount] settings apply without flags too (here through their TVIXD_MOUNT_* variables)."""
    _, addrs, _, _ = store_dir
    env = {"TVIXD_MOUNT_LIST_ROOT": "true", "TVIXD_MOUNT_SHOW_XATTR": "true"}
    with mounted(tmp_path, addrs, env=env) as m:
        assert FILE_A in os.listdir(m.path)
        assert os.getxattr(m.path / FILE_A, "user.tvix.castore.blob.digest") == str(BLOB_A_DIGEST).encode()


def test_xattrs(listing_mnt: Mounted, mnt: Mounted) -> None:
    f = listing_mnt.path / FILE_A
    assert os.listxattr(f) == ["user.tvix.castore.blob.digest"]
    assert os.getxattr(f, "user.tvix.castore.blob.digest") == str(BLOB_A_DIGEST).encode()
    d = listing_mnt.path / DIR_COMPLICATED
    assert os.listxattr(d) == ["user.tvix.castore.directory.digest"]
    assert os.getxattr(d, "user.tvix.castore.directory.digest") == str(DIRECTORY_COMPLICATED_DIGEST).encode()
    keep = os.getxattr(d / ".keep", "user.tvix.castore.blob.digest")
    assert keep == str(EMPTY_DIGEST).encode() and keep.startswith(b"b3:")
    assert os.listxattr(listing_mnt.path / SYMLINK2, follow_symlinks=False) == []
    with pytest.raises(OSError) as e:
        os.getxattr(f, "user.other")
    assert e.value.errno == errno.ENODATA
    # Without --show-xattr the mount has no extended attributes at all (ENOSYS, as in the reference):
    # the kernel then answers every later call itself (EOPNOTSUPP), so `ls -l` sends no xattr requests.
    for _ in range(2):
        with pytest.raises(OSError) as e:
            os.listxattr(mnt.path / FILE_A)
        assert e.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError) as e:
            os.getxattr(mnt.path / FILE_A, "user.tvix.castore.blob.digest")
        assert e.value.errno == errno.EOPNOTSUPP


def test_missing_blob_and_directory(store_dir: tuple[Path, StoreAddrs, Path, str], tmp_path: Path) -> None:
    """PathInfos whose content is gone (here: empty blob and directory stores): EIO on those only."""
    _, addrs, _, _ = store_dir
    empty = embedded_store(tmp_path / "empty")
    broken = StoreAddrs(blob=empty.blob, directory=empty.directory, path_info=addrs.path_info)
    with mounted(tmp_path, broken) as m:
        # missing blob: stat works, reading fails with EIO
        assert os.stat(m.path / FILE_A).st_size == 2
        with pytest.raises(OSError) as e:
            (m.path / FILE_A).read_bytes()
        assert e.value.errno == errno.EIO
        # missing directory: stat works, listing and lookups inside fail with EIO
        assert stat.S_ISDIR(os.stat(m.path / DIR_WITH_KEEP).st_mode)
        with pytest.raises(OSError) as e:
            os.listdir(m.path / DIR_WITH_KEEP)
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            os.stat(m.path / DIR_WITH_KEEP / ".keep")
        assert e.value.errno == errno.EIO
        # ...and the mount is still up and serving what it can.
        assert os.readlink(m.path / SYMLINK2) == "/nix/store/somewhereelse"
        with pytest.raises(OSError) as e:
            (m.path / FILE_B).read_bytes()
        assert e.value.errno == errno.EIO
        assert m.proc.poll() is None
        assert m.stop() == 0, m.stderr()
        assert '"blob missing from the store"' in m.stderr()
        assert '"directory missing from the store"' in m.stderr()


def test_corrupt_blob_files_give_eio(tmp_path: Path) -> None:
    """Part A §7: bytes that no longer hash to their digest are never served, not even an intact range."""
    from tvixd.blobservice.fs import FsBlobService
    from tvixd.castore.digest import B3Digest
    from tvixd.proto.castore_pb2 import FileNode

    big = os.urandom(3 * 1024 * 1024)
    big_name = "99999999999999999999999999999999-big"
    short_name = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-big"
    addrs = embedded_store(tmp_path / "state")
    with Store.open(addrs) as store:
        populate_fixtures(store)
        big_digest = put_blob(store, big)
        put_path_info(store, FileNode(name=big_name.encode(), digest=big_digest, size=len(big)))
        short_digest = put_blob(store, big[::-1])
        put_path_info(store, FileNode(name=short_name.encode(), digest=short_digest, size=len(big)))
    blobs = FsBlobService(str(tmp_path / "state" / "blobs"))
    flipped = Path(blobs.path_of(B3Digest(big_digest)))  # same size, one byte changed near the start
    flipped.chmod(0o644)
    with open(flipped, "r+b") as f:
        f.seek(100)
        f.write(bytes([big[100] ^ 1]))
    short = Path(blobs.path_of(B3Digest(short_digest)))
    short.chmod(0o644)
    os.truncate(short, len(big) - 1)
    truncated = Path(blobs.path_of(B3Digest(BLOB_A_DIGEST)))
    truncated.chmod(0o644)
    truncated.write_bytes(BLOB_A[:1])
    with mounted(tmp_path, addrs) as m:
        with pytest.raises(OSError) as e:
            # These bytes are intact, but the blob is not. With passthrough (root) the open fails
            # (the blob is verified before the kernel is given the file), else the read.
            fd = os.open(m.path / big_name, os.O_RDONLY | os.O_DIRECT)
            try:
                os.pread(fd, 4096, 2 * 1024 * 1024)
            finally:
                os.close(fd)
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            (m.path / big_name).read_bytes()
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            (m.path / short_name).read_bytes()
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            (m.path / FILE_A).read_bytes()
        assert e.value.errno == errno.EIO
        assert (m.path / FILE_B).read_bytes() == BLOB_B
        assert m.proc.poll() is None
        assert m.stop() == 0, m.stderr()
        assert "is corrupt on disk" in m.stderr()
        assert "has 1 bytes" in m.stderr()
        assert f"has {len(big) - 1} bytes, not the {len(big)} expected" in m.stderr()


def test_over_a_real_daemon_with_backward_seeks(tmp_path: Path) -> None:
    """All three services over gRPC from a real daemon; the blob reader there is forward-only."""
    from tests.daemon import start_daemon

    with ExitStack() as stack:
        daemon = stack.enter_context(start_daemon(tmp_path / "daemon"))
        remote = StoreAddrs.daemon(daemon.addr)
        source = make_nasty_tree(tmp_path / "source")
        with Store.open(remote) as store:
            populate_fixtures(store)
        nasty = import_tree(remote, source)
        m = stack.enter_context(mounted(tmp_path, remote, log_level="debug"))
        fd = os.open(m.path / FILE_B, os.O_RDONLY | os.O_DIRECT)
        try:
            for off, n in [(1_000_000, 10), (5, 10), (600_000, 70_000), (0, 4096), (1_044_470, 100)]:
                assert os.pread(fd, n, off) == BLOB_B[off : off + n], (off, n)
        finally:
            os.close(fd)
        assert '"reopening blob to seek backwards"' in m.stderr()
        result = subprocess.run(
            ["diff", "-r", "--no-dereference", str(source), str(m.path / nasty)], capture_output=True, check=False
        )
        assert result.returncode == 0 and result.stdout == b"", result.stdout.decode(errors="replace")
        assert m.stop() == 0
        deadline = time.monotonic() + 10
        while os.path.ismount(m.path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.ismount(m.path)


def test_mount_through_fusermount3(store_dir: tuple[Path, StoreAddrs, Path, str], tmp_path: Path) -> None:
    """The non-root way in (fusermount3 mounts, the /dev/fuse fd comes back over _FUSE_COMMFD), run as anyone."""
    from tvixd.fuse import kernel
    from tvixd.fuse.fs import StoreFS

    _, addrs, _, nasty = store_dir
    dest = tmp_path / "mnt"
    dest.mkdir()
    with Store.open(addrs) as store:
        fd = kernel.mount_with_fusermount(str(dest), allow_other=False)
        fs = StoreFS(store)
        session = kernel.Session(fd, fs.handlers(), threads=2, may_block=fs.may_block)
        fs.session = session
        session.start()
        try:
            assert os.path.ismount(dest)
            assert (dest / FILE_B).read_bytes() == BLOB_B
            assert (dest / nasty / "big").stat().st_size == 3 * 1024 * 1024 + 12345
            with pytest.raises(OSError) as e:
                os.mkdir(dest / nasty / "new")
            assert e.value.errno == errno.EROFS
        finally:
            subprocess.run(["fusermount3", "-u", str(dest)], check=True, timeout=60)
            assert session.ended.wait(60)
            os.close(fd)
        assert not os.path.ismount(dest)


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough backing files need CAP_SYS_ADMIN")
def test_passthrough_verifies_a_big_file_once(store_dir: tuple[Path, StoreAddrs, Path, str], tmp_path: Path) -> None:
    """A big fs:// blob is verified at its first open and handed to the kernel; reopening it verifies nothing again."""
    _, addrs, source, nasty = store_dir
    with mounted(tmp_path, addrs, log_level="debug") as m:
        assert '"passthrough": true' in m.stderr()
        big = m.path / nasty / "big"
        expected = (source / "big").read_bytes()
        with open(big, "rb") as a, open(big, "rb") as b:  # two open files of one inode share the backing file
            assert a.read() == expected and b.read(4096) == expected[:4096]
        fd = os.open(big, os.O_RDONLY)
        try:
            assert os.pread(fd, 100, len(expected) - 50) == expected[-50:]
            assert os.pread(fd, 10, 12345) == expected[12345:12355]
        finally:
            os.close(fd)
        assert m.stop() == 0
        assert m.stderr().count('"blob verified for passthrough"') == 1


def test_unmounted_from_outside(tmp_path: Path) -> None:
    """`fusermount3 -u` by someone else ends the connection: the mount process notices and exits 0."""
    with mounted(tmp_path, embedded_store(tmp_path / "state")) as m:
        subprocess.run(["fusermount3", "-u", str(m.path)], check=True, timeout=60)
        assert m.proc.wait(timeout=60) == 0, m.stderr()
        assert '"unmounted from outside"' in m.stderr() and "Traceback" not in m.stderr()
        assert not os.path.ismount(m.path)
