"""``fs:///abs/dir``: a content-addressed blob directory.

Layout: ``<dir>/<hex[:2]>/<hex[2:]>`` holds the blob whose blake3 digest is
``hex`` (lowercase hex of the 32 bytes); ``<dir>/tmp/`` holds writes in
progress. Paths are built only from hex digests, so nothing a client sends can
name a file outside the directory.

Writes (SPEC Part A §7): bytes go to a temp file in ``tmp/`` (same filesystem,
so naming it is atomic) and are hashed as they are written; writes up to
``SMALL_BLOB`` stay in memory until ``close``, so a blob already stored costs no
file at all. ``close`` makes the bytes durable, runs the precommit check, gives
the file the name of the digest it was hashed to, and makes that name durable
before returning. On Linux the temp file is anonymous (``O_TMPFILE``) and gets
its name with one ``linkat``: one directory operation instead of a create and a
rename, and a killed writer leaves nothing at all. Elsewhere it is a named file
renamed into place; an aborted, abandoned or killed writer leaves at most that
temp file, which is not a blob; temp files older than an hour are removed when
the service is opened. Until the name exists nothing is visible.

Durability: a single write (a daemon Put) fsyncs its file and its fan-out
directory. :class:`FsBlobBatch` (the embedded import) makes a whole batch durable
with one ``syncfs`` for the bytes and one for the names, shared with batches
committing at the same time (:class:`_GroupSync`); the importer has it commit
behind its walk (``commit_behind``), so those syncs overlap the reading. Single
writes do not use ``syncfs``: it also flushes unrelated dirty data on the same filesystem, so a Put
would wait for whatever else the machine is writing (a download, a build), and
measured it gained no wall time for concurrent Puts: ext4 already merges
concurrent fsyncs into one journal commit (12 threads, 2-core VM at load 6-10:
770 blobs/s with a shared ``syncfs``, 702 with fsyncs per write; importing
/usr/lib/python3 through a daemon took the same time either way). Every
``WRITEBACK_WINDOW`` a writer has the kernel start writing its file out, so the
disk works while bytes still arrive instead of all at the final fsync/``syncfs``
(1 GiB Put through a daemon, 24 GiB RAM, ~600 MiB/s disk: 168 -> 258 MiB/s).

Reads verify: a reader hashes the bytes it returns while they are read
sequentially from offset 0, and the read that reaches the end raises
``DataLoss`` naming the digest instead of returning the last bytes if the
content no longer hashes to the name. After a seek to anywhere but the current
position, that reader no longer verifies (random access, e.g. FUSE, cannot be
verified without reading the whole blob); a full sequential read always is.

Throughput: ``python bench/blob_fs_write.py`` (4 KiB blobs, 1-16 threads) and
BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import blake3

from tvixd.blobservice.base import BlobBatch, BlobReader, BlobService, BlobWriter, Precommit, VerifiedBlob
from tvixd.castore.digest import DIGEST_LEN, B3Digest
from tvixd.errors import AlreadyClosed, DataLoss, ResourceExhausted, StorageError

TMP_DIR = "tmp"
STALE_TMP_SECONDS = 3600
"""Temp files older than this are leftovers of crashed writers (no write takes an hour between two writes)."""
WRITE_BUFFER = 1 << 20
SMALL_BLOB = 64 << 10
"""Writes are kept in memory up to this size: a blob already stored then costs no temp file at all."""
READ_ALL_CHUNK = 1 << 20
MAP_WINDOW = 128 << 20
"""A verified blob is mapped this much at a time to be hashed and written: RSS stays flat (mapped pages count).

