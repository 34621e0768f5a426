"""The BlobBatch hook the importer writes through: visibility only at commit, abort leaves nothing.

The ``grpc`` cases talk to a real ``tvixd daemon`` subprocess (its batch pipelines
one-chunk uploads and checks them at commit, see ``tvixd.blobservice.grpc``).
"""

from __future__ import annotations

import os
import threading

import blake3
import pytest

from tests.daemon import start_daemon
from tvixd import errors
from tvixd.blobservice.from_addr import from_addr


@pytest.fixture(params=["memory", "fs", "grpc"])
def blob_service(request, tmp_path):
    if request.param == "grpc":
        with start_daemon(tmp_path) as daemon:
            service = from_addr(daemon.addr)
            yield service
            service.close()
        return
    service = from_addr("memory://" if request.param == "memory" else f"fs://{tmp_path / 'blobs'}")
    yield service
    service.close()


def _digest(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def test_commit_makes_blobs_visible(blob_service):
    batch = blob_service.batch()
    blobs = [os.urandom(n) for n in (0, 1, 4096, 100_000)] + [b"dup", b"dup"]
    digests = []
    for data in blobs:
        w = batch.open_write()
        w.write(data)
        digests.append(w.close())
    assert digests == [_digest(b) for b in blobs]
    batch.commit()
    for data, digest in zip(blobs, digests, strict=True):
        reader = blob_service.open_read(digest)
        assert reader is not None
        with reader:
            assert reader.read() == data
    batch.commit()  # nothing pending: fine


def test_fs_batch_defers_visibility_and_abort_discards(tmp_path):
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    batch = service.batch()
    w = batch.open_write()
    w.write(b"not yet")
    digest = w.close()
    assert not service.has(digest)  # closed, but invisible until commit
    batch.abort()
    assert not service.has(digest)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []  # no temp file left behind
    batch.commit()
    assert not service.has(digest)


@pytest.mark.parametrize("named", [False, True])
def test_fs_batch_commit_fails_on_a_files_writeback_error(tmp_path, monkeypatch, named):
    """A temp file whose writeback failed fails the commit even when the shared syncfs reported nothing
    (the filesystem's error may have gone to another batch's syncfs): nothing visible, nothing left.
    The disk error is simulated (the per-file wait answers EIO); anonymous and named temp files."""
    from tvixd.blobservice import fs

    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    checked = _failing_writeback_wait(monkeypatch)
    if named:
        monkeypatch.setattr(fs, "_fd_budget", lambda: 0)  # no anonymous temp files: named ones
    batch = service.batch()
    digests = []
    for data in [os.urandom(100_000) for _ in range(fs.SMALL_BATCH + 1)]:  # a smaller batch fsyncs each file
        w = batch.open_write()
        w.write(data)
        digests.append(w.close())
    with pytest.raises(errors.StorageError, match="Input/output error"):
        batch.commit()
    assert checked
    assert not any(service.has(d) for d in digests)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    assert batch._fds == 0
    service.close()


@pytest.mark.parametrize("fail", [False, True])
def test_fs_small_batch_fsyncs_each_blob_instead_of_a_syncfs(tmp_path, monkeypatch, fail):
    """A batch of at most SMALL_BATCH blobs (a one-file import) fsyncs its files and their directories and
    never sets up the shared syncfs; a failing fsync fails the commit: nothing visible, nothing left."""
    import errno

    from tvixd.blobservice import fs

    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        if fail:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    batch = service.batch()
    digests = []
    for i in range(fs.SMALL_BATCH):
        w = batch.open_write()
        w.write(os.urandom(1000 + i))
        digests.append(w.close())
    if fail:
        with pytest.raises(errors.StorageError, match="Input/output error"):
            batch.commit()
        assert not any(service.has(d) for d in digests)
    else:
        batch.commit()
        assert all(service.has(d) for d in digests)
        assert len(synced) >= fs.SMALL_BATCH + 2  # each file, then the root and fan-out directories
    assert "group" not in vars(service)  # the syncfs barrier (and ctypes) never set up
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    assert batch._fds == 0
    service.close()


def test_fs_batch_writers_from_many_threads(tmp_path):
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    batch = service.batch()
    blobs = [i.to_bytes(4, "little") * 1000 for i in range(64)]
    digests: list[bytes] = []
    lock = threading.Lock()

    def write(data: bytes) -> None:
        w = batch.open_write()
        w.write(data)
        d = w.close()
        with lock:
            digests.append(d)

    threads = [threading.Thread(target=write, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batch.commit()
    assert sorted(digests) == sorted(_digest(b) for b in blobs)
    assert all(service.has(d) for d in digests)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def _write_one(service, data: bytes) -> bytes:
    """A blob written on its own (no batch): visible when close() returns."""
    with service.open_write() as w:
        w.write(data)
        return w.close()


def _write(batch, data: bytes) -> bytes:
    w = batch.open_write()
    w.write(data)
    return w.close()


def test_commit_behind_then_commit_makes_blobs_visible(blob_service):
    """commit_behind() is a hint every backend takes: writing goes on, and commit() makes everything visible."""
    batch = blob_service.batch()
    first = [os.urandom(n) for n in (0, 10, 5000, 70_000)] * 3  # more than SMALL_BATCH, duplicates too
    digests = [_write(batch, data) for data in first]
    batch.commit_behind()
    batch.commit_behind()  # again, maybe while the first runs
    later = [os.urandom(3000) for _ in range(12)]
    digests += [_write(batch, data) for data in later]
    batch.commit()
    for data, digest in zip(first + later, digests, strict=True):
        assert digest == _digest(data)
        with blob_service.open_read(digest) as reader:
            assert reader.read() == data


def _failing_writeback_wait(monkeypatch) -> list[int]:
    """Make fs://'s per-file writeback check answer EIO (a disk error the shared syncfs did not report)."""
    import ctypes
    import errno

    from tvixd.blobservice import fs

    real = fs._load_sync_file_range()
    if real is None or fs._load_syncfs() is None:
        pytest.skip("no syncfs / sync_file_range here")
    checked: list[int] = []

    def failing_wait(fd: int, offset: int, nbytes: int, flags: int) -> int:
        if flags == fs.SYNC_FILE_RANGE_WAIT_AFTER:
            checked.append(fd)
            ctypes.set_errno(errno.EIO)
            return -1
        return real(fd, offset, nbytes, flags)

    monkeypatch.setattr(fs, "_load_sync_file_range", lambda: failing_wait)
    return checked


def test_fs_commit_behind_names_blobs_at_the_next_call_once_durable(tmp_path, monkeypatch):
    """The blobs closed before commit_behind() stay invisible while their sync runs; the next
    commit_behind() after it ended names them (the names made durable by the round it starts)."""
    from tvixd.blobservice import fs

    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    release = threading.Event()
    real_wait = fs._GroupSync.wait

    def slow_wait(self) -> None:
        assert release.wait(30)
        real_wait(self)

    monkeypatch.setattr(fs._GroupSync, "wait", slow_wait)
    batch = service.batch()
    digests = [_write(batch, os.urandom(2000)) for _ in range(20)]
    batch.commit_behind()
    first_round = batch._round
    assert first_round is not None and first_round.thread.is_alive()
    batch.commit_behind()  # its sync still runs: nothing named
    assert not any(service.has(d) for d in digests)
    release.set()
    first_round.thread.join()
    assert not any(service.has(d) for d in digests)  # durable, named by the owner's next call
    batch.commit_behind()
    assert all(service.has(d) for d in digests)
    assert batch._round is not None and batch._round is not first_round  # syncing the names just given
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    assert batch._fds == 0
    batch.commit()
    assert batch._round is None and not batch._named
    service.close()


@pytest.mark.parametrize("anonymous", [True, False])
def test_fs_put_new_skips_the_lookup_and_keeps_a_stored_file(tmp_path, monkeypatch, anonymous):
    """put_new() (the helper: the importer looked already) writes without looking; a blob that is stored
    after all keeps its file (an anonymous temp file) or gets the same bytes renamed over it (a named one,
    once the batch holds its share of descriptors), and nothing is left behind."""
    from tvixd.blobservice import fs

    if not anonymous:
        monkeypatch.setattr(fs, "_fd_budget", lambda: 0)
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    data = os.urandom(3000)
    stored = _write_one(service, data)
    inode = os.stat(service.path_of(stored)).st_ino
    batch = service.batch()
    assert batch.put_new(data) == stored
    assert len(batch._pending) == 1  # written again: not looked up
    batch_source = batch._pending[0][0]
    assert isinstance(batch_source, int) == (anonymous and service._anonymous_tmp)
    fresh = batch.put_new(b"a new one")
    batch.commit()
    if isinstance(batch_source, int):  # linked: the name is taken, the stored file stays
        assert os.stat(service.path_of(stored)).st_ino == inode
    with service.open_read(stored) as reader:  # else renamed over it: the same bytes
        assert reader.read() == data
    with service.open_read(fresh) as reader:
        assert reader.read() == b"a new one"
    assert os.listdir(tmp_path / "blobs" / "tmp") == [] and batch._fds == 0
    service.close()


@pytest.mark.parametrize("umask", [0o022, 0o277])
def test_fs_blobs_are_read_only_for_everyone_whatever_the_umask(tmp_path, umask):
    """Temp files are created 0o444; only a umask that takes read bits costs an fchmod, and either way a
    blob ends up 0o444."""
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    assert "_chmod" not in vars(service)  # opening reads no umask: a read command writes nothing
    old = os.umask(umask)
    try:
        single = _write_one(service, os.urandom(100))
        batch = service.batch()
        batched = [_write(batch, os.urandom(n)) for n in (10, 200_000)]
        batch.commit()
        assert service._chmod == bool(umask & 0o444)  # read once, at the first write
    finally:
        os.umask(old)
    for digest in [single, *batched]:
        assert os.stat(service.path_of(digest)).st_mode & 0o777 == 0o444
    service.close()


@pytest.mark.parametrize("empty_path", [True, False])
def test_fs_batch_names_anonymous_files_with_or_without_at_empty_path(tmp_path, monkeypatch, empty_path):
    """A batch links its anonymous temp files with AT_EMPTY_PATH where the kernel lets it (root here), else
    through /proc (without CAP_DAC_READ_SEARCH linkat answers ENOENT): the same blobs either way."""
    import ctypes
    import errno

    from tvixd.blobservice import fs

    if fs._load_linkat() is None or fs._load_syncfs() is None:
        pytest.skip("no linkat / syncfs here")
    if empty_path and os.geteuid() != 0:
        pytest.skip("AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH")
    if not empty_path:

        def refusing_linkat(fd, path, dir_fd, new, flags) -> int:
            ctypes.set_errno(errno.ENOENT)
            return -1

        monkeypatch.setattr(fs, "_load_linkat", lambda: refusing_linkat)
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    batch = service.batch()
    blobs = [os.urandom(n) for n in range(1, fs.SMALL_BATCH * 3)]
    digests = [_write(batch, data) for data in blobs]
    batch.commit()
    assert service._link_anonymous is (fs._link_fd_empty_path if empty_path else fs._link_fd)
    for data, digest in zip(blobs, digests, strict=True):
        with service.open_read(digest) as reader:
            assert reader.read() == data
    assert os.listdir(tmp_path / "blobs" / "tmp") == [] and batch._fds == 0
    service.close()


def test_fs_commit_behind_runs_one_at_a_time(tmp_path, monkeypatch):
    """A call while a commit runs behind starts nothing; the blobs closed meanwhile wait for the next commit."""
    from tvixd.blobservice import fs

    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    release = threading.Event()
    real_wait = fs._GroupSync.wait
    started: list[int] = []

    def slow_wait(self) -> None:
        started.append(1)
        assert release.wait(30)
        real_wait(self)

    monkeypatch.setattr(fs._GroupSync, "wait", slow_wait)
    batch = service.batch()
    first = [_write(batch, os.urandom(2000)) for _ in range(fs.SMALL_BATCH + 1)]
    batch.commit_behind()
    first_round = batch._round
    second = [_write(batch, os.urandom(2000)) for _ in range(fs.SMALL_BATCH + 1)]
    batch.commit_behind()
    assert batch._round is first_round  # still the first one
    assert not any(service.has(d) for d in first + second)
    assert len(started) == 1
    release.set()
    first_round.thread.join()
    batch.commit_behind()  # names the first round's blobs, starts syncing the second
    assert all(service.has(d) for d in first) and not any(service.has(d) for d in second)
    batch.commit()
    assert all(service.has(d) for d in second)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    service.close()


@pytest.mark.parametrize("then", ["commit", "commit_behind"])
def test_fs_commit_behind_error_surfaces_at_the_next_call(tmp_path, monkeypatch, then):
    """A commit behind that fails discards its blobs (nothing visible, no temp file) and the next commit or
    commit_behind raises its error; the batch still commits what is written afterwards."""
    from tvixd.blobservice import fs

    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    checked = _failing_writeback_wait(monkeypatch)
    batch = service.batch()
    lost = [_write(batch, os.urandom(100_000)) for _ in range(fs.SMALL_BATCH + 1)]
    batch.commit_behind()
    batch._round.thread.join()
    with pytest.raises(errors.StorageError, match="Input/output error"):
        getattr(batch, then)()
    assert checked
    monkeypatch.undo()  # the disk is fine again
    assert not any(service.has(d) for d in lost)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    assert batch._fds == 0
    kept = _write(batch, b"after the error")
    batch.commit()
    assert service.has(kept)
    service.close()


def test_fs_abort_waits_for_the_commit_behind(tmp_path, monkeypatch):
    """abort() lets a running commit behind finish (its blobs are durable and stay) and discards the rest;
    an error of that commit is dropped, not raised from abort."""
    from tvixd.blobservice import fs

    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    batch = service.batch()
    committed = [_write(batch, os.urandom(2000)) for _ in range(fs.SMALL_BATCH + 1)]
    batch.commit_behind()
    discarded = [_write(batch, os.urandom(2000)) for _ in range(3)]
    batch.abort()
    assert batch._round is None
    assert all(service.has(d) for d in committed)
    assert not any(service.has(d) for d in discarded)
    _failing_writeback_wait(monkeypatch)
    lost = [_write(batch, os.urandom(2000)) for _ in range(fs.SMALL_BATCH + 1)]
    batch.commit_behind()
    batch.abort()  # the failed commit's error is not raised here
    assert not any(service.has(d) for d in lost)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    assert batch._fds == 0
    service.close()


PUT = "/tvix.store.v1.BlobService/Put"
PUT_BLOBS = "/tvixd.v1.BlobBatchService/PutBlobs"


def _calls(daemon, method: str) -> list[dict]:
    """The access-log lines of ``method`` calls (stop the daemon first: then every line is written)."""
    return [e for e in daemon.events() if e.get("event") == "rpc" and e.get("method") == method]


def test_grpc_batch_uploads_identical_blobs_once(tmp_path):
    """Duplicates in one batch are sent once; small blobs share one PutBlobs call, big ones stream by Put."""
    big = os.urandom(3 * (1 << 20) + 5)  # four BlobChunks: the streaming path
    blobs = [b"same", b"other", b"same", b"", b"", big, b"same"]
    with start_daemon(tmp_path) as daemon:
        service = from_addr(daemon.addr)
        batch = service.batch()
        digests = []
        for data in blobs:
            w = batch.open_write()
            w.write(data)
            digests.append(w.close())
        batch.commit()
        assert digests == [_digest(b) for b in blobs]
        for data, digest in zip(blobs, digests, strict=True):
            reader = service.open_read(digest)
            assert reader is not None
            with reader:
                assert reader.read() == data
        service.close()
        assert daemon.stop() == 0  # every access-log line is written by now
        [put_blobs] = _calls(daemon, PUT_BLOBS)
        assert put_blobs["code"] == "OK"
        assert put_blobs["bytes_in"] == 2 + len(b"same") + 2 + len(b"other") + 2  # "same", "other", the empty blob
        [put] = _calls(daemon, PUT)  # the big one
        assert put["messages_in"] == 4


def test_grpc_batch_reports_a_failed_upload_at_commit(tmp_path):
    """The daemon refuses one upload (over its message limit): commit raises its error, naming the limit."""
    with start_daemon(tmp_path, "--max-message-size", "64KiB") as daemon:
        service = from_addr(daemon.addr)
        batch = service.batch()
        small, large = b"fits", os.urandom(100_000)
        for data in (small, large):
            w = batch.open_write()
            w.write(data)
            w.close()  # returns at once: the upload's outcome is commit's
        with pytest.raises(errors.ResourceExhausted, match="max_message_size=65536"):
            batch.commit()
        assert service.has(_digest(small))
        assert not service.has(_digest(large))
        batch.commit()  # the failure was reported once; nothing else pending
        w = batch.open_write()  # the same blob again: uploaded again (not skipped as a duplicate), refused again
        w.write(large)
        w.close()
        with pytest.raises(errors.ResourceExhausted, match="max_message_size=65536"):
            batch.commit()
        service.close()


def test_grpc_batch_raises_a_failed_upload_before_commit(tmp_path, monkeypatch):
    """Once an upload failed, the next close() raises it: an import stops early instead of reading on."""
    import tvixd.blobservice.grpc as grpc_blobs

    monkeypatch.setattr(grpc_blobs, "BATCH_CALLS", 1)  # sending a call waits for the one before to end
    monkeypatch.setattr(grpc_blobs, "BATCH_MESSAGE_BYTES", 100_004)  # one 100 kB blob per call
    with start_daemon(tmp_path, "--max-message-size", "64KiB") as daemon:
        service = from_addr(daemon.addr)
        batch = service.batch()
        blobs = [os.urandom(100_000) for _ in range(4)]  # each refused: a call over the daemon's limit
        # close 1 packs blob 1; close 2 sends call 1; close 3 raises if call 1 has failed by then, else
        # waits for its slot and sends call 2; close 4 at the latest sees call 1's failure.
        raised_at = None
        for i, data in enumerate(blobs, start=1):
            w = batch.open_write()
            w.write(data)
            try:
                w.close()
            except errors.ResourceExhausted as e:
                assert "max_message_size=65536" in str(e)
                raised_at = i
                break
        assert raised_at in (3, 4), f"the failed upload surfaced at close {raised_at}, not before commit"
        batch.abort()
        service.close()
