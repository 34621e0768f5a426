"""Ingest a filesystem path into a Store in one pass (SPEC Part B §6, Part A §8, §9).

One walk, in the order a NAR needs (depth-first, entries sorted bytewise), reads
each regular file exactly once and feeds the same bytes to two consumers:

- the NAR writer over a :class:`NarHashSink`, in the walk thread, so the NAR size
  and sha256 are known when the walk ends (no second pass over the blobs);
- a blob writer (blake3, temp file), in the walk thread by default, or in a pool of
  ``--workers`` threads. Threads pay only where creating a file blocks for long (a
  slow or remote disk): here every thread hand-off costs more than it overlaps
  (``DEFAULT_WORKERS``). A batch whose writers do not wait (``BlobBatch.closes_wait``
  false: the gRPC client pipelines its uploads) is always written from the walk thread.

Blobs go through one :class:`tvixd.blobservice.base.BlobBatch`: for fs:// their
fsyncs and renames are paid per batch commit (one ``syncfs``), instead of two
fsyncs per blob (measured on /usr/share/doc: 7.5-9 s of fsyncs alone, versus about
1 s for the whole batch), and the batch commits behind the walk on a thread of its
own (``COMMIT_BEHIND_FILES``), so the disk works while the walk reads on. A tree
is imported through the service's ``bulk_batch``: fs:// then stores the small
blobs in a helper process on the other core (:mod:`tvixd.blobservice.fs_helper`;
/usr/share/doc 1.29 -> 1.06 s median, /usr/lib/python3 0.81 -> 0.69 s, 50,000
small files 7.1-9.3 -> 5.6-7.0 s). The NAR sha256 is inherently sequential, so it
stays in the walk thread. Bytes in flight to the writer threads are bounded
(``INFLIGHT_BYTES``), so memory stays flat however large the files are (a 1 GiB
file imports in about 80 MiB RSS).

Directories become entry lists (``put_entries``) once the blob digests of their files are
known; completed directories wait in a FIFO (post-order: leaves first, root last)
and go to one putter as their files finish. At the end the blob batch is
committed, then the putter is closed and its root digest checked, then the
PathInfo is put. A killed import therefore leaves no directory or path info
visible, and no blob either unless it had passed a commit behind the walk (every
``COMMIT_BEHIND_FILES`` files; such blobs are durable and verified): only temp files,
which the blob service cleans up like any abandoned write.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from tvixd.blobservice.base import BlobService, BlobWriter
from tvixd.castore.digest import B3Digest
from tvixd.castore.entries import (
    DIRECTORY,
    FILE,
    SYMLINK,
    Entry,
    directory_entries_size,
    encode_directory,
    entry_node,
    imported_path_info,
)
from tvixd.castore.nar import NarHashSink, NarWriter
from tvixd.castore.storepath import StorePath, build_nar_based_store_path
from tvixd.directoryservice.base import DirectoryPutter, DirectoryService
from tvixd.errors import InvalidRequest, ResourceExhausted, StorageError, TvixError
from tvixd.store import Store

if TYPE_CHECKING:  # no protobuf at run time on a SQLite store (~40 ms of an import's start-up)
    from concurrent.futures import Future, ThreadPoolExecutor

    from tvixd.proto.pathinfo_pb2 import Node, PathInfo

FILE_SIZE_LIMIT = 2**32
"""FileNode.size is a uint32 on the wire (Part A §8): files this large or larger are refused."""

CHUNK_SIZE = 1 << 20
"""Read size for large files; also the largest file read in one piece."""

INFLIGHT_BYTES = 32 << 20
"""Bytes read but not yet written to blobs, at most (bounds memory, not speed)."""

MAX_PENDING_DIRS = 512
"""Completed directories waiting for their blobs before the walk waits for the writers."""

DEFAULT_WORKERS = 0
"""Blob writer threads by default: none, the walk thread writes each blob itself.

Why: with the fsyncs paid per batch (and the batch committing behind the walk), what is left per
blob is a few syscalls and blake3, and handing each file to a thread costs more than it overlaps
on this 2-core VM: /usr/share/doc (4,190 files) 1.73-2.15 s with none against 2.26-2.44 s with 12;
/usr/lib/python3 1.13-1.25 s against 1.39-1.65 s (with 2: 1.13-1.42 s); 50,000 small files 10.9-13.0 s
against 16.5-16.9 s (with 2: 14.2-15.1 s). ``--workers N`` remains for disks where creating a
file blocks for long.
"""

POOL_AFTER_FILES = 16
"""A directory's first files are written in the walk thread; the writer threads start with the next one.

