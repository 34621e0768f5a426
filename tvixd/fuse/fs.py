"""The FUSE operations: a read-only view of a Store, with ``/nix/store`` at the mount root.

Behaviour follows SPEC Part B §8 with the Part A §10 fixes: the executable bit
is shown, nlink is 1, unknown inodes and file handles give errors instead of
crashing, and every write-type operation is refused with EROFS (the mount is
also made ``ro``, so the kernel refuses most writes before they get here).

The methods are plain synchronous calls (``lookup``, ``open``, ``read``, ...) that
raise :class:`FuseError`; :meth:`StoreFS.handlers` adapts them to the kernel
protocol (:mod:`tvixd.fuse.kernel`). Several request threads call them at once,
so a blocking store fetch stalls only its own request: shared tables change
under ``self._lock``, and reads on one file handle are serialised by its lock
(the kernel may issue several at once, and a reader has one position).

Reads (Part A §7: never serve bytes not verified against the digest):

- a small blob (at most :data:`READ_AHEAD`) of the local fs:// store is read whole
  and verified at open (``FsBlobService.read_verified``) and served from memory, and
  kept there for the next open (up to :data:`SMALL_BLOBS_KEPT_BYTES`);
- a bigger one, when the kernel granted FUSE passthrough: verified whole at open
  (``FsBlobService.open_verified``: blake3 on all cores over windows mapped one at
  a time, so RSS stays flat), then registered as the open file's backing
  file, so the kernel reads the blob file itself and no read comes to tvixd;
- otherwise verified whole at open the same way and served from a mapping of the file
  just verified (:class:`_LocalBlob`);
- other backends (gRPC, memory) stream through their ``BlobReader``, which verifies sequential reads.

Errors: missing or unreadable content behind a PathInfo gives EIO on that file
or directory only; the mount stays up.
"""

from __future__ import annotations

import errno
import io
import itertools
import mmap
import os
import stat
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import structlog

from tvixd.blobservice.base import BlobReader
from tvixd.blobservice.fs import FsBlobService
from tvixd.castore.digest import B3Digest
from tvixd.castore.entries import DIRECTORY, FILE, SYMLINK, Entry, directory_entries, node_entry
from tvixd.castore.storepath import StorePath  # not lazily: the first lookup waited ~1 ms for this
from tvixd.fuse import kernel
from tvixd.fuse.inodes import ROOT_INO, DirectoryData, InodeData, InodeTracker
from tvixd.fuse.kernel import FuseError
from tvixd.fuse.listing import DTYPE, FULL, LEAN, PLAIN, FileStatters, Listing, pack_listing, request_pid
from tvixd.store import Store

log = structlog.get_logger("tvixd.fuse")

TTL = 365 * 24 * 3600
"""Attribute and entry cache lifetime: content under an inode never changes (SPEC §8.2 uses the maximum)."""

ROOT_TTL = 1
"""Attribute cache lifetime of the mount root itself."""

SUBTREE_FETCH = 20_000
"""Directories whose whole subtree has at most this many elements are fetched in one go (see _populated)."""

PREPARE_MAX_ENTRIES = 1000
"""Listings packed ahead in idle time have at most this many entries (~1 us each: a waiting request's delay)."""

BLKSIZE = 4096
"""st_blksize; the reference's 1024 makes stdio-buffered readers issue tiny reads."""

XATTR_BLOB_DIGEST = b"user.tvix.castore.blob.digest"
XATTR_DIRECTORY_DIGEST = b"user.tvix.castore.directory.digest"
"""Extended attribute names (as later tvix-castore uses); values are ``b3:<standard base64>`` of the digest,
the form tvixd prints everywhere. Only present with ``--show-xattr``; symlinks and the root have none."""

READ_AHEAD = 1 << 20
"""Bytes a sequential read fetches per reader call, and the size up to which an fs:// blob is read whole at open."""

BACKINGS_KEPT = 64
"""Verified passthrough backing files kept registered after their last close (least recently used go first):
reopening a big file (an exec, a second `cat`) then needs no second whole-file verification."""

