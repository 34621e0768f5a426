"""The BlobService conformance suite (SPEC Part B §9.4, §10.7), run against every backend in tests/backends.py."""

from __future__ import annotations

import errno
import io
import itertools
import os
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures import BLOB_A, BLOB_A_DIGEST, BLOB_B, BLOB_B_DIGEST, EMPTY_DIGEST
from tvixd.blobservice.base import BlobService
from tvixd.blobservice.from_addr import from_addr
from tvixd.castore.digest import B3Digest
from tvixd.errors import AlreadyClosed, DataLoss, InvalidRequest


def put(service: BlobService, data: bytes, chunk: int = 65536) -> B3Digest:
    writer = service.open_write()
    for i in range(0, len(data), chunk):
        assert writer.write(data[i : i + chunk]) == len(data[i : i + chunk])
    return writer.close()


def read_all(service: BlobService, digest: bytes) -> bytes:
    reader = service.open_read(digest)
    assert reader is not None
    with reader:
        return reader.read()


def test_has_nonexistent_false(blob_service):
    assert blob_service.has(BLOB_A_DIGEST) is False
    assert blob_service.size(BLOB_A_DIGEST) is None


def test_not_found_read(blob_service):
    assert blob_service.open_read(BLOB_A_DIGEST) is None


@pytest.mark.parametrize(("data", "digest"), [(BLOB_A, BLOB_A_DIGEST), (BLOB_B, BLOB_B_DIGEST)], ids=["small", "big"])
def test_put_has_get(blob_service, data, digest):
    assert put(blob_service, data) == digest
    assert blob_service.has(digest)
    assert blob_service.size(digest) == len(data)
    assert read_all(blob_service, digest) == data


def test_empty_blob(blob_service):
    writer = blob_service.open_write()
    assert writer.close() == EMPTY_DIGEST
    assert blob_service.has(EMPTY_DIGEST)
    assert read_all(blob_service, EMPTY_DIGEST) == b""


def test_chunking_irrelevant(blob_service):
    writer = blob_service.open_write()
    for b in (b"", BLOB_A[:1], b"", BLOB_A[1:], b""):
        writer.write(b)
    assert writer.close() == BLOB_A_DIGEST
    assert read_all(blob_service, BLOB_A_DIGEST) == BLOB_A


def test_put_twice_is_idempotent(blob_service):
    assert put(blob_service, BLOB_A) == BLOB_A_DIGEST
    assert put(blob_service, BLOB_A) == BLOB_A_DIGEST
    assert read_all(blob_service, BLOB_A_DIGEST) == BLOB_A


@pytest.mark.parametrize(("data", "digest"), [(BLOB_A, BLOB_A_DIGEST), (BLOB_B, BLOB_B_DIGEST), (b"", EMPTY_DIGEST)])
def test_read_verified(blob_service, data, digest):
    assert blob_service.read_verified(digest, len(data)) is None
    assert put(blob_service, data) == digest
    assert blob_service.read_verified(digest, len(data)) == data


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_read_verified_wrong_size_is_data_loss(blob_service, delta):
    """The caller was told another size (a FileNode's): DataLoss naming the blob and both sizes."""
    put(blob_service, BLOB_B)
    expected = len(BLOB_B) + delta
    with pytest.raises(DataLoss, match=re.escape(str(BLOB_B_DIGEST)) + f".*{expected}"):
        blob_service.read_verified(BLOB_B_DIGEST, expected)


def test_put_seek(blob_service):
    """SPEC Part B §9.4 put_seek: forward seeks that every backend (also gRPC) supports."""
    assert put(blob_service, BLOB_B) == BLOB_B_DIGEST
    reader = blob_service.open_read(BLOB_B_DIGEST)
    assert reader is not None
    with reader:
        assert reader.read(10) == BLOB_B[0:10]
        assert reader.seek(10) == 10
        assert reader.read(10) == BLOB_B[10:20]
        assert reader.seek(25) == 25
        assert reader.read(10) == BLOB_B[25:35]
        assert reader.seek(12345, io.SEEK_CUR) == 35 + 12345
        assert reader.read(10) == BLOB_B[12380:12390]
        assert reader.seek(len(BLOB_B)) == len(BLOB_B)
        assert reader.read() == b""


def test_close_is_idempotent(blob_service):
    writer = blob_service.open_write()
    writer.write(BLOB_A)
    assert writer.close() == BLOB_A_DIGEST
    assert writer.close() == BLOB_A_DIGEST
    writer.abort()  # after a successful close: nothing happens
    assert blob_service.has(BLOB_A_DIGEST)