Why: a small tree does not pay for the pool (importing concurrent.futures, with logging, ~10 ms of a
two-file import; starting threads); a few files written in the walk thread cost ~0.1-2 ms each.
"""

COMMIT_BEHIND_FILES = 256
COMMIT_BEHIND_BYTES = 64 << 20
"""After this many files or bytes the blob batch is asked to commit behind the walk (``BlobBatch.commit_behind``).

Why: fs:// then syncs and names the blobs on a thread while the walk reads on, instead of all at the
end (/usr/share/doc on this VM: the final commit was 0.65-0.74 s of a 1.6-2.0 s import; with this,
the whole import took 1.2 s; every 128, 256, 512 or 1,024 files measured within noise of each other).
It also bounds the temp files waiting for a commit.
"""

Progress = Callable[[int, int], None]
"""Called from the walk thread after each file with (files done, bytes done)."""


class IngestError(InvalidRequest):
    """A path can't be imported (special file, unreadable, invalid name, too large); names the path."""


class ImportResult(
    NamedTuple(
        "ImportResult", [("store_path", StorePath), ("root", Entry), ("nar_size", int), ("nar_sha256", bytes)]
    )
):
    """What one import produced: the store path, its root node (an entry named by the store path), the NAR.

    Not a dataclass: importing ``dataclasses`` (with ``inspect``) was ~12 ms of a one-file import.
    """

    __slots__ = ()

    @property
    def path_info(self) -> PathInfo:
        """The PathInfo that was put (built on demand: it imports protobuf)."""
        return imported_path_info(self.root, self.nar_size, self.nar_sha256)


def show_path(path: bytes | str) -> str:
    """A path for a one-line message: UTF-8 where it decodes, backslash escapes elsewhere."""
    if isinstance(path, str):
        path = os.fsencode(path)
    return path.decode("utf-8", "backslashreplace")


def _os_error(path: bytes, e: OSError) -> TvixError:
    """Turn an OSError from reading the input into an error naming the path."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{show_path(path)}: {e.strerror}")
    return IngestError(f"{show_path(path)}: {e.strerror or e}")


class _Budget:
    """A byte budget for data handed to writer threads (a counting semaphore by bytes)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            # A single oversized request is let through when nothing else is in flight.
            while self._used and self._used + n > self._limit:
                self._cond.wait()
            self._used += n

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


class _StreamedBlob:
    """A large file's blob writer, fed chunk by chunk on the single ordered writer thread."""

    __slots__ = ("budget", "error", "writer")

    def __init__(self, writer: BlobWriter, budget: _Budget) -> None:
        self.writer = writer
        self.budget = budget
        self.error: BaseException | None = None

    def write(self, chunk: bytes) -> None:
        try:
            if self.error is None:
                self.writer.write(chunk)
        except BaseException as e:  # re-raised by close(), on the walk's side
            self.error = e
        finally:
            self.budget.release(len(chunk))

    def close(self) -> B3Digest:
        if self.error is not None:
            self.writer.abort()
            raise self.error
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


class _Done:
    """A blob digest known at once (written in the walk thread), with the two methods of a Future used here.

    Why not ``concurrent.futures``: importing it (and ``logging`` with it) was ~10 ms of a
    one-file import, which needs no thread pool.
    """

    __slots__ = ("_digest",)

    def __init__(self, digest: B3Digest) -> None:
        self._digest = digest

    def done(self) -> bool:
        return True

    def result(self) -> B3Digest:
        return self._digest