SMALL_BLOBS_KEPT_BYTES = 64 << 20
"""Bytes of verified small blobs (at most :data:`READ_AHEAD` each) kept for reopens, least recently opened
dropped first: reopening a file (a second `grep -r`, a compiler's headers) then reads and hashes nothing and
is answered without a worker thread: a second `cat` of every file of /usr/share/doc through one mount took
0.37-0.43 s instead of 0.65-0.77 s (the original tree: 0.20 s)."""

ROOT_SNAPSHOTS = 16
"""Root listings kept for readdir continuations (the kernel sends no OPENDIR, so offsets name the snapshot)."""

_FILE_MODE = {False: stat.S_IFREG | 0o444, True: stat.S_IFREG | 0o555}

_T = TypeVar("_T")


def root_node(node_msg: Any) -> Entry | None:
    """The set member of a ``pathinfo_pb2.Node`` oneof as an entry, or ``None`` if unset."""
    which = node_msg.WhichOneof("node")
    return node_entry(getattr(node_msg, which)) if which else None


def _from_store(fn: Callable[..., _T | None], *args: Any, digest: bytes, failed: str, missing: str) -> _T:
    """A blocking store call; a failure or a missing object is EIO, logged with its digest.

    To the kernel both are I/O errors (the tree it was shown promised the object); the log says which.
    """
    try:
        result = fn(*args)
    except Exception as e:
        log.error(failed, digest=str(B3Digest(digest)), error=str(e))
        raise FuseError(errno.EIO) from None
    if result is None:
        log.error(missing, digest=str(B3Digest(digest)))
        raise FuseError(errno.EIO)
    return result


@dataclass
class _FileHandle:
    """An open file: a reader over its blob, positioned at ``pos``, and the last bytes read.

    ``buf`` holds the blob's bytes from ``buf_off`` on, as read ahead by the last reader call.
    """

    digest: bytes
    size: int
    reader: BlobReader | None
    pos: int = 0
    buf: bytes = b""
    buf_off: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cached(self, off: int, size: int) -> memoryview | None:
        """The requested bytes if the read-ahead buffer holds them all (or up to EOF)."""
        start = off - self.buf_off
        if start < 0 or start >= len(self.buf):
            return None
        end = start + size
        if end > len(self.buf) and self.buf_off + len(self.buf) < self.size:
            return None
        return memoryview(self.buf)[start:end]


@dataclass
class _LocalBlob:
    """An open blob file of the fs:// store without passthrough: verified whole at open, served from a mapping.

    Random access (which FUSE does) cannot be verified piecewise; one whole-blob pass uses all cores.
    The mapping is of the file just verified (``open_verified``): blob files are immutable (mode 0444,
    replaced only by rename, which does not touch an open file), so it holds the verified bytes.
    """

    size: int
    map: mmap.mmap

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a reply still holds a view: the mapping goes with the last reference
            pass


@dataclass
class _Backing:
    """The passthrough backing id of one inode, shared by its open files.

    The kernel keeps one backing file per inode while it is open and refuses a second, different one
    (EBUSY), so every open of the inode gets the same id; after the last one is released it is kept
    a while for reopens (see :data:`BACKINGS_KEPT`).
    """

    refs: int = 0
    id: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Passthrough:
    """An open file whose reads the kernel serves from the backing file of inode ``ino``."""

    ino: int