def test_write_after_close_fails(blob_service):
    writer = blob_service.open_write()
    writer.close()
    with pytest.raises(AlreadyClosed):
        writer.write(b"x")


def test_abort_leaves_nothing(blob_service):
    writer = blob_service.open_write()
    writer.write(BLOB_B)
    writer.abort()
    writer.abort()
    assert not blob_service.has(BLOB_B_DIGEST)
    assert blob_service.open_read(BLOB_B_DIGEST) is None
    with pytest.raises(AlreadyClosed):
        writer.write(b"x")


def test_exception_in_with_block_aborts(blob_service):
    with pytest.raises(RuntimeError), blob_service.open_write() as writer:
        writer.write(BLOB_A)
        raise RuntimeError("boom")
    assert not blob_service.has(BLOB_A_DIGEST)


def test_failing_precommit_discards_the_blob(blob_service):
    """A precommit that raises (the server's "client went away" check) leaves nothing visible."""
    calls = []

    def refuse():
        calls.append(blob_service.has(BLOB_B_DIGEST))  # called before the blob is visible
        raise RuntimeError("client went away")

    writer = blob_service.open_write()
    writer.write(BLOB_B)
    with pytest.raises(RuntimeError, match="went away"):
        writer.close(precommit=refuse)
    assert calls == [False]
    assert not blob_service.has(BLOB_B_DIGEST)
    assert blob_service.open_read(BLOB_B_DIGEST) is None
    with pytest.raises(AlreadyClosed):
        writer.write(b"x")


def test_passing_precommit_commits(blob_service):
    calls = []
    writer = blob_service.open_write()
    writer.write(BLOB_A)
    assert writer.close(precommit=lambda: calls.append(1)) == BLOB_A_DIGEST
    assert calls == [1] and blob_service.has(BLOB_A_DIGEST)


def test_unclosed_writer_is_invisible(blob_service):
    writer = blob_service.open_write()
    writer.write(BLOB_A)
    assert not blob_service.has(BLOB_A_DIGEST)
    assert writer.close() == BLOB_A_DIGEST
    assert blob_service.has(BLOB_A_DIGEST)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33])
def test_invalid_digest_length(blob_service, bad):
    with pytest.raises(InvalidRequest, match=str(len(bad))):
        blob_service.has(bad)
    with pytest.raises(InvalidRequest, match=str(len(bad))):
        blob_service.open_read(bad)


def test_concurrent_writers_and_readers(blob_service):
    blobs = [bytes([i]) * (1000 + 997 * i) for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda b: put(blob_service, b, chunk=777), blobs))
    assert digests == [B3Digest.of(b) for b in blobs]
    errors: list[BaseException] = []

    def reader(i: int) -> None:
        try:
            for _ in range(3):
                assert read_all(blob_service, digests[i]) == blobs[i]
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(blobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_same_blob_written_concurrently(blob_service):
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda _: put(blob_service, BLOB_B, chunk=100_000), range(8)))
    assert set(digests) == {BLOB_B_DIGEST}
    assert read_all(blob_service, BLOB_B_DIGEST) == BLOB_B


# --- addresses (SPEC Part B §7.1, §10.7) -------------------------------------------------------------


@pytest.mark.parametrize("addr", ["memory://", "memory:"])
def test_from_addr_memory_valid(addr):
    assert from_addr(addr).has(BLOB_A_DIGEST) is False


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("http://foo.example/test", "unknown scheme"),
        ("foo", "no scheme"),
        ("memory://foo", "no host"),
        ("memory:///", "no path"),
        ("memory:///foo", "no path"),
        ("memory://?x=1", "query"),
        ("fs://", "absolute"),
        ("fs:", "absolute"),
        ("fs:///", "cowardly"),
        ("fs://foo.example", "invalid host"),
        ("fs://foo.example/tmp/x", "invalid host"),
        ("fs:relative/dir", "absolute"),
        ("sqlite:///tmp/x.sqlite", "unknown scheme"),
    ],
)
def test_from_addr_invalid(addr, why):
    with pytest.raises(InvalidRequest, match=why) as e:
        from_addr(addr)
    assert repr(addr) in str(e.value)


# --- fs:// specifics: layout, durability, corruption, crashes (SPEC Part A §7) --------------------------