class _PendingDir:
    """A directory whose walk is complete but whose file digests may still be in flight."""

    __slots__ = ("digest", "dirs", "files", "size", "symlinks")

    def __init__(self) -> None:
        self.dirs: list[tuple[bytes, _PendingDir]] = []
        self.files: list[tuple[bytes, Future[B3Digest] | _Done, int, bool]] = []
        self.symlinks: list[tuple[bytes, bytes]] = []
        self.digest = b""
        self.size = 0

    def ready(self) -> bool:
        return all(f.done() for _, f, _, _ in self.files)

    def build(self) -> tuple[list[Entry], list[Entry], list[Entry]]:
        """The directory's child lists as entries (children resolved already: post-order)."""
        lists = (
            [(DIRECTORY, n, c.digest, c.size, False) for n, c in self.dirs],
            [(FILE, n, bytes(f.result()), s, x) for n, f, s, x in self.files],
            [(SYMLINK, n, t, 0, False) for n, t in self.symlinks],
        )
        self.dirs = self.files = self.symlinks = []  # free the children
        return lists


class _Ingest:
    """One import: the walk, the writer threads and the directory queue."""

    def __init__(
        self,
        blob_service: BlobService,
        directory_service: DirectoryService,
        workers: int,
        progress: Progress | None,
    ) -> None:
        self.blob = blob_service
        self.batch = blob_service.batch()
        if not self.batch.closes_wait:
            workers = 0  # nothing to overlap (see the module docstring)
        self.directory_service = directory_service
        self.progress = progress
        self.budget = _Budget(INFLIGHT_BYTES)
        self.workers = workers
        self.pool: ThreadPoolExecutor | None = None  # made for a directory's POOL_AFTER_FILES-th file
        self._ordered: ThreadPoolExecutor | None = None  # made for the first big file (ordered)
        self.sink = NarHashSink()
        self.nar = NarWriter(self.sink)
        self.putter: DirectoryPutter | None = None
        self.queue: deque[_PendingDir] = deque()
        self.sent: set[bytes] = set()
        self.streams: list[_StreamedBlob] = []
        self.files_done = 0
        self.bytes_done = 0
        self.commit_files = COMMIT_BEHIND_FILES  # the next commit_behind after this many files
        self.commit_bytes = COMMIT_BEHIND_BYTES  # or bytes

    # --- blobs ---------------------------------------------------------------------------------

    def _store_whole(self, data: bytes) -> B3Digest:
        try:
            return self.batch.put_whole(data)
        finally:
            self.budget.release(len(data))

    def _start_pool(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="blob-writer")

    def ordered(self) -> ThreadPoolExecutor:
        """The one thread that writes big files' chunks to their blobs, in order."""
        if self._ordered is None:
            from concurrent.futures import ThreadPoolExecutor

            self._ordered = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-stream")
        return self._ordered

    def _file(self, path: bytes, name: bytes | None) -> tuple[Future[B3Digest] | _Done, int, bool]:
        """Read one regular file once: NAR bytes in this thread, blob bytes to the writers.

        ``name``: the directory entry the file is written as (None: the NAR's root node).
        """
        try:
            # O_NOFOLLOW/O_NONBLOCK: if the entry was swapped for a symlink or FIFO since the
            # directory was listed, fail (or notice via fstat) instead of following or blocking.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise _os_error(path, e) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IngestError(f"{show_path(path)}: changed type while importing")
            size = st.st_size
            if size >= FILE_SIZE_LIMIT:
                raise IngestError(
                    f"{show_path(path)}: file is {size} bytes; files of 4 GiB or more can't be stored "
                    f"(FileNode.size is a uint32)"
                )
            executable = bool(st.st_mode & stat.S_IXUSR)
            nar = self.nar
            if size <= CHUNK_SIZE:
                data = self._read_exact(fd, path, size)
                if name is None:
                    nar.file(size, executable, (data,))
                else:
                    nar.entry_file(name, data, executable)  # one call: most files are small
                if not self.workers:
                    future: Future[B3Digest] | _Done = _Done(self.batch.put_whole(data))
                else:
                    self.budget.acquire(size)
                    if self.pool is None and self.files_done >= POOL_AFTER_FILES and self.putter:
                        self._start_pool()
                    if self.pool is None:
                        future = _Done(self._store_whole(data))
                    else:
                        future = self.pool.submit(self._store_whole, data)
            else:
                if name is not None:
                    nar.entry_start(name)
                nar.file_start(size, executable)
                stream = _StreamedBlob(self.batch.open_write(), self.budget)
                self.streams.append(stream)
                ordered = self.ordered()
                remaining = size
                while remaining:
                    chunk = os.read(fd, min(CHUNK_SIZE, remaining))
                    if not chunk:
                        raise IngestError(f"{show_path(path)}: file shrank while importing")
                    nar.file_chunk(chunk)
                    self.budget.acquire(len(chunk))
                    ordered.submit(stream.write, chunk)
                    remaining -= len(chunk)
                if os.read(fd, 1):
                    raise IngestError(f"{show_path(path)}: file grew while importing")
                future = ordered.submit(stream.close)
                nar.file_end()
                if name is not None:
                    nar.entry_end()
        except OSError as e:
            raise _os_error(path, e) from None
        finally:
            os.close(fd)
        self.files_done += 1
        self.bytes_done += size
        if self.files_done >= self.commit_files or self.bytes_done >= self.commit_bytes:
            self.commit_files = self.files_done + COMMIT_BEHIND_FILES
            self.commit_bytes = self.bytes_done + COMMIT_BEHIND_BYTES
            self.batch.commit_behind()
        if self.progress is not None:
            self.progress(self.files_done, self.bytes_done)
        return future, size, executable

    @staticmethod
    def _read_exact(fd: int, path: bytes, size: int) -> bytes:
        data = os.read(fd, size + 1)
        if len(data) < size:
            parts = [data]
            got = len(data)
            while got < size:
                more = os.read(fd, size - got + 1)
                if not more:
                    raise IngestError(f"{show_path(path)}: file shrank while importing")
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        # The last read asked for one byte more than it got: the file ended there (a regular
        # file reads short only at its end), so no extra read is needed to see whether it grew.
        if len(data) > size:
            raise IngestError(f"{show_path(path)}: file grew while importing")
        return data

    # --- directories -----------------------------------------------------------------------------

    def _finish_dir(self, pending: _PendingDir) -> None:
        """Queue a completed directory; send ready ones; wait if too many are queued."""
        self.queue.append(pending)
        self._drain(block=len(self.queue) > MAX_PENDING_DIRS)

    def _drain(self, block: bool) -> None:
        queue = self.queue
        target = MAX_PENDING_DIRS // 2 if block else len(queue)
        while queue and (queue[0].ready() or (block and len(queue) > target)):
            self._send(queue.popleft())

    def _send(self, pending: _PendingDir) -> None:
        """Put one directory as entries (no protobuf message: a small tree imports no protobuf at all)."""
        lists = pending.build()
        digest = B3Digest.of(encode_directory(*lists))
        pending.digest = digest
        pending.size = directory_entries_size(*lists)
        if digest not in self.sent:  # identical subtrees are sent once
            assert self.putter is not None
            self.putter.put_entries(*lists)
            self.sent.add(digest)

    # --- the walk ---------------------------------------------------------------------------------

    def _scan(self, path: bytes) -> list[os.DirEntry[bytes]]:
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as e:
            raise _os_error(path, e) from None
        entries.sort(key=lambda e: e.name)  # bytewise, as NAR and Directory need
        return entries

    def _walk_directory(self, root: bytes) -> _PendingDir:
        """Walk a directory tree iteratively (no recursion limit on depth) in NAR order."""
        nar = self.nar
        nar.directory_start()
        root_pending = _PendingDir()
        stack = [(iter(self._scan(root)), root_pending)]
        while stack:
            entries, pending = stack[-1]
            entry = next(entries, None)
            if entry is None:
                nar.directory_end()
                stack.pop()
                self._finish_dir(pending)
                if stack:
                    nar.entry_end()
                continue
            name, path = entry.name, entry.path
            try:
                is_link = entry.is_symlink()
                is_dir = not is_link and entry.is_dir(follow_symlinks=False)
                is_file = not is_link and not is_dir and entry.is_file(follow_symlinks=False)
            except OSError as e:
                raise _os_error(path, e) from None
            if is_dir:
                child = _PendingDir()
                pending.dirs.append((name, child))
                nar.entry_start(name)
                nar.directory_start()
                stack.append((iter(self._scan(path)), child))
            elif is_file:
                pending.files.append((name, *self._file(path, name)))  # written as an entry
            elif is_link:
                target = self._readlink(path)
                nar.entry_symlink(name, target)
                pending.symlinks.append((name, target))
            else:
                raise _special(path)
        return root_pending

    def _shutdown(self) -> None:
        """Stop the writer threads (waiting for them; queued small files are cancelled)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self._ordered is not None:
            self._ordered.shutdown(wait=True)

    @staticmethod
    def _readlink(path: bytes) -> bytes:
        try:
            return os.readlink(path)
        except OSError as e:
            raise _os_error(path, e) from None

    def run(self, path: bytes) -> tuple[Entry, int, bytes]:
        """Walk ``path``; return (root entry named b"", NAR size, NAR sha256)."""
        try:
            st = os.lstat(path)
        except OSError as e:
            raise _os_error(path, e) from None
        try:
            if stat.S_ISDIR(st.st_mode):
                self.batch = self.blob.bulk_batch()  # fs://: small blobs stored by a helper process
                with self.directory_service.put_multiple_start() as putter:
                    self.putter = putter
                    root = self._walk_directory(path)
                    while self.queue:  # the rest, leaves first, waiting for their blobs
                        self._send(self.queue.popleft())
                    self.batch.commit()  # every blob durable and visible before any directory
                    got = putter.close()
                if got != root.digest:
                    raise StorageError(
                        f"directory putter returned root {B3Digest(got)}, expected {B3Digest(root.digest)}"
                    )
                entry = (DIRECTORY, b"", root.digest, root.size, False)
            elif stat.S_ISLNK(st.st_mode):
                target = self._readlink(path)
                self.nar.symlink(target)
                entry = (SYMLINK, b"", target, 0, False)
            elif stat.S_ISREG(st.st_mode):
                future, size, executable = self._file(path, None)
                entry = (FILE, b"", bytes(future.result()), size, executable)
                self.batch.commit()
            else:
                raise _special(path, st.st_mode)
        except BaseException:
            for stream in self.streams:
                self.ordered().submit(stream.abort)
            self._shutdown()
            self.batch.abort()  # after the writers stopped: nothing uncommitted becomes visible
            raise
        finally:
            self._shutdown()
        return entry, self.sink.size, self.sink.sha256()


def _special(path: bytes, mode: int | None = None) -> IngestError:
    if mode is None:
        try:
            mode = os.lstat(path).st_mode
        except OSError as e:
            return IngestError(f"{show_path(path)}: {e.strerror}")
    kind = {
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
    }.get(stat.S_IFMT(mode), "of an unsupported file type")
    return IngestError(f"{show_path(path)}: is {kind}; only regular files, directories and symlinks can be imported")


def store_path_name(path: bytes) -> str:
    """The store path name for ``path``: its last component after making it absolute, like Nix.

    Raises :class:`IngestError` naming the path if that is not a valid store path name.
    """
    name = os.path.basename(os.path.abspath(path))
    try:
        text = name.decode("ascii")
        build_nar_based_store_path(bytes(32), text)  # validates the name (SPEC §4.3, 211 bytes)
    except (UnicodeDecodeError, TvixError) as e:
        reason = str(e) if isinstance(e, TvixError) else "not ASCII"
        raise IngestError(f"{show_path(path)}: {show_path(name)!r} is not a valid store path name ({reason})") from None
    return text


def ingest_path(
    blob_service: BlobService,
    directory_service: DirectoryService,
    path: str | bytes | os.PathLike[str],
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> tuple[Node, int, bytes]:
    """Store the contents of ``path``; return (root node with an empty name, NAR size, NAR sha256).

    Symlinks are never followed (a root symlink is stored as a symlink).
    """
    root, nar_size, nar_sha256 = _Ingest(blob_service, directory_service, workers, progress).run(os.fsencode(path))
    return entry_node(root), nar_size, nar_sha256


def import_path(
    store: Store,
    path: str | bytes | os.PathLike[str],
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> ImportResult:
    """Import ``path`` into ``store`` as Nix's ``--add-fixed --recursive sha256``.

    The name is checked before anything is written; the PathInfo is put last.
    """
    raw = os.fsencode(path)
    name = store_path_name(raw)
    root, nar_size, nar_sha256 = _Ingest(store.blob, store.directory, workers, progress).run(raw)
    store_path = build_nar_based_store_path(nar_sha256, name)
    root = (root[0], str(store_path).encode(), *root[2:])
    store.path_info.put_imported(root, nar_size, nar_sha256)
    return ImportResult(store_path, root, nar_size, nar_sha256)