Hashing 1 GiB in windows of 64 MiB took 0.03-0.04 s longer than in 128 MiB ones (an unmap and a join of
blake3's threads per window); 256 MiB or the whole file gained another ~0.01 s at up to 8x the RSS.
"""
WRITEBACK_WINDOW = 8 << 20
"""A writer asks the kernel to start writing its file out each time this much more has reached it.

Measured (1 GiB in 1 MiB writes): 4, 8 and 16 MiB gave the same total; at 8 MiB close's fsync
took 0.01-0.03 s (1.4-1.8 s without), at 32 MiB 0.1-0.5 s.
"""
WRITE_BEHIND_FROM = WRITEBACK_WINDOW
"""A writer that has written this much hands further writes to a thread of its own (:class:`_WriteBehind`)."""
DROP_BEHIND = 32 << 20
"""A big blob's bytes this far behind the newest writeback are waited for and dropped from the page cache.

Far enough back that the disk always has a few windows queued (0-64 MiB measured the same).
"""
DROP_ALIGN = 2 << 20
"""Dropped ranges start and end at multiples of this: the page cache holds big folios (up to 2 MiB)
and keeps any that a range only partly covers (unaligned, a test's 5.3 MB blob kept 3.7 MB cached where
2.3 MB were asked for)."""
WRITE_BEHIND_BYTES = 16 << 20
"""Bytes queued for that thread at most; a writer with more waits (the disk sets the pace)."""


def _os_error(e: OSError, what: str, path: str) -> Exception:
    """Classify an OSError: a full disk or quota is ResourceExhausted, anything else a StorageError."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"no space left to {what} {path}: {e.strerror}")
    return StorageError(f"cannot {what} {path}: {e.strerror or e}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dirs(paths: set[str]) -> None:
    for path in paths:
        _fsync_dir(path)


def _load_libc(name: str, *argtypes: type) -> Callable[..., int] | None:
    """A libc function Python's ``os`` lacks (Linux ``syncfs``, ``sync_file_range``), or None where there is none."""
    try:
        import ctypes

        function = getattr(ctypes.CDLL(None, use_errno=True), name)  # CDLL calls release the GIL
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    return function


@functools.cache
def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs(fd)``, or None where there is none (loaded on first use: read commands never need ctypes)."""
    import ctypes

    return _load_libc("syncfs", ctypes.c_int)


@functools.cache
def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range(fd, offset, nbytes, flags)``, or None where there is none (loaded on first use)."""
    import ctypes

    return _load_libc("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
SYNC_FILE_RANGE_WAIT_ALL = 7  # WAIT_BEFORE | WRITE | WAIT_AFTER: the range is on disk (not durable: no flush)


def _raise_errno(what: str) -> None:
    """Raise the OSError of the libc call that just failed (``ctypes`` keeps its errno)."""
    import ctypes

    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), what)


def _syncfs(path: str) -> bool:
    """Flush the whole filesystem holding ``path`` (Linux ``syncfs``); False where that is unavailable."""
    syncfs = _load_syncfs()
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            _raise_errno(path)
    finally:
        os.close(fd)
    return True


class _GroupSync:
    """Group commit: batches committing at about the same time share one ``syncfs``.

    ``wait()`` returns once a ``syncfs`` of the blob filesystem that *started after
    the call* has completed, so whatever the caller wrote or renamed before calling
    is durable. Whichever waiter finds no sync running runs the next one (no
    background thread); callers arriving meanwhile queue for the one after, which
    covers all of them. A batch waits twice (its bytes, then its names); with
    several committing, each sync serves the names of one and the bytes of the next.
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._cond = threading.Condition(threading.Lock())
        self._running = False
        self._started = 0  # syncs are numbered 1, 2, ...: the last one begun,
        self._finished = 0  # the last one ended,
        self._succeeded = 0  # and the last one that succeeded
        self._error: OSError | None = None

    def wait(self) -> None:
        """Block until everything done before this call is durable; OSError if the syncs failed."""
        with self._cond:
            need = self._started + 1  # a running sync may have begun before our writes
        while True:
            with self._cond:
                while self._running and self._finished < need:
                    self._cond.wait()
                if self._succeeded >= need:
                    return
                if self._finished >= need:  # every sync since our call failed
                    assert self._error is not None
                    raise OSError(self._error.errno, self._error.strerror, self._root)
                self._running = True
                self._started += 1
                mine = self._started
            error = None
            try:
                _syncfs(self._root)
            except OSError as e:
                error = e
            finally:
                with self._cond:
                    self._running = False
                    self._finished = mine
                    if error is None:
                        self._succeeded = mine
                    else:
                        self._error = error
                    self._cond.notify_all()


class FsBlobReader(BlobReader):
    """Reads one blob file; verifies its digest while the reads are sequential (see the module docstring)."""

    def __init__(self, file: io.FileIO, digest: B3Digest, path: str, size: int) -> None:
        super().__init__()
        self._file = file
        self._digest = digest
        self._path = path
        self.size = size
        self._pos = 0
        self._hasher: blake3.blake3 | None = blake3.blake3()  # None once verification is off or done

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        n = min(len(view), self.size - self._pos)
        if n <= 0:
            self._verify_at_end()
            return 0
        try:
            got = self._file.readinto(view[:n])
        except OSError as e:
            raise _os_error(e, "read blob file", self._path) from e
        self._account(view[:got])
        return got

    def _account(self, data: bytes | memoryview) -> None:
        """Hash what was just read (nothing read: the file is shorter than its blob); at the end, verify."""
        if not data:
            raise DataLoss(f"blob {self._digest} is truncated on disk ({self._path}: {self._pos} of {self.size} bytes)")
        if self._hasher is not None:
            self._hasher.update(data)
        self._pos += len(data)
        if self._pos >= self.size:
            self._verify_at_end()

    def _verify_at_end(self) -> None:
        if self._hasher is None:
            return
        hasher, self._hasher = self._hasher, None
        if hasher.digest() != self._digest:
            raise DataLoss(f"blob {self._digest} is corrupt on disk: its bytes no longer hash to it ({self._path})")

    def read(self, size: int = -1) -> bytes:
        # Not RawIOBase.read(n): it zero-fills n bytes, reads into them and copies them out again
        # (for a small blob read by the NAR renderer's 1 MiB requests, the memset alone was about a
        # third of `dump-path` on /usr/share/doc; for a daemon's Read, two passes over every byte).
        # The file's own read fills the bytes object once. Never ask for more than what is left.
        if size is None or size < 0:
            return self.readall()
        n = min(size, self.size - self._pos)
        if n <= 0:
            if size:
                self._verify_at_end()  # at EOF: the check readinto would have made
            return b""
        try:
            data = self._file.read(n)
        except OSError as e:
            raise _os_error(e, "read blob file", self._path) from e
        self._account(data)
        return data

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(READ_ALL_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = pos
        elif whence == io.SEEK_CUR:
            target = self._pos + pos
        elif whence == io.SEEK_END:
            target = self.size + pos
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target != self._pos:
            self._hasher = None  # random access: this reader no longer verifies
            self._file.seek(target)
            self._pos = target
        return target

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class FsVerifiedBlob(VerifiedBlob):
    """An open blob file handed out as read-only mappings of ``MAP_WINDOW`` bytes (see ``open_verified``).

    A mapping is unmapped as soon as nothing references its view any more, so a caller
    that writes each window and drops it keeps at most one window mapped.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd: int | None = fd
        self.size = size

    def windows(self) -> Iterator[memoryview]:
        fd = self._fd
        if fd is None:
            raise AlreadyClosed("verified blob already closed")
        import mmap  # here: only files bigger than the NAR renderer's SMALL_FILE are mapped

        for offset in range(0, self.size, MAP_WINDOW):
            length = min(MAP_WINDOW, self.size - offset)
            yield memoryview(mmap.mmap(fd, length, offset=offset, prot=mmap.PROT_READ))

    def fileno(self) -> int:
        """The open, verified blob file (valid until :meth:`close`): FUSE hands it to the kernel for passthrough."""
        if self._fd is None:
            raise AlreadyClosed("verified blob already closed")
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the mappings stay valid on their own


def _unchangeable(data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """``data`` itself if nobody can change it (bytes, or a read-only view of bytes: a gRPC chunk), else a copy.

    A chunk handed to :class:`_WriteBehind` is written after ``write`` returned, when the
    caller may already be reusing its buffer.
    """
    if type(data) is bytes or (isinstance(data, memoryview) and data.readonly and type(data.obj) is bytes):
        return data
    return bytes(data)


class _TempFileOut:
    """A spilled blob's way into its temp file: writes, and writeback started every ``WRITEBACK_WINDOW``."""

    __slots__ = ("cached_from", "fd", "file", "writeback_from", "written")

    def __init__(self, file: io.BufferedWriter | io.FileIO, fd: int) -> None:
        self.file = file
        self.fd = fd
        self.written = 0  # bytes handed to the file (some may still be in its buffer)
        self.writeback_from = 0  # where the next _start_writeback range begins
        self.cached_from = 0  # bytes before this were written out and dropped from the page cache

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.file.write(data)
        self.written += len(data)
        if self.written - self.writeback_from >= WRITEBACK_WINDOW and _load_sync_file_range() is not None:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Have the kernel start writing out what reached the file since the last call (Linux ``sync_file_range``).

        Otherwise a big blob waits in the page cache (the kernel starts background
        writeback late on a machine with much RAM) until ``close``'s fsync or the
        batch's ``syncfs`` writes it all at once, so disk time adds to upload time
        instead of overlapping it. This only starts writeback; it waits for nothing
        but a full device queue, and durability still comes from that fsync/``syncfs``.

        Bytes ``DROP_BEHIND`` back are then waited for and dropped from the page cache,
        so a big blob streams through the same few pages instead of filling new ones.
        On this VM the kernel's copy into never-used page-cache pages was the largest
        cost of a 1 GiB Put: ``write()`` of 1 GiB took 1.5-2.1 s of CPU into new pages,
        0.5 s with the bytes dropped behind (1 GiB Put through a daemon: median 300 ->
        ~360 MiB/s, the in-process writer's CPU 1.8-2.2 -> 0.8-1.0 s). It also keeps one
        huge upload from evicting the page cache everyone else uses. The price: the
        first read of a big blob comes from disk (Read right after Put 560-900 -> 390-460
        MiB/s here). Blobs smaller than ``DROP_BEHIND`` plus a window stay cached whole.
        """
        end = os.lseek(self.fd, 0, os.SEEK_CUR)  # what the write buffer has passed to the kernel so far
        if end > self.writeback_from:
            sync_file_range = _load_sync_file_range()
            assert sync_file_range is not None
            # Advice: a failure here (0 or not) changes nothing; the fsync/syncfs reports write errors.
            sync_file_range(self.fd, self.writeback_from, end - self.writeback_from, SYNC_FILE_RANGE_WRITE)
            drop_to = (self.writeback_from - DROP_BEHIND) // DROP_ALIGN * DROP_ALIGN
            if drop_to > self.cached_from:
                written = drop_to - self.cached_from
                # Not advice: waiting for writeback takes the file's write error for itself (the
                # kernel's per-file error cursor moves on), so the final fsync would no longer see it.
                if sync_file_range(self.fd, self.cached_from, written, SYNC_FILE_RANGE_WAIT_ALL) != 0:
                    _raise_errno("temp file")
                try:
                    os.posix_fadvise(self.fd, self.cached_from, written, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass  # advice as well: the bytes stay in the cache
                self.cached_from += written
            self.writeback_from = end


class _WriteBehind:
    """Writes a big blob's chunks into its temp file on a thread of its own, in order.

    Why: a daemon Put received a chunk, hashed it and wrote it on one gRPC worker
    thread, one after the other, and the write (the kernel's copy into new page-cache
    pages) was the largest part: ~40% of the daemon's CPU for a 1 GiB Put (perf).
    With the write on this thread, the caller hashes and receives the next chunks
    meanwhile (both release the GIL). At most ``WRITE_BEHIND_BYTES`` wait here, so
    memory stays bounded and a slow disk slows the upload. The thread holds no
    reference to the writer: an abandoned writer is still collected (and aborts).
    """

    def __init__(self, out: _TempFileOut) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._chunks: deque[bytes | memoryview | None] = deque()  # None: no more chunks
        self._queued = 0  # bytes in _chunks
        self._error: Exception | None = None  # the first write's failure (an OSError, or a bug)
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, args=(out,), name="tvixd-blob-write", daemon=True)
        self._thread.start()

    def put(self, data: bytes | memoryview) -> None:
        """Queue ``data`` (which must not change any more); raises an earlier write's error (OSError for I/O)."""
        with self._cond:
            while self._queued and self._queued + len(data) > WRITE_BEHIND_BYTES and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._chunks.append(data)
            self._queued += len(data)
            self._cond.notify_all()

    def _run(self, out: _TempFileOut) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._chunks:
                    cond.wait()
                data = self._chunks[0]
            if data is None:
                return
            if self._error is None and not self._cancelled:
                try:
                    out.write(data)
                except Exception as e:  # kept for the writer: a dead thread must not leave it waiting
                    self._error = e
            with cond:
                self._chunks.popleft()
                self._queued -= len(data)
                cond.notify_all()

    def finish(self) -> None:
        """Return once every queued chunk is in the file; raises the first write's error if one failed."""
        self._end()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Skip what is still queued and stop the thread (the writer is being aborted)."""
        self._cancelled = True
        self._end()

    def _end(self) -> None:
        with self._cond:
            self._chunks.append(None)
            self._cond.notify_all()
        self._thread.join()


class _FsBlobWriter(BlobWriter):
    """Streams into a temp file in ``tmp/``, hashing as it goes; ``close`` makes it durable and renames it."""

    def __init__(self, service: FsBlobService, batch: FsBlobBatch | None = None) -> None:
        self._service = service
        self._batch = batch  # set: close() leaves sync and rename to batch.commit()
        self._hasher = blake3.blake3()
        self._small: bytearray | None = bytearray()  # the bytes so far while they fit SMALL_BLOB
        self._file: io.BufferedWriter | io.FileIO | None = None  # over _fd, which it does not close
        self._fd: int | None = None
        self._tmp_path: str | None = None  # None with an anonymous (O_TMPFILE) temp file
        self._digest: B3Digest | None = None
        self._done = False
        self._out: _TempFileOut | None = None  # the temp file's bytes once they no longer fit SMALL_BLOB
        self._behind: _WriteBehind | None = None  # from WRITE_BEHIND_FROM bytes on: writes on a thread

    def _open_tmp(self, buffering: int) -> io.BufferedWriter | io.FileIO:
        """Create the temp file (see :meth:`_create_tmp`) with a file object over it for streamed writes."""
        self._file = open(self._create_tmp(), "wb", buffering=buffering, closefd=False)
        return self._file

    def _create_tmp(self) -> int:
        """Create the temp file: anonymous if the service can (nothing to rename or clean up), else named."""
        service = self._service
        anonymous = service._anonymous_tmp and (self._batch is None or self._batch._hold_fd())
        self._fd, self._tmp_path = service._new_tmp(anonymous)
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise AlreadyClosed("blob writer already closed")
        self._hasher.update(data)
        small = self._small
        if small is not None and len(small) + len(data) <= SMALL_BLOB:
            small += data
            return len(data)
        try:
            if self._behind is not None:
                self._behind.put(_unchangeable(data))
                return len(data)
            if small is not None:
                self._small = None
                self._out = _TempFileOut(self._open_tmp(WRITE_BUFFER), self._fd)  # type: ignore[arg-type]
                self._out.write(small)
            assert self._out is not None
            self._out.write(data)
            if self._out.written >= WRITE_BEHIND_FROM:
                self._behind = _WriteBehind(self._out)
        except OSError as e:
            self.abort()
            raise _os_error(e, "write", self._tmp_path or "temp file") from e
        return len(data)

    def close(self, precommit: Precommit | None = None) -> B3Digest:
        if self._digest is not None:
            return self._digest
        if self._done:
            raise AlreadyClosed("blob writer was aborted or previously closed with an error")
        service = self._service
        try:
            digest = B3Digest(self._hasher.digest())
            final = service.path_of(digest)
            if os.path.exists(final):
                if self._batch is None:
                    service._sync_dir_of(final)  # its writer may have named it and not yet made that durable
                else:
                    self._batch._found(final)  # the same, at commit
                if precommit is not None:
                    precommit()
                self.abort()  # already stored: not rewritten
            else:
                small, self._small = self._small, None
                file = self._file
                # A small blob is written below in one piece, straight to the descriptor: a file object
                # for it cost ~6 µs of ~200 per file of an import of small files.
                fd = self._fd if file is not None else self._create_tmp()
                assert fd is not None
                try:
                    behind, self._behind = self._behind, None
                    if behind is not None:
                        behind.finish()  # every byte in the file (or the thread's write error)
                    if file is not None:
                        file.flush()
                        file.close()
                        self._file = None
                    service._seal_tmp(fd, small)  # (small: None once the bytes went to the file)
                    if self._batch is None:
                        os.fsync(fd)
                    if self._tmp_path is not None:
                        self._fd = None
                        os.close(fd)
                except OSError as e:
                    raise _os_error(e, "write", self._tmp_path or "temp file") from e
                source = self._tmp_path if self._tmp_path is not None else fd
                if precommit is not None:
                    precommit()
                if self._batch is not None:
                    self._batch._add(source, final)  # the batch owns the temp file now
                else:
                    service._publish(source, final)
                    if self._fd is not None:
                        os.close(self._fd)
                self._fd = self._tmp_path = None
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._digest = digest
        return digest

    def abort(self) -> None:
        self._done = True
        self._small = None
        behind, self._behind = self._behind, None
        if behind is not None:
            behind.cancel()  # before the file is closed under it
        file, self._file = self._file, None
        fd, self._fd = self._fd, None
        tmp_path, self._tmp_path = self._tmp_path, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # the bytes are being thrown away anyway
        if fd is not None:
            os.close(fd)  # an anonymous temp file vanishes with its last descriptor
            if self._batch is not None and tmp_path is None:
                self._batch._release_fds(1)
        if tmp_path is not None:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass

    def __del__(self) -> None:
        # An abandoned writer must not leave a temp file behind for an hour.
        if self._digest is None and (self._fd is not None or self._tmp_path is not None):
            self.abort()


SMALL_BATCH = 8
"""A commit of at most this many blobs fsyncs each one and its directories instead of sharing a ``syncfs``.

Why: a one-file import's commit took 5 ms with two ``syncfs`` (plus ~3 ms to load ctypes for them)
against ~2 ms of fsyncs, and a ``syncfs`` also waits for whatever else is dirty on the filesystem.
"""


class _SyncRound:
    """The blobs of one ``commit_behind``: made durable by ``thread``, then named by the batch's owner."""

    __slots__ = ("error", "pending", "shared_sync", "thread")

    def __init__(self, pending: list[tuple[str | int, str]]) -> None:
        self.pending = pending
        self.thread: threading.Thread
        self.error: BaseException | None = None
        self.shared_sync = False  # made durable by a shared syncfs: each file's writeback error is checked


class FsBlobBatch(BlobBatch):
    """Blob writes whose fsyncs and renames happen together at ``commit()`` (the importer's hook).

    Writers close into temp files without fsync (anonymous ones held open, up to a
    quarter of the descriptor limit, then named ones); ``commit`` makes them durable
    with one ``syncfs`` (falling back to one fsync per file), names them, and makes
    the names durable with a second ``syncfs`` (else one fsync per fan-out
    directory; a batch of at most ``SMALL_BATCH`` blobs fsyncs too). Until then
    nothing is visible, so a crash leaves at most named temp files, cleaned up like
    any abandoned write. Measured on /usr/share/doc
    (4,146 files, 2 cores, virtio disk): writing the blobs one fsync pair each took
    7.5-9 s with 16 writer threads; through one batch, 1.2 s from one thread. The
    price: ``syncfs`` also flushes unrelated dirty data on the same filesystem.
    """

    def __init__(self, service: FsBlobService) -> None:
        super().__init__(service)
        self._fs = service
        self._lock = threading.Lock()
        self._pending: list[tuple[str | int, str]] = []  # (temp file path or anonymous fd, final path)
        self._fds = 0  # anonymous temp files held open until commit
        self._existing: set[str] = set()  # fan-out directories of blobs found stored (see _found)
        self._round: _SyncRound | None = None  # the blobs commit_behind is making durable, if any
        self._named: set[str] = set()  # directories of names given since the last sync (owner's thread only)

    def open_write(self) -> BlobWriter:
        return _FsBlobWriter(self._fs, batch=self)

    def put_new(self, data: bytes) -> B3Digest:
        """Write a blob held in memory that the caller found not stored just before: no existence check here.

        Why: the blob helper stores what the importer checked before sending it; checking
        again cost it a stat per blob (with the GIL hand-offs, 50,000 small files: its CPU
        5.9-6.5 -> 4.9-5.4 s together with the umask check). Stored meanwhile by another
        writer, the blob keeps that file (a link finds the name taken) or gets the same bytes
        (a named temp file is renamed over it). No writer object either: the helper does this
        for every small file of a tree.
        """
        digest = B3Digest(blake3.blake3(data).digest())
        fs = self._fs
        anonymous = fs._anonymous_tmp and self._hold_fd()
        fd, path = fs._new_tmp(anonymous)  # path None: anonymous
        try:
            fs._seal_tmp(fd, data)
        except OSError as e:
            os.close(fd)
            if path is None:
                self._release_fds(1)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise _os_error(e, "write", path or "temp file") from e
        if path is not None:
            os.close(fd)  # a named one is reopened for its writeback check when named
        self._add(fd if path is None else path, fs.path_of(digest))
        return digest

    def _hold_fd(self) -> bool:
        """Reserve a descriptor for an anonymous temp file; False past the budget (use a named one)."""
        with self._lock:
            if self._fds >= _fd_budget():
                return False
            self._fds += 1
            return True

    def _release_fds(self, n: int) -> None:
        with self._lock:
            self._fds -= n

    def _add(self, source: str | int, final: str) -> None:
        with self._lock:
            self._pending.append((source, final))

    def _found(self, final: str) -> None:
        """A writer found its blob stored already: its name must be durable by ``commit``'s end too."""
        with self._lock:
            self._existing.add(os.path.dirname(final))

    def commit_behind(self) -> None:
        """Make the blobs closed so far durable on a thread while the owner writes on; name them at its next call.

        Why: the ``syncfs`` then waits for the disk while the importer reads and hashes
        the next files, instead of all of it at the final commit (/usr/share/doc, 4,190
        files: the final commit took 0.65-0.74 s of a 1.6-2.0 s import; committing behind
        every 256 files, the import took 1.2 s). The thread only waits for the sync; the
        names are given by the owner's next call (``commit_behind`` or ``commit``) once
        the sync has ended: given on the thread, every link and close handed the GIL back
        and forth with the owner (the blob helper storing 50,000 small files: 292,000
        futex calls; its CPU 8.1-8.9 s, 5.9-6.5 s naming in the owner). Names given by
        one call are made durable by the next round's sync or by ``commit``.

        One round at a time: a call while its sync runs does nothing (the next call, or
        ``commit``, takes the blobs closed meanwhile). If the sync fails, its blobs are
        discarded and the next ``commit_behind`` or ``commit`` raises its error; ``abort``
        waits for it, names its blobs if it succeeded, and drops an error.
        """
        round_ = self._round
        if round_ is not None:
            if round_.thread.is_alive():
                return
            self._round = None
            self._name_round(round_)  # raises the sync's error
        with self._lock:
            pending, self._pending = self._pending, []
            existing, self._existing = self._existing, set()
        existing |= self._named  # the names given just now: durable with this round's sync
        self._named = set()
        if not pending and not existing:
            return
        round_ = _SyncRound(pending)
        round_.thread = threading.Thread(
            target=self._sync_round, args=(round_, existing), name="blob-sync", daemon=True
        )
        self._round = round_
        round_.thread.start()

    def _sync_round(self, round_: _SyncRound, dirs: set[str]) -> None:
        """A round's thread: its bytes and the names given before it durable (``syncfs``, else fsyncs)."""
        try:
            group = self._fs.group
            if group is not None:
                round_.shared_sync = True
                group.wait()
            else:
                for source, _ in round_.pending:
                    _fsync_source(source)
                _fsync_dirs(dirs)
        except BaseException as e:  # the owner learns at its next call
            round_.error = e

    def _name_round(self, round_: _SyncRound) -> None:
        """Give the blobs of a round whose sync has ended their names (or discard them and raise its error)."""
        round_.thread.join()
        pending = round_.pending
        with self._discarding(pending):
            if round_.error is not None:
                raise round_.error
            if round_.shared_sync:
                for source, _ in pending:
                    _check_writeback(source)
        self._name(pending, self._fs._link_anonymous, self._named)

    @contextlib.contextmanager
    def _discarding(self, pending: list[tuple[str | int, str]]) -> Iterator[None]:
        """On an error inside, discard the blobs of ``pending`` and raise it (an OSError as a StorageError)."""
        try:
            yield
        except OSError as e:
            self._discard(pending)
            raise _os_error(e, "commit blobs in", self._fs.root) from e
        except BaseException:
            self._discard(pending)
            raise

    def _name(self, pending: list[tuple[str | int, str]], link: Callable[[int, str], None], dirs: set[str]) -> None:
        """Give durable temp files their blob names (not yet durably) and close the held descriptors.

        Their fan-out directories go into ``dirs`` (the root too, for a new one): a sync must
        make those names durable. On an error the blobs not named yet are discarded.
        """
        fs = self._fs
        done = 0
        try:
            for source, final in pending:
                if fs._place(source, final, link):  # a duplicate in the batch replaces (or is) identical bytes
                    dirs.add(fs.root)
                done += 1
                if isinstance(source, int):
                    os.close(source)
                    self._release_fds(1)
                dirs.add(final.rpartition("/")[0])  # (os.path.dirname: 4x the time, 50,000 blobs per import)
        except OSError as e:
            self._discard(pending[done:])
            raise _os_error(e, "commit blobs in", fs.root) from e
        except BaseException:
            self._discard(pending[done:])
            raise

    def commit(self, precommit: Precommit | None = None) -> None:
        round_, self._round = self._round, None
        if round_ is not None:
            self._name_round(round_)
        with self._lock:
            self._existing |= self._named  # the last round's names: made durable by this commit
        self._named = set()
        self._commit(precommit)

    def _commit(self, precommit: Precommit | None) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            existing, self._existing = self._existing, set()
        fs = self._fs
        group = fs.group if len(pending) + len(existing) > SMALL_BATCH else None  # (fs.group loads ctypes)
        if not pending:
            # Blobs found stored may have been named by a writer that has not made the name durable yet.
            try:
                if group is not None:
                    group.wait()
                else:
                    _fsync_dirs(existing)
            except OSError as e:
                raise _os_error(e, "sync the blob directory", fs.root) from e
            if precommit is not None:
                precommit()
            return
        with self._discarding(pending):
            if group is not None:
                group.wait()  # shared with batches committing now
                for source, _ in pending:
                    _check_writeback(source)
            else:
                for source, _ in pending:
                    _fsync_source(source)
            if precommit is not None:
                precommit()  # raising: every blob is discarded
        fan_outs = {fs.root} | existing
        self._name(pending, fs._link_anonymous if group is not None else _link_fd, fan_outs)  # (small: no ctypes)
        try:
            if group is not None:
                group.wait()
            else:
                _fsync_dirs(fan_outs)
        except OSError as e:
            raise _os_error(e, "commit blobs in", fs.root) from e

    def abort(self) -> None:
        round_, self._round = self._round, None
        if round_ is not None:
            try:
                self._name_round(round_)  # durable already: they stay
            except BaseException:
                pass  # its blobs are discarded; the caller is failing for a reason of its own
        with self._lock:
            pending, self._pending = self._pending, []
        self._discard(pending)

    def _discard(self, pending: list[tuple[str | int, str]]) -> None:
        for source, _ in pending:
            if isinstance(source, int):
                os.close(source)  # an anonymous temp file vanishes with its descriptor
                self._release_fds(1)
            else:
                try:
                    os.unlink(source)
                except FileNotFoundError:
                    pass


def _check_writeback(source: str | int) -> None:
    """Raise the write error the kernel recorded for this temp file's writeback, if there was one.

    Why: a batch's bytes are made durable by a shared ``syncfs``, and the kernel reports a
    writeback error to the first ``syncfs`` after it only (the filesystem's error cursor), which
    may be another batch's, e.g. for writeback started early (``_TempFileOut``). The file keeps
    its own error for a wait on it: ``sync_file_range`` waiting on a written range does no I/O.
    """
    sync_file_range = _load_sync_file_range()
    if sync_file_range is None:
        return
    if isinstance(source, int):  # the held descriptor (most blobs: no context manager around the call)
        if sync_file_range(source, 0, 0, SYNC_FILE_RANGE_WAIT_AFTER) != 0:
            _raise_errno("temp file")
        return
    with _opened(source) as fd:
        if sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_AFTER) != 0:
            _raise_errno(source)


def _fsync_source(source: str | int) -> None:
    with _opened(source) as fd:
        os.fsync(fd)


@contextlib.contextmanager
def _opened(source: str | int) -> Iterator[int]:
    """A descriptor of a batch's temp file: the one held open, or the named file opened read-only for the block."""
    if isinstance(source, int):
        yield source
        return
    fd = os.open(source, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000


@functools.cache
def _load_linkat() -> Callable[[int, bytes, int, bytes, int], int] | None:
    """libc's ``linkat``: Python's ``os.link`` cannot pass ``AT_EMPTY_PATH`` (loaded on first use)."""
    import ctypes

    return _load_libc("linkat", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)


def _link_fd_empty_path(fd: int, final: str) -> None:
    """Give an anonymous file its name with ``linkat(fd, "", AT_FDCWD, final, AT_EMPTY_PATH)``.

    Why: no lookup through /proc (15-18 instead of 19-25 µs per link on this VM; a bulk
    import links every blob). Needs CAP_DAC_READ_SEARCH: see ``FsBlobService._link_anonymous``.
    """
    linkat = _load_linkat()
    assert linkat is not None
    if linkat(fd, b"", AT_FDCWD, os.fsencode(final), AT_EMPTY_PATH) != 0:
        _raise_errno(final)  # an OSError of the errno's subclass (FileExistsError, FileNotFoundError)


def _link_fd(fd: int, final: str) -> None:
    """Give an anonymous (O_TMPFILE) file its name: linkat through /proc (needs no privilege, unlike AT_EMPTY_PATH).

    ``src_dir_fd`` only makes CPython call linkat (which follows the /proc link) instead of link;
    the kernel ignores it for an absolute path.
    """
    os.link(f"/proc/self/fd/{fd}", final, src_dir_fd=fd, follow_symlinks=True)


def _umask() -> int:
    """The process's umask, read without changing it (Linux ``/proc/self/status``); 0o777 where unknown.

    Why not ``os.umask``: it can only be read by setting it, and another thread may create a
    file in between.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


@functools.cache
def _fd_budget() -> int:
    """Anonymous temp files one batch may hold open: a quarter of the descriptor limit."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 4096 if soft == resource.RLIM_INFINITY else max(0, min(soft // 4, 16384))


class FsBlobService(BlobService):
    """Blobs as files named by their hex digest under ``root`` (created if missing)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._prefix = os.path.join(self.root, "")  # the root with exactly one trailing "/"
        self.tmp_dir = os.path.join(self.root, TMP_DIR)
        try:
            os.makedirs(self.tmp_dir, exist_ok=True)
        except OSError as e:
            raise _os_error(e, "create the blob directory", self.tmp_dir) from e
        self._clean_stale_tmp()
        self._tmp_tag = os.urandom(4).hex()
        self._tmp_count = itertools.count()

    @functools.cached_property
    def group(self) -> _GroupSync | None:
        """The ``syncfs`` barrier batches share (Linux); None: a batch fsyncs each file and directory.

        Set up on first use, like ``_anonymous_tmp``: a read command (``dump-path``) writes
        nothing, so it loads no ctypes and creates no probe file.
        """
        return _GroupSync(self.root) if _load_syncfs() is not None else None

    @functools.cached_property
    def _anonymous_tmp(self) -> bool:
        return self._probe_anonymous_tmp()

    def _clean_stale_tmp(self) -> None:
        """Remove temp files of writers that crashed long ago (fresh ones may belong to a live process)."""
        cutoff = time.time() - STALE_TMP_SECONDS
        try:
            with os.scandir(self.tmp_dir) as entries:
                for entry in entries:
                    try:
                        if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)
                    except FileNotFoundError:
                        pass  # another process cleaned it
        except OSError as e:
            raise _os_error(e, "clean temp files in", self.tmp_dir) from e

    @functools.cached_property
    def _link_anonymous(self) -> Callable[[int, str], None]:
        """How a batch names its anonymous temp files: ``AT_EMPTY_PATH`` where the kernel allows it, else /proc.

        Probed once per service, on a batch's first naming (ctypes is loaded by then for its
        ``syncfs``; a one-file write keeps the /proc link and never loads it). Without
        CAP_DAC_READ_SEARCH the kernel answers ENOENT.
        """
        if _load_linkat() is not None and self._can_link_anonymous(_link_fd_empty_path):
            return _link_fd_empty_path
        return _link_fd

    def _probe_anonymous_tmp(self) -> bool:
        """Whether O_TMPFILE and linking it through /proc work here (Linux 3.11+, most filesystems, /proc mounted).

        An anonymous temp file needs one directory operation (the link) instead of a
        create and a rename, and a crash leaves nothing behind to clean up.
        """
        return hasattr(os, "O_TMPFILE") and self._can_link_anonymous(_link_fd)

    def _can_link_anonymous(self, link: Callable[[int, str], None]) -> bool:
        """Whether ``link`` gives an anonymous temp file a name here (tried on a probe file, then removed)."""
        probe = os.path.join(self.tmp_dir, self._tmp_name())
        try:
            fd = os.open(self.tmp_dir, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            link(fd, probe)
            os.unlink(probe)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    @functools.cached_property
    def _chmod(self) -> bool:
        """Whether a new temp file needs an ``fchmod`` to be 0o444: only if the umask took bits of its creation mode.

        Read on first use, like ``_anonymous_tmp``: a read command (``dump-path``, a mount) writes nothing.
        """
        return _umask() & 0o444 != 0

    def _seal_tmp(self, fd: int, data: bytes | bytearray | None) -> None:
        """Write ``data`` (a small blob, if any) to a new temp file in one piece, and make the file 0o444."""
        if data:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        if self._chmod:
            os.fchmod(fd, 0o444)  # blobs are immutable (created so, unless the umask took bits)

    def _new_tmp(self, anonymous: bool) -> tuple[int, str | None]:
        """A new temp file for a blob, open for writing: (descriptor, None) if ``anonymous`` (``O_TMPFILE``), else
        (descriptor, its path). Created read-only (blobs are immutable); the descriptor itself is writable."""
        try:
            if anonymous:
                return os.open(self.tmp_dir, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o444), None
            path = os.path.join(self.tmp_dir, self._tmp_name())
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444), path
        except OSError as e:
            raise _os_error(e, "create a temp file in", self.tmp_dir) from e

    def _tmp_name(self) -> str:
        """A fresh temp file name: unique per process and service (a counter, not a random read per file)."""
        return f"blob-{os.getpid()}-{self._tmp_tag}-{next(self._tmp_count)}.tmp"

    def path_of(self, digest: bytes) -> str:
        """The file of a blob: only hex digits of a validated (32-byte) digest go into the path."""
        h = digest.hex()
        return f"{self._prefix}{h[:2]}/{h[2:]}"  # os.path.join was ~10% of rendering a NAR of small files

    @functools.cached_property
    def _root_fd(self) -> int:
        """The blob directory, open: verified reads open ``xx/yyyy...`` relative to it (``openat``).

        Why: the kernel then walks two path components per blob instead of the root's whole path
        as well (0.6 of 5 µs per open + close, 50,000 blobs under /tmp/.../blobs); rendering a NAR
        opens one blob per file. Opened on first use; :meth:`close` closes it (a later read reopens it).
        """
        return os.open(self.root, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)

    def _open_blob(self, digest: bytes) -> int | None:
        """A read-only descriptor of the blob file of ``digest`` (32 bytes); None if there is none,
        StorageError naming :meth:`path_of` if it cannot be opened. (The full path is built only for
        that message: rendering a NAR opens one blob per file.)"""
        h = digest.hex()
        try:
            return os.open(f"{h[:2]}/{h[2:]}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._root_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _os_error(e, "open blob file", self.path_of(digest)) from e

    def close(self) -> None:
        fd = self.__dict__.pop("_root_fd", None)
        if fd is not None:
            os.close(fd)

    def _place(self, source: str | int, final: str, link: Callable[[int, str], None] = _link_fd) -> bool:
        """Give a temp file (path, or anonymous fd) its blob name, not yet durably; True if the fan-out dir is new.

        ``link`` names an anonymous one (:attr:`_link_anonymous` for a batch's many).
        """
        place = os.rename if isinstance(source, str) else link
        try:
            place(source, final)  # type: ignore[arg-type]
            return False
        except FileExistsError:
            return False  # linked meanwhile by another writer of the same bytes
        except FileNotFoundError:
            # First blob in this fan-out directory: create it, then retry once.
            os.makedirs(os.path.dirname(final), exist_ok=True)
            try:
                place(source, final)  # type: ignore[arg-type]
            except FileExistsError:
                pass
            return True

    def _sync_dir_of(self, final: str) -> None:
        """Make an existing blob's name durable (fsync its fan-out directory), as a StorageError if that fails."""
        try:
            _fsync_dir(os.path.dirname(final))
        except OSError as e:
            raise _os_error(e, "sync the blob directory of", final) from e

    def _publish(self, source: str | int, final: str) -> None:
        """Name a temp file whose bytes are durable as its blob; return once the name is durable."""
        try:
            created = self._place(source, final)
            _fsync_dirs({self.root, os.path.dirname(final)} if created else {os.path.dirname(final)})
        except OSError as e:
            raise _os_error(e, "store blob file", final) from e

    def size(self, digest: bytes) -> int | None:
        path = self.path_of(B3Digest(digest))
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _os_error(e, "stat blob file", path) from e

    def open_read(self, digest: bytes) -> BlobReader | None:
        digest = B3Digest(digest)
        path = self.path_of(digest)
        fd = self._open_blob(digest)
        if fd is None:
            return None
        file = open(fd, "rb", buffering=0)  # owned by the reader
        try:
            size = os.fstat(file.fileno()).st_size
        except OSError as e:
            file.close()
            raise _os_error(e, "stat blob file", path) from e
        return FsBlobReader(file, digest, path, size)

    def read_verified(self, digest: bytes, size: int) -> bytes | None:
        """One open, one read of ``size + 1`` bytes, one blake3 call: a reader's work per blob is ~4x that.

        Rendering a NAR of many small files is mostly this per-blob overhead (SPEC
        Part A §7 still holds: nothing is returned before the whole blob hashed to its name).
        """
        if len(digest) != DIGEST_LEN:
            B3Digest(digest)  # raises InvalidRequest naming the length
        fd = self._open_blob(digest)  # plain bytes: a B3Digest per file was ~1 µs of ~20 per file of a NAR
        if fd is None:
            return None
        try:
            data = os.read(fd, size + 1)  # a regular file reads short only at EOF
            if len(data) != size:
                actual = os.fstat(fd).st_size
                if actual != size:
                    raise DataLoss(
                        f"blob {B3Digest(digest)} has {actual} bytes, not the {size} expected ({self.path_of(digest)})"
                    )
                while len(data) < size and (more := os.read(fd, size - len(data))):  # short read after all
                    data += more
        except OSError as e:
            raise _os_error(e, "read blob file", self.path_of(digest)) from e
        finally:
            os.close(fd)
        if len(data) != size:
            where = f"{self.path_of(digest)}: {len(data)} of {size} bytes"
            raise DataLoss(f"blob {B3Digest(digest)} is truncated on disk ({where})")
        if blake3.blake3(data).digest() != digest:
            where = self.path_of(digest)
            raise DataLoss(f"blob {B3Digest(digest)} is corrupt on disk: its bytes no longer hash to it ({where})")
        return data

    def open_verified(self, digest: bytes, size: int) -> FsVerifiedBlob | None:
        """The blob file, hashed whole over read-only mappings on all cores before it is returned.

        Why (a NAR of one 1 GiB file): blake3 with threads over a mapping is ~1.5x one
        thread on 2 free cores, and the caller then writes the verified mappings out with
        no copy through Python (to /dev/null the pages are not even touched again). Between
        the hash and the write the bytes come from the same open file again, as a FUSE
        read does: blob files are immutable (mode 0444, replaced only by rename, which
        does not affect an open file), so what was hashed is what is sent. Memory stays
        flat: at most one ``MAP_WINDOW`` is mapped at a time.
        """
        digest = B3Digest(digest)
        path = self.path_of(digest)
        fd = self._open_blob(digest)
        if fd is None:
            return None
        blob = FsVerifiedBlob(fd, size)
        try:
            try:
                actual = os.fstat(fd).st_size
                if actual != size:
                    raise DataLoss(f"blob {digest} has {actual} bytes, not the {size} expected ({path})")
                hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
                for window in blob.windows():
                    hasher.update(window)
            except OSError as e:
                raise _os_error(e, "read blob file", path) from e
            if hasher.digest() != digest:
                raise DataLoss(f"blob {digest} is corrupt on disk: its bytes no longer hash to it ({path})")
        except BaseException:
            blob.close()
            raise
        return blob

    def open_write(self) -> BlobWriter:
        return _FsBlobWriter(self)

    def batch(self) -> BlobBatch:
        return FsBlobBatch(self)

    def bulk_batch(self) -> BlobBatch:
        """Small blobs stored by a helper process on the other core (:mod:`tvixd.blobservice.fs_helper`)."""
        from tvixd.blobservice.fs_helper import HelperBlobBatch

        return HelperBlobBatch(self)