WRITER_SCRIPT = """
import sys, time
from tvixd.blobservice.fs import FsBlobService
w = FsBlobService(sys.argv[1]).open_write()
w.write(b"x" * (4 << 20))
w._file.flush()
print("written", flush=True)
time.sleep(600)
"""


@pytest.fixture
def fs_service(tmp_path):
    from tvixd.blobservice.fs import FsBlobService

    service = FsBlobService(str(tmp_path / "blobs"))
    yield service
    service.close()


def blob_files(root) -> list:
    """Every file that is a blob (everything outside tmp/)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts)


def temp_files(tmp_dir, pid: int | None = None) -> list[str]:
    """Temp files of writes in progress: named ones in ``tmp_dir`` and anonymous (O_TMPFILE) ones ``pid`` has open."""
    import os

    found = sorted(os.listdir(tmp_dir))
    fd_dir = f"/proc/{os.getpid() if pid is None else pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(f"{tmp_dir}/#"):  # the kernel's name for an anonymous file in tmp_dir
            found.append(target)
    return found


def test_fs_layout(fs_service, tmp_path):
    put(fs_service, BLOB_A)
    h = BLOB_A_DIGEST.hex()
    path = tmp_path / "blobs" / h[:2] / h[2:]
    assert path.read_bytes() == BLOB_A
    assert path.stat().st_mode & 0o777 == 0o444
    assert blob_files(tmp_path / "blobs") == [path]
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def _flip_last_byte(tmp_path, digest: bytes) -> None:
    h = digest.hex()
    path = tmp_path / "blobs" / h[:2] / h[2:]
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_fs_corrupt_blob_raises_data_loss(fs_service, tmp_path):
    from tvixd.errors import DataLoss

    put(fs_service, BLOB_B)
    _flip_last_byte(tmp_path, BLOB_B_DIGEST)
    reader = fs_service.open_read(BLOB_B_DIGEST)
    with pytest.raises(DataLoss, match=str(BLOB_B_DIGEST).replace("+", r"\+")):
        reader.read()
    reader = fs_service.open_read(BLOB_B_DIGEST)
    got = b""
    with pytest.raises(DataLoss):
        while chunk := reader.read(100_000):
            got += chunk
    assert len(got) < len(BLOB_B)  # the final bytes were never returned


def test_fs_corrupt_small_blob(fs_service, tmp_path):
    from tvixd.errors import DataLoss

    put(fs_service, BLOB_A)
    _flip_last_byte(tmp_path, BLOB_A_DIGEST)
    with pytest.raises(DataLoss):
        fs_service.open_read(BLOB_A_DIGEST).read(1024)


@pytest.mark.parametrize("method", ["read_verified", "open_verified"])
@pytest.mark.parametrize(("data", "digest"), [(BLOB_A, BLOB_A_DIGEST), (BLOB_B, BLOB_B_DIGEST)], ids=["small", "big"])
def test_fs_verified_reads_corrupt_wrong_size_or_truncated(fs_service, tmp_path, small_windows, method, data, digest):
    """Another size, same-size corruption (in the last window) and truncation are all DataLoss naming the blob,
    raised before any byte is handed out."""
    read = getattr(fs_service, method)
    put(fs_service, data)
    with pytest.raises(DataLoss, match=re.escape(str(digest)) + f".*{len(data)} bytes, not the {len(data) + 1}"):
        read(digest, len(data) + 1)
    _flip_last_byte(tmp_path, digest)
    with pytest.raises(DataLoss, match=re.escape(str(digest)) + ".*corrupt"):
        read(digest, len(data))
    h = digest.hex()
    with open(tmp_path / "blobs" / h[:2] / h[2:], "r+b") as f:
        f.truncate(len(data) // 2)
    with pytest.raises(DataLoss, match=re.escape(str(digest)) + f".*{len(data) // 2} bytes, not the {len(data)}"):
        read(digest, len(data))


def test_fs_truncated_blob(fs_service, tmp_path):
    from tvixd.errors import DataLoss

    put(fs_service, BLOB_B)
    reader = fs_service.open_read(BLOB_B_DIGEST)
    h = BLOB_B_DIGEST.hex()
    (tmp_path / "blobs" / h[:2] / h[2:]).chmod(0o644)
    with open(tmp_path / "blobs" / h[:2] / h[2:], "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataLoss, match="truncated"):
        reader.read()


def test_fs_backward_and_end_seeks(fs_service):
    put(fs_service, BLOB_B)
    reader = fs_service.open_read(BLOB_B_DIGEST)
    assert reader.seek(-10, io.SEEK_END) == len(BLOB_B) - 10
    assert reader.read() == BLOB_B[-10:]
    assert reader.seek(5) == 5
    assert reader.read(5) == BLOB_B[5:10]
    assert reader.seek(len(BLOB_B) + 1) == len(BLOB_B) + 1
    assert reader.read() == b""


def test_fs_abandoned_writer_leaves_no_temp_file(fs_service, tmp_path):
    writer = fs_service.open_write()
    writer.write(BLOB_B)
    assert len(temp_files(tmp_path / "blobs" / "tmp")) == 1
    del writer
    assert temp_files(tmp_path / "blobs" / "tmp") == []
    assert blob_files(tmp_path / "blobs") == []


def test_fs_killed_writer_leaves_no_visible_blob(tmp_path):
    """A writer process killed with SIGKILL mid-write: nothing visible; a named temp file goes once stale."""
    import os
    import subprocess
    import sys

    from tests.conftest import tvixd_env
    from tvixd.blobservice.fs import FsBlobService

    root = tmp_path / "blobs"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(root)], stdout=subprocess.PIPE, env=tvixd_env()
    )
    try:
        assert proc.stdout.readline() == b"written\n"
    finally:
        proc.kill()
        proc.wait()
    digest = B3Digest.of(b"x" * (4 << 20))
    service = FsBlobService(str(root))
    assert not service.has(digest)
    assert blob_files(root) == []
    if service._anonymous_tmp:
        assert list((root / "tmp").iterdir()) == []  # an anonymous temp file dies with its process
        return
    [leftover] = list((root / "tmp").iterdir())
    assert leftover.stat().st_size == 4 << 20
    os.utime(leftover, (0, 0))  # make it look like a crash from long ago
    FsBlobService(str(root))
    assert list((root / "tmp").iterdir()) == []


def test_fs_os_error_names_path(fs_service, tmp_path):
    from tvixd.errors import StorageError

    h = BLOB_A_DIGEST.hex()
    (tmp_path / "blobs" / h[:2]).write_bytes(b"not a directory")
    writer = fs_service.open_write()
    writer.write(BLOB_A)
    with pytest.raises(StorageError, match=h[:2]):
        writer.close()
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


@pytest.mark.parametrize("behind", [False, True], ids=["inline", "write-behind"])
def test_fs_disk_full(small_disk, monkeypatch, behind):
    """ENOSPC → ResourceExhausted, and nothing visible (a 1 MiB tmpfs).

    With write-behind the failing write happens on the writer's thread and surfaces in a later
    ``write`` or in ``close``.
    """
    from tvixd.blobservice import fs
    from tvixd.blobservice.fs import FsBlobService
    from tvixd.errors import ResourceExhausted

    monkeypatch.setattr(fs, "WRITE_BEHIND_FROM", 300_000 if behind else 1 << 40)

    root = small_disk
    service = FsBlobService(str(root))
    writer = service.open_write()
    with pytest.raises(ResourceExhausted, match="no space"):
        for _ in range(30):
            writer.write(BLOB_B[:200_000])
        writer.close()
    assert writer._behind is None  # the thread (if any) has ended
    assert blob_files(root) == []
    assert list((root / "tmp").iterdir()) == []
    assert put(service, BLOB_A) == BLOB_A_DIGEST  # still usable afterwards


def test_fs_recreates_missing_fan_out_directory(fs_service, tmp_path):
    h = BLOB_A_DIGEST.hex()
    assert put(fs_service, BLOB_A) == BLOB_A_DIGEST
    (tmp_path / "blobs" / h[:2] / h[2:]).unlink()
    (tmp_path / "blobs" / h[:2]).rmdir()
    assert put(fs_service, BLOB_A) == BLOB_A_DIGEST
    assert read_all(fs_service, BLOB_A_DIGEST) == BLOB_A


def test_fs_from_addr_creates_directory(tmp_path):
    service = from_addr(f"fs://{tmp_path}/a/b/blobs")
    assert put(service, BLOB_A) == BLOB_A_DIGEST
    assert (tmp_path / "a" / "b" / "blobs" / "tmp").is_dir()


@pytest.mark.parametrize("behind", [False, True], ids=["inline", "write-behind"])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
def test_fs_large_blob_in_many_chunks_with_early_writeback(fs_service, tmp_path, monkeypatch, batched, behind):
    """A big blob written in chunks of every size (buffered and not) while writeback starts early is stored intact.

    With write-behind, the chunks are written by another thread after ``write`` returned: the caller's
    buffer is reused (overwritten) right after each call, as a reading loop does.
    """
    import random

    import blake3

    from tvixd.blobservice import fs

    monkeypatch.setattr(fs, "WRITEBACK_WINDOW", 256 << 10)  # many windows in a few MiB
    monkeypatch.setattr(fs, "WRITE_BEHIND_FROM", 1 << 20 if behind else 1 << 40)
    monkeypatch.setattr(fs, "WRITE_BEHIND_BYTES", 1 << 20)  # the writer waits for the thread now and then
    monkeypatch.setattr(fs, "DROP_BEHIND", 512 << 10)  # written-out bytes leave the page cache 2 windows back
    monkeypatch.setattr(fs, "DROP_ALIGN", 1 << 20)
    data = random.Random(7).randbytes(5 * (1 << 20) + 12345)
    sizes = itertools.cycle([777, 100_000, 1_500_000, 3, 300_001])
    batch = fs_service.batch() if batched else None
    writer = (batch or fs_service).open_write()
    buffer = bytearray(1_500_000)
    pos = 0
    while pos < len(data):
        chunk = data[pos : pos + next(sizes)]
        view = memoryview(buffer)[: len(chunk)]
        view[:] = chunk
        assert writer.write(view if pos % 2 else bytes(chunk)) == len(chunk)
        view[:] = b"\xff" * len(chunk)  # the caller reuses its buffer
        pos += len(chunk)
    assert (writer._behind is not None) == behind
    digest = writer.close()
    h = digest.hex()
    final = tmp_path / "blobs" / h[:2] / h[2:]
    if fs._load_sync_file_range() is not None:  # Linux: writeback was started on completed windows, never past the end
        assert 4 << 20 < writer._out.writeback_from <= len(data)
        # ... and bytes more than DROP_BEHIND behind it were written out and dropped from the page cache
        assert 2 << 20 <= writer._out.cached_from <= writer._out.writeback_from - (512 << 10)
        assert writer._out.cached_from % (1 << 20) == 0
    if batch is not None:
        batch.commit()
    if fs._load_sync_file_range() is not None and shutil.which("fincore"):
        cached = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(final)],
                                capture_output=True, text=True, check=True).stdout
        assert int(cached) <= len(data) - writer._out.cached_from + 4095  # whole pages
    assert digest == blake3.blake3(data).digest()
    assert read_all(fs_service, digest) == data  # a verified sequential read
    assert fs_service.read_verified(digest, len(data)) == data
    assert final.read_bytes() == data
    assert temp_files(str(tmp_path / "blobs" / "tmp")) == []


@pytest.mark.parametrize("behind", [False, True])
def test_fs_writeback_error_while_dropping_fails_the_write(fs_service, tmp_path, monkeypatch, behind):
    """A write error reported while waiting for a range's writeback (before dropping its pages) fails the
    blob: nothing visible, no temp file. Waiting takes the error from the file's error cursor, so the
    final fsync would not report it again. (The disk error itself is simulated: the wait answers EIO.)"""
    import ctypes

    from tvixd.blobservice import fs
    from tvixd.errors import StorageError

    real = fs._load_sync_file_range()
    if real is None:
        pytest.skip("no sync_file_range here")

    def failing_wait(fd: int, offset: int, nbytes: int, flags: int) -> int:
        if flags == fs.SYNC_FILE_RANGE_WAIT_ALL:
            ctypes.set_errno(errno.EIO)
            return -1
        return real(fd, offset, nbytes, flags)

    monkeypatch.setattr(fs, "_load_sync_file_range", lambda: failing_wait)
    monkeypatch.setattr(fs, "WRITEBACK_WINDOW", 256 << 10)
    monkeypatch.setattr(fs, "WRITE_BEHIND_FROM", 1 << 20 if behind else 1 << 40)
    monkeypatch.setattr(fs, "DROP_BEHIND", 512 << 10)
    monkeypatch.setattr(fs, "DROP_ALIGN", 1 << 20)
    writer = fs_service.open_write()
    with pytest.raises(StorageError, match="Input/output error"):
        for _ in range(24):
            writer.write(os.urandom(256 << 10))
        writer.close()
    assert blob_files(tmp_path / "blobs") == []
    assert temp_files(tmp_path / "blobs" / "tmp") == []


def test_fs_write_behind_abort_and_abandon_leave_nothing(fs_service, tmp_path, monkeypatch):
    """A writer aborted, or dropped, while its write-behind thread still has chunks queued: no blob, no temp file,
    no thread left."""
    import threading

    from tvixd.blobservice import fs

    monkeypatch.setattr(fs, "WRITE_BEHIND_FROM", 1 << 20)
    chunk = b"z" * (1 << 20)
    for ending in ("abort", "drop"):
        writer = fs_service.open_write()
        for _ in range(6):
            writer.write(chunk)
        thread = writer._behind._thread
        assert thread.is_alive()
        if ending == "abort":
            writer.abort()
        else:
            del writer
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert temp_files(tmp_path / "blobs" / "tmp") == []
        assert blob_files(tmp_path / "blobs") == []
    assert not any(t.name == "tvixd-blob-write" for t in threading.enumerate())


def test_fs_verified_reads_open_relative_to_the_blob_directory(fs_service, tmp_path):
    """Verified reads open blobs relative to one open descriptor of the blob directory; close() releases it
    and a read afterwards opens it again (no descriptor kept by a closed service, no read failing)."""
    digest = put(fs_service, BLOB_A)

    def open_fds() -> set[str]:
        return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if fd.isdigit()
                and os.path.exists(f"/proc/self/fd/{fd}")}

    assert fs_service.read_verified(digest, len(BLOB_A)) == BLOB_A
    root = str(tmp_path / "blobs")
    assert root in open_fds()
    with fs_service.open_verified(digest, len(BLOB_A)) as blob:
        assert b"".join(bytes(w) for w in blob.windows()) == BLOB_A
    fs_service.close()
    assert root not in open_fds()
    assert fs_service.read_verified(digest, len(BLOB_A)) == BLOB_A
    assert fs_service.read_verified(bytes(range(32)), 6) is None
    fs_service.close()
    assert root not in open_fds()


# --- open_verified: a big blob verified whole, then handed out as mappings (fs://) ----------------------


def test_open_verified_is_optional(blob_service):
    """Backends without local files say so (the NAR renderer then streams through open_read)."""
    from tvixd.blobservice.fs import FsBlobService

    put(blob_service, BLOB_B)
    if isinstance(blob_service, FsBlobService):
        with blob_service.open_verified(BLOB_B_DIGEST, len(BLOB_B)) as blob:
            assert b"".join(blob.windows()) == BLOB_B
    else:
        with pytest.raises(NotImplementedError):
            blob_service.open_verified(BLOB_B_DIGEST, len(BLOB_B))


@pytest.fixture
def small_windows(monkeypatch):
    """Map one allocation granule at a time, so a small blob spans several windows."""
    import mmap

    from tvixd.blobservice import fs

    monkeypatch.setattr(fs, "MAP_WINDOW", mmap.ALLOCATIONGRANULARITY)
    return mmap.ALLOCATIONGRANULARITY


def test_fs_open_verified_windows(fs_service, small_windows):
    """Several windows, in order, exactly the blob; missing -> None; the views outlive close()."""
    data = os.urandom(3 * small_windows + 123)
    digest = put(fs_service, data)
    assert fs_service.open_verified(BLOB_A_DIGEST, len(BLOB_A)) is None
    with fs_service.open_verified(digest, len(data)) as blob:
        windows = list(blob.windows())
    assert [len(w) for w in windows] == [small_windows] * 3 + [123]
    assert b"".join(windows) == data
    with pytest.raises(AlreadyClosed):
        next(blob.windows())


@pytest.mark.parametrize("addr", ["memory://", "fs://{tmp}/blobs"], ids=["memory", "fs"])
def test_embedded_batch_makes_blobs_visible_only_at_commit(tmp_path, addr):
    """memory:// and fs:// defer a batch's blobs: invisible until commit, gone after abort or a failed precommit."""
    service = from_addr(addr.format(tmp=tmp_path))
    try:
        def put(batch, data: bytes) -> B3Digest:
            with batch.open_write() as w:
                w.write(data)
                return w.close()

        batch = service.batch()
        aborted = put(batch, b"aborted " * 10_000)
        batch.abort()
        refused = put(batch, b"refused " * 10_000)

        class ClientLeft(Exception):
            pass

        def client_left() -> None:
            raise ClientLeft

        with pytest.raises(ClientLeft):
            batch.commit(precommit=client_left)
        kept = put(batch, b"kept " * 10_000)
        assert not service.has(kept)
        batch.commit()
        assert service.has(kept) and service.open_read(kept).read() == b"kept " * 10_000
        assert not service.has(aborted) and not service.has(refused)
    finally:
        service.close()