class StoreFS:
    """The store's FUSE operations; ``session`` (set by the mount) is used for passthrough."""

    def __init__(self, store: Store, *, list_root: bool = False, show_xattr: bool = False) -> None:
        self.store = store
        self.list_root = list_root
        self.show_xattr = show_xattr
        self.session: kernel.Session | None = None
        self.inodes = InodeTracker()
        self._lock = threading.Lock()
        self._files: dict[int, _LocalBlob | _FileHandle | _Passthrough] = {}
        self._fhs = itertools.count(1)
        self._entries: dict[int, bytes] = {}
        self._attr_outs: dict[int, bytes] = {}
        self._listings: tuple[dict[int, Listing], ...] = ({}, {}, {})  # by kind: PLAIN, LEAN, FULL
        self.statters = FileStatters()
        self._roots: OrderedDict[int, list[tuple[int, Entry]]] = OrderedDict()
        self._root_gen = itertools.count(1)
        self._backings: dict[int, _Backing] = {}
        self._idle_backings: OrderedDict[int, _Backing] = OrderedDict()  # refs 0, oldest first
        self._small_blobs: OrderedDict[bytes, bytes] = OrderedDict()  # digest -> verified content, oldest first
        self._small_blobs_bytes = 0

    # -- attributes ----------------------------------------------------------------------------------------

    def _attr(self, ino: int, data: InodeData | None) -> tuple[int, int, int, int, int]:
        """The varying ``fuse_attr`` fields of an inode (``data`` None: the root): ino size blocks mode blksize."""
        if data is None:
            return ino, 0, 0, stat.S_IFDIR | 0o555, BLKSIZE
        if type(data) is DirectoryData:
            return ino, data.size, 0, stat.S_IFDIR | 0o555, BLKSIZE
        kind, _, ref, size, executable = data  # type: ignore[misc]
        if kind == FILE:
            return ino, size, (size + 511) // 512, _FILE_MODE[executable], BLKSIZE
        # Linux ignores a symlink's mode (readlink needs no permission, and diff/tar/rsync do not
        # compare it), so we keep the reference's 0o444 rather than the conventional 0o777.
        return ino, len(ref), 0, stat.S_IFLNK | 0o444, BLKSIZE

    def entry(self, ino: int) -> bytes:
        """The packed ``fuse_entry_out`` of a tracked inode (ENOENT if unknown), built once and kept.

        An inode's data never changes (a directory's size is fixed before it is populated), and
        readdirplus sends the attributes of every entry of every listing.
        """
        e = self._entries.get(ino)
        if e is None:
            data = self.inodes.get(ino)
            if data is None:
                raise FuseError(errno.ENOENT)
            e = self._entries[ino] = kernel.pack_entry(*self._attr(ino, data), TTL)
        return e

    def getattr(self, ino: int) -> bytes:
        """The packed ``fuse_attr_out`` of ``ino``; the root's is short-lived (a crashed mount shows soon)."""
        if ino == ROOT_INO:
            return kernel.pack_attr_out(kernel.pack_attr(*self._attr(ROOT_INO, None)), ROOT_TTL)
        a = self._attr_outs.get(ino)
        if a is None:
            a = self._attr_outs[ino] = kernel.pack_attr_out(kernel.pack_attr(*self._attr(ino, self._data(ino))), TTL)
        return a

    def _data(self, ino: int) -> InodeData:
        """The tracked data of ``ino``; ENOENT for an inode we never handed out."""
        data = self.inodes.get(ino)
        if data is None:
            raise FuseError(errno.ENOENT)
        return data

    # -- directories -----------------------------------------------------------------------------------------

    def _populated(self, data: InodeData) -> DirectoryData:
        """``data`` as a populated directory, fetching it from the DirectoryService if still sparse.

        A small subtree (at most :data:`SUBTREE_FETCH` elements, known from the DirectoryNode's size)
        is fetched whole with one ``get_closure_entries`` (SQLite: one query per tree level, rows
        decoded without protobuf; a gRPC store: one stream) instead of one fetch per directory. If
        that fails (e.g. a descendant is missing), only this directory is fetched, so a broken
        subdirectory gives EIO on itself alone.
        """
        if not isinstance(data, DirectoryData):
            raise FuseError(errno.ENOTDIR)
        if data.populated:
            return data
        digest = B3Digest(data.digest)
        if 0 < data.size <= SUBTREE_FETCH:
            try:
                closure = self.store.directory.get_closure_entries(digest)
            except Exception as e:
                log.debug("subtree fetch failed, fetching the directory alone", digest=str(digest), error=str(e))
            else:
                with self._lock:
                    self.inodes.put_directories(closure)
                if data.populated:
                    return data
        directory = _from_store(self.store.directory.get, digest, digest=digest,
                                failed="directory fetch failed", missing="directory missing from the store")
        with self._lock:
            self.inodes.put_directory(digest, directory_entries(directory))
        return data

    def lookup(self, parent: int, name: bytes) -> int:
        """The inode of ``name`` in directory ``parent`` (ENOENT, ENOTDIR, EIO)."""
        if parent == ROOT_INO:
            return self._lookup_store_path(name)
        data = self._populated(self._data(parent))
        ino = data.child(name)
        if ino is None:
            raise FuseError(errno.ENOENT)
        return ino

    def _lookup_store_path(self, name: bytes) -> int:
        """The inode of the store path ``name`` (a basename), asking the PathInfoService the first time."""
        ino = self.inodes.store_path(name)
        if ino is not None:
            return ino
        try:
            store_path = StorePath.from_basename(name.decode())
        except Exception:  # not UTF-8, not a store path basename: it can't exist
            raise FuseError(errno.ENOENT) from None
        try:
            # The root node alone, read without protobuf where the backend can (SQLite).
            entry = self.store.path_info.get_root_entry(store_path.digest)
        except Exception as e:
            log.error("path info lookup failed", store_path=name.decode(), error=str(e))
            raise FuseError(errno.EIO) from None
        if entry is None:
            raise FuseError(errno.ENOENT)
        # The hash alone is not enough: `<hash>-tes` must not find `<hash>-test`.
        if bytes(entry[1]) != name:
            raise FuseError(errno.ENOENT)
        with self._lock:
            return self.inodes.put_store_path(name, entry)

    def readlink(self, ino: int) -> bytes:
        if ino == ROOT_INO:
            raise FuseError(errno.EINVAL)
        data = self._data(ino)
        if type(data) is DirectoryData or data[0] != SYMLINK:  # type: ignore[index]
            raise FuseError(errno.EINVAL)
        return data[2]  # type: ignore[index]

    def readdir(
        self, ino: int, offset: int, size: int, *, plus: bool = True, pid: int = 0
    ) -> bytes | memoryview | list[bytes]:
        """Packed records (``fuse_direntplus``, or ``fuse_dirent``) from ``offset`` on, at most ``size`` bytes.

        Offsets: entry i of a directory's immutable, merged child list has next-offset i + 1. No
        `.`/`..` entries, as in the reference. READDIRPLUS records carry every entry's attributes only
        for a process (``pid``) that looks up files (see :mod:`tvixd.fuse.listing`). The kernel sends
        no OPENDIR (FUSE_NO_OPENDIR_SUPPORT), so the root's listing snapshot is named by the offsets
        themselves (see :meth:`_readdir_root`).
        """
        if ino == ROOT_INO:
            if not self.list_root:
                raise FuseError(errno.EPERM)
            return self._readdir_root(offset, size, plus)
        kind = (FULL if pid in self.statters else LEAN) if plus else PLAIN
        listing = self._listings[kind].get(ino)
        if listing is None:
            self._populated(self._data(ino))
            listing = self._listing(ino, kind)
        return listing.window(offset, size)

    def _listing(self, ino: int, kind: int) -> Listing:
        """The packed listing of populated directory ``ino`` for ``kind`` (kept).

        Packing one queues its subdirectories' listings (same kind, the first one on top) as idle jobs of
        the session: the loop packs them between requests, so a tree walk (`find`, `ls -R`, `du`) finds
        them ready. A fresh mount's `find` of /usr/share/doc: 123.8 / 118.5 ms against 137.1 / 139.8 ms
        without (medians of 11, interleaved). Only fetched directories are packed (see :meth:`_prepare`).
        """
        listing = self._listings[kind].get(ino)
        if listing is None:
            data = self.inodes.get(ino)
            assert isinstance(data, DirectoryData) and data.entries is not None and data.inos is not None
            listing = self._listings[kind][ino] = pack_listing(data.entries, data.inos, kind, self.entry)
            if self.session is not None:
                push = self.session.idle_work.append
                for e, child in zip(reversed(data.entries), reversed(data.inos), strict=True):
                    if e[0] == DIRECTORY:
                        push(partial(self._prepare, child, kind))
        return listing

    def _prepare(self, ino: int, kind: int) -> None:
        """An idle job: pack the listing of ``ino`` before it is asked for, if it is populated and small
        (a request arriving meanwhile waits for the job; nothing is fetched from the store here)."""
        data = self.inodes.get(ino)
        if type(data) is DirectoryData and data.entries is not None and len(data.entries) <= PREPARE_MAX_ENTRIES:
            self._listing(ino, kind)

    def _readdir_root(self, offset: int, size: int, plus: bool) -> list[bytes]:
        gen, start = offset >> 32, offset & 0xFFFFFFFF
        entries = self._roots.get(gen) if offset else None
        if entries is None:  # a new listing (or one whose snapshot was dropped: continue on a fresh one)
            entries = self._list_root()
            with self._lock:
                gen = next(self._root_gen)
                self._roots[gen] = entries
                while len(self._roots) > ROOT_SNAPSHOTS:
                    self._roots.popitem(last=False)
        out: list[bytes] = []
        used = 0
        for i in range(start, len(entries)):
            c, n = entries[i]
            r = kernel.pack_dirent(c, (gen << 32) | (i + 1), n[1], DTYPE[n[0]])
            if plus:
                r = self.entry(c) + r
            used += len(r)
            if used > size:
                break
            out.append(r)
        return out

    def _list_root(self) -> list[tuple[int, Entry]]:
        """A snapshot of every store path."""
        try:
            nodes = [n for pi in self.store.path_info.list() if (n := root_node(pi.node)) is not None]
        except Exception as e:
            log.error("listing path infos failed", error=str(e))
            raise FuseError(errno.EIO) from None
        with self._lock:
            return [(self.inodes.put_store_path(bytes(node[1]), node), node) for node in nodes]

    # -- files -------------------------------------------------------------------------------------------------

    def open(self, ino: int, flags: int) -> tuple[int, int, int]:
        """Open a file read-only: (file handle, FOPEN_* flags, passthrough backing id or 0)."""
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise FuseError(errno.EROFS)
        if ino == ROOT_INO:
            raise FuseError(errno.EISDIR)
        data = self._data(ino)
        if isinstance(data, DirectoryData):
            raise FuseError(errno.EISDIR)
        kind, _, ref, size, _ = data
        if kind == SYMLINK:
            raise FuseError(errno.ELOOP)
        digest = B3Digest(ref)
        blobs = self.store.blob
        handle: _LocalBlob | _FileHandle | _Passthrough
        backing_id = 0
        if isinstance(blobs, FsBlobService) and size <= READ_AHEAD:
            handle = _FileHandle(digest, size, None, buf=self._small_blob(blobs, digest, size))
        elif isinstance(blobs, FsBlobService) and self.session is not None and self.session.passthrough:
            backing_id = self._backing_ref(ino, blobs, digest, size)
            handle = _Passthrough(ino)
        elif isinstance(blobs, FsBlobService):
            handle = self._open_local(blobs, digest, size)
        else:
            handle = _FileHandle(digest, size, self._open_blob(digest))
        fh = next(self._fhs)
        self._files[fh] = handle
        if backing_id:
            return fh, kernel.FOPEN_PASSTHROUGH, backing_id
        # Content under an inode never changes, so the kernel may keep its page cache across opens.
        return fh, kernel.FOPEN_KEEP_CACHE, 0

    def _small_blob(self, blobs: FsBlobService, digest: B3Digest, size: int) -> bytes:
        """The verified content of a small blob: kept from an earlier open, else read whole and verified.

        What is kept was verified when it was read (Part A §7 holds: no byte is served unverified);
        at most :data:`SMALL_BLOBS_KEPT_BYTES` are kept.
        """
        with self._lock:
            content = self._small_blobs.get(digest)
            if content is not None:
                self._small_blobs.move_to_end(digest)
                return content
        content = _from_store(blobs.read_verified, digest, size, digest=digest,
                              failed="reading blob failed", missing="blob missing from the store")  # fmt: skip
        with self._lock:
            if digest not in self._small_blobs:
                self._small_blobs[digest] = content
                self._small_blobs_bytes += len(content)
                while self._small_blobs_bytes > SMALL_BLOBS_KEPT_BYTES:
                    self._small_blobs_bytes -= len(self._small_blobs.popitem(last=False)[1])
        return content

    def _open_local(self, blobs: FsBlobService, digest: B3Digest, size: int) -> _LocalBlob:
        """Verify the blob file of ``digest`` (EIO, logged, if missing or corrupt) and map it for reads."""
        blob = _from_store(blobs.open_verified, digest, size, digest=digest,
                           failed="reading blob failed", missing="blob missing from the store")  # fmt: skip
        try:
            return _LocalBlob(size, mmap.mmap(blob.fileno(), size, prot=mmap.PROT_READ))
        finally:
            blob.close()  # the mapping keeps its own reference to the file

    def _backing_ref(self, ino: int, blobs: FsBlobService, digest: B3Digest, size: int) -> int:
        """The passthrough backing id of ``ino``, verifying and registering its blob file on the first open."""
        assert self.session is not None
        with self._lock:
            backing = self._backings.get(ino)
            if backing is None:
                backing = self._backings[ino] = _Backing()
            backing.refs += 1
            self._idle_backings.pop(ino, None)
        try:
            with backing.lock:
                if backing.id is None:
                    blob = _from_store(blobs.open_verified, digest, size, digest=digest,
                                       failed="reading blob failed", missing="blob missing from the store")
                    try:
                        backing.id = self.session.backing_open(blob.fileno())
                    except Exception as e:
                        log.error("registering the blob file for passthrough failed", digest=str(digest),
                                  error=str(e))  # fmt: skip
                        raise FuseError(errno.EIO) from None
                    finally:
                        blob.close()  # the kernel holds its own reference to the file
                    log.debug("blob verified for passthrough", digest=str(digest), backing_id=backing.id)
                return backing.id
        except BaseException:
            self._backing_unref(ino)
            raise

    def _backing_unref(self, ino: int) -> None:
        """One open file of ``ino`` fewer; an unused backing id is kept (up to :data:`BACKINGS_KEPT`) for reopens."""
        evicted = []
        with self._lock:
            backing = self._backings.get(ino)
            if backing is None:
                return
            backing.refs -= 1
            if backing.refs > 0:
                return
            if backing.id is None:  # never registered (the verification failed)
                del self._backings[ino]
                return
            self._idle_backings[ino] = backing
            while len(self._idle_backings) > BACKINGS_KEPT:
                old_ino, old = self._idle_backings.popitem(last=False)
                del self._backings[old_ino]
                evicted.append(old.id)
        if self.session is not None:
            for backing_id in evicted:
                self.session.backing_close(backing_id)

    def _open_blob(self, digest: bytes) -> BlobReader:
        return _from_store(self.store.blob.open_read, digest, digest=digest,
                           failed="opening blob failed", missing="blob missing from the store")

    def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        """``size`` bytes at ``off`` of open file ``fh`` (fewer at EOF); EBADF for an unknown handle."""
        handle = self._files.get(fh)
        if handle is None:
            raise FuseError(errno.EBADF)
        if isinstance(handle, _Passthrough):  # the kernel reads the backing file itself
            log.error("read request for a passthrough file", fh=fh)
            raise FuseError(errno.EIO)
        if off >= handle.size or size <= 0:
            return b""
        if isinstance(handle, _LocalBlob):
            return memoryview(handle.map)[off : off + size]
        with handle.lock:
            data = handle.cached(off, size)
            if data is not None:
                return data
            try:
                return self._read_at(handle, off, size)
            except FuseError:
                raise
            except Exception as e:
                log.error("reading blob failed", digest=str(B3Digest(handle.digest)), offset=off, error=str(e))
                # Start over with a fresh reader next time rather than trusting this one's position.
                self._drop_reader(handle)
                raise FuseError(errno.EIO) from None

    def _read_at(self, handle: _FileHandle, off: int, size: int) -> bytes | memoryview:
        """Position the handle's reader at ``off`` and read ``size`` bytes (fewer at EOF).

        A sequential read (``off`` where the last one ended) reads ahead :data:`READ_AHEAD` bytes into the
        handle's buffer. A forward-only reader (the gRPC client) refuses backward seeks with
        ``io.UnsupportedOperation``; then the blob is opened afresh and read forward to ``off``.
        """
        sequential = off == handle.pos
        if handle.reader is None:
            handle.reader = self._open_blob(handle.digest)
            handle.pos = 0
        if off != handle.pos:
            try:
                handle.pos = handle.reader.seek(off)
            except io.UnsupportedOperation:
                log.debug("reopening blob to seek backwards", digest=str(B3Digest(handle.digest)), offset=off,
                          position=handle.pos)
                self._drop_reader(handle)
                handle.reader = self._open_blob(handle.digest)
                handle.pos = 0
                handle.pos = handle.reader.seek(off)
        want = max(size, READ_AHEAD) if sequential else size
        # Short reads are allowed for a RawIOBase, but FUSE takes a short reply for EOF: read until full.
        parts = []
        got = 0
        while got < want:
            chunk = handle.reader.read(want - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        handle.buf, handle.buf_off = data, off
        handle.pos = off + len(data)
        return memoryview(data)[:size]

    @staticmethod
    def _drop_reader(handle: _FileHandle) -> None:
        if handle.reader is not None:
            try:
                handle.reader.close()
            except Exception:
                pass
            handle.reader = None

    def release(self, fh: int) -> None:
        """Close open file ``fh``; an unknown handle is ignored (the kernel releases each handle once)."""
        handle = self._files.pop(fh, None)
        if isinstance(handle, _Passthrough):
            self._backing_unref(handle.ino)
        elif isinstance(handle, _LocalBlob):
            handle.close()
        elif handle is not None:
            with handle.lock:
                self._drop_reader(handle)

    # -- extended attributes ----------------------------------------------------------------------------------

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        """The extended attributes of ``ino`` (none without ``--show-xattr``; ENOENT for an unknown inode)."""
        if not self.show_xattr or ino == ROOT_INO:
            return {}
        data = self._data(ino)
        if type(data) is tuple and data[0] == FILE:
            return {XATTR_BLOB_DIGEST: str(B3Digest(data[2])).encode()}
        if isinstance(data, DirectoryData):
            return {XATTR_DIRECTORY_DIGEST: str(B3Digest(data.digest)).encode()}
        return {}

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self.xattrs(ino).get(name)
        if value is None:
            raise FuseError(errno.ENODATA)
        return value

    # -- the kernel protocol ----------------------------------------------------------------------------------

    def may_block(self, opcode: int, nodeid: int, req: bytes) -> bool:
        """Whether answering ``req`` may wait for the store or the disk: then a worker thread answers it.

        A hint (a wrong "no" only delays other requests): fetches of unknown store paths and sparse
        directories, root listings, opens (blob reads, verification) and reads not yet in memory.
        """
        if opcode == kernel.READDIRPLUS or opcode == kernel.LOOKUP or opcode == kernel.READDIR:
            if nodeid == ROOT_INO:
                return opcode != kernel.LOOKUP or self.inodes.store_path(req[kernel.IN_HEADER_SIZE : -1]) is None
            data = self.inodes.get(nodeid)
            return type(data) is DirectoryData and data.entries is None
        if opcode == kernel.OPEN:  # answered at once only for a small blob kept verified
            data = self.inodes.get(nodeid)
            return type(data) is not tuple or data[2] not in self._small_blobs
        if opcode == kernel.READ or opcode == kernel.RELEASE:
            handle = self._files.get(struct.unpack_from("<Q", req, kernel.IN_HEADER_SIZE)[0])
            if isinstance(handle, _FileHandle):
                if opcode == kernel.RELEASE:
                    return handle.reader is not None
                _, off, size, _ = kernel.READ_IN.unpack_from(req, kernel.IN_HEADER_SIZE)
                return handle.cached(off, size) is None
        return False

    def handlers(self) -> dict[int, kernel.Handler]:
        """Opcode -> handler of ``(nodeid, request)``: unpack the arguments, call the method, pack the reply.

        Opcodes not here are answered by :class:`kernel.Session` (writes EROFS, the rest ENOSYS or no-ops).
        """
        h = kernel.IN_HEADER_SIZE
        read_in = kernel.READ_IN
        u32 = struct.Struct("<I")

        def lookup(nodeid: int, req: bytes) -> bytes:
            ino = self.lookup(nodeid, req[h:-1])
            if nodeid != ROOT_INO and type(self.inodes.get(ino)) is not DirectoryData:
                self.statters.note(request_pid(req))  # it wants attributes its listings could carry
            return self.entry(ino)

        lean_listings, statters = self._listings[LEAN], self.statters

        def readdirplus(nodeid: int, req: bytes) -> bytes | memoryview | list[bytes]:
            _, offset, size, _ = read_in.unpack_from(req, h)
            pid = request_pid(req)
            listing = lean_listings.get(nodeid)
            if listing is not None and pid not in statters:  # the common case (`find`), without readdir's checks
                return listing.window(offset, size)
            return self.readdir(nodeid, offset, size, plus=True, pid=pid)

        def readdir(nodeid: int, req: bytes) -> bytes | memoryview | list[bytes]:
            _, offset, size, _ = read_in.unpack_from(req, h)
            return self.readdir(nodeid, offset, size, plus=False)

        def open_(nodeid: int, req: bytes) -> bytes:
            return kernel.pack_open(*self.open(nodeid, u32.unpack_from(req, h)[0]))

        def read(nodeid: int, req: bytes) -> bytes | memoryview:
            fh, offset, size, _ = read_in.unpack_from(req, h)
            return self.read(fh, offset, size)

        def release(nodeid: int, req: bytes) -> None:
            self.release(struct.unpack_from("<Q", req, h)[0])

        def getxattr(nodeid: int, req: bytes) -> bytes:
            size = u32.unpack_from(req, h)[0]
            name = req[h + 8 :].split(b"\0", 1)[0]
            return kernel.xattr_reply(self.getxattr(nodeid, name), size)

        def listxattr(nodeid: int, req: bytes) -> bytes:
            size = u32.unpack_from(req, h)[0]
            return kernel.xattr_reply(b"".join(name + b"\0" for name in self.xattrs(nodeid)), size)

        handlers: dict[int, kernel.Handler] = {
            kernel.LOOKUP: lookup,
            kernel.GETATTR: lambda nodeid, req: self.getattr(nodeid),
            kernel.READLINK: lambda nodeid, req: self.readlink(nodeid),
            kernel.READDIRPLUS: readdirplus,
            kernel.READDIR: readdir,
            kernel.OPEN: open_,
            kernel.READ: read,
            kernel.RELEASE: release,
            kernel.STATFS: lambda nodeid, req: kernel.pack_statfs(BLKSIZE, 255),
        }
        if self.show_xattr:
            # Without --show-xattr no handler: ENOSYS (the reference's answer), which the kernel remembers
            # for the whole mount. Answering ENODATA instead cost `ls -l` a LISTXATTR and two GETXATTRs
            # per entry, every time: 10,900 requests for `ls -lR` of /usr/share/doc.
            handlers[kernel.GETXATTR] = getxattr
            handlers[kernel.LISTXATTR] = listxattr
        return handlers
