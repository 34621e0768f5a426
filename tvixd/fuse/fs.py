"""The FUSE operations: a read-only view of a Store, with ``/nix/store`` at the mount root.

Behaviour follows SPEC Part B §8 with the Part A §10 fixes: the executable bit
is shown, nlink is 1, unknown inodes and file handles give errors instead of
crashing, and every write-type operation is refused with EROFS (the mount is
also made with ``ro``, so the kernel refuses most writes before they get here).

Concurrency: pyfuse3 runs each request in a trio task on one thread. Every
call that may block (PathInfo/Directory fetches, blob opens and reads) runs in
a worker thread via ``trio.to_thread.run_sync``, so one slow read does not
stall lookups; the inode tracker is only touched from the trio thread, so it
needs no lock. Reads on one file handle are serialised by a per-handle lock
(the kernel may issue several at once, and a reader has one position).

Reads (Part A §7: never serve bytes not verified against the digest): a small
blob (at most :data:`READ_AHEAD`) of the local fs:// store is read whole and
verified at open (``FsBlobService.read_verified``: one thread hop per file); a
bigger one is verified whole on the first read of an open file (blake3 over an
mmap of the file, on all cores), then served straight from that mapping without
another copy or thread hop (see :class:`_LocalBlob`). Other backends (gRPC,
memory) stream through their ``BlobReader``, which verifies sequential reads.

Errors: missing or unreadable content behind a PathInfo gives EIO on that file
or directory only; the mount stays up. An unexpected exception in a handler
is logged and answered with EIO (pyfuse3 would otherwise end the main loop).
"""

from __future__ import annotations

import errno
import functools
import io
import mmap
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import blake3
import pyfuse3
import structlog
import trio

from tvixd.blobservice.base import BlobReader
from tvixd.blobservice.fs import FsBlobService
from tvixd.castore.digest import B3Digest
from tvixd.castore.directory import AnyNode, directory_digest
from tvixd.errors import DataLoss
from tvixd.fuse.inodes import ROOT_INO, DirectoryData, FileData, InodeData, InodeTracker, SymlinkData
from tvixd.proto.castore_pb2 import Directory
from tvixd.store import Store

log = structlog.get_logger("tvixd.fuse")

TTL = 365 * 24 * 3600.0
"""Attribute and entry cache lifetime: content under an inode never changes (SPEC §8.2 uses the maximum)."""

ROOT_TTL = 1.0
"""Attribute cache lifetime of the mount root itself."""

SUBTREE_FETCH = 20_000
"""Directories whose whole subtree has at most this many elements are fetched in one go (see _populated)."""

BLKSIZE = 4096
"""st_blksize; the reference's 1024 makes stdio-buffered readers issue tiny reads."""

XATTR_BLOB_DIGEST = b"user.tvix.castore.blob.digest"
XATTR_DIRECTORY_DIGEST = b"user.tvix.castore.directory.digest"
"""Extended attribute names (as later tvix-castore uses); values are ``b3:<standard base64>`` of the digest,
the form tvixd prints everywhere. Only present with ``--show-xattr``; symlinks and the root have none."""

READ_AHEAD = 1 << 20
"""Bytes a sequential read fetches per worker-thread hop; see BENCHMARKS.md (fuse) for the measurement."""

_T = TypeVar("_T")


def _guard(fn: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """Turn any unexpected exception of a handler into EIO (logged) so the main loop keeps running."""

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> _T:
        try:
            return await fn(*args)
        except pyfuse3.FUSEError:
            raise
        except trio.Cancelled:
            raise
        except Exception:
            log.exception("fuse handler failed", op=fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _erofs(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A write-type operation: always refused, the store is read-only."""

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    return wrapper


def root_node(node_msg: Any) -> AnyNode | None:
    """The set member of a ``pathinfo_pb2.Node`` oneof, or ``None`` if unset."""
    which = node_msg.WhichOneof("node")
    return getattr(node_msg, which) if which else None


async def _from_store(fn: Callable[..., _T | None], *args: Any, digest: bytes, failed: str, missing: str) -> _T:
    """A blocking store call on a worker thread; a failure or a missing object is EIO, logged with its digest.

    To the kernel both are I/O errors (the tree it was shown promised the object); the log says which.
    """
    try:
        result = await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
    except Exception as e:
        log.error(failed, digest=str(B3Digest(digest)), error=str(e))
        raise pyfuse3.FUSEError(errno.EIO) from None
    if result is None:
        log.error(missing, digest=str(B3Digest(digest)))
        raise pyfuse3.FUSEError(errno.EIO)
    return result


@dataclass
class _FileHandle:
    """An open file: a reader over its blob, positioned at ``pos``, and the last bytes read.

    ``buf`` holds the blob's bytes from ``buf_off`` on, as read ahead by the last worker-thread read;
    requests inside it are answered on the event loop without a thread hop.
    """

    digest: bytes
    size: int
    reader: BlobReader | None
    pos: int = 0
    buf: bytes = b""
    buf_off: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)

    def cached(self, off: int, size: int) -> memoryview | None:
        """The requested bytes if the read-ahead buffer holds them all (or up to EOF)."""
        start = off - self.buf_off
        if start < 0 or start >= len(self.buf):
            return None
        end = start + size
        if end > len(self.buf) and self.buf_off + len(self.buf) < self.size:
            return None
        return memoryview(self.buf)[start:end]  # no copy: pyfuse3 takes any buffer


@dataclass
class _LocalBlob:
    """An open blob file of the fs:// store: verified whole once, then served from a read-only mmap.

    Why: verifying as bytes stream by costs a blake3 pass per read anyway, and random access (which
    FUSE does) cannot be verified piecewise; one whole-blob pass is as cheap as a sequential read's
    and uses all cores (measured: 45-55 ms per 128 MiB here, 75 ms on one core). Afterwards a read
    is a slice of the mapping that pyfuse3 copies into the kernel directly: no ``pread`` copy and
    no worker-thread hop, and the pages are resident because the verification just touched them.
    The file must not be truncated while mapped (a read would then fault with SIGBUS); blob files
    are immutable (mode 0444, replaced only by rename), so the size is checked once at open.
    """

    digest: bytes
    size: int
    fd: int
    verified: bool = False
    map: mmap.mmap | None = None  # the file's bytes once verified (None for an empty file)
    lock: trio.Lock = field(default_factory=trio.Lock)

    def verify(self) -> None:
        """Runs in a worker thread: map the file and check it hashes to ``digest``; DataLoss otherwise."""
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        mapping = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ) if self.size else None
        if mapping is not None:
            hasher.update(mapping)
        if hasher.digest() != self.digest:
            if mapping is not None:
                mapping.close()
            raise DataLoss(f"blob {B3Digest(self.digest)} is corrupt on disk: its bytes no longer hash to it")
        self.map, self.verified = mapping, True

    def close(self) -> None:
        mapping, self.map = self.map, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:  # a reply still holds a view: the mapping goes with the last reference
                pass
        os.close(self.fd)


@dataclass
class _DirHandle:
    """An open directory; for the root, the listing snapshot taken by the first readdir."""

    ino: int
    entries: list[tuple[int, AnyNode]] | None = None


class StoreFS(pyfuse3.Operations):
    """pyfuse3 operations over one :class:`Store`."""

    supports_dot_lookup = False

    def __init__(self, store: Store, *, list_root: bool = False, show_xattr: bool = False) -> None:
        super().__init__()
        self.store = store
        self.list_root = list_root
        self.show_xattr = show_xattr
        self.inodes = InodeTracker()
        self._files: dict[int, _LocalBlob | _FileHandle] = {}
        self._entries: dict[int, pyfuse3.EntryAttributes] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1

    # -- helpers -----------------------------------------------------------------------------------------

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _attrs(self, ino: int, data: InodeData | None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 1
        a.entry_timeout = TTL
        a.attr_timeout = TTL
        a.st_nlink = 1
        a.st_uid = 0
        a.st_gid = 0
        a.st_blksize = BLKSIZE
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = 0
        if data is None:  # the root
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_size = 0
            # Short, so that a crashed mount shows as ENOTCONN on `stat DEST` soon, not after a year.
            a.attr_timeout = ROOT_TTL
        elif isinstance(data, FileData):
            a.st_mode = stat.S_IFREG | (0o555 if data.executable else 0o444)
            a.st_size = data.size
            a.st_blocks = (data.size + 511) // 512
        elif isinstance(data, SymlinkData):
            # Linux ignores a symlink's mode (readlink needs no permission, and diff/tar/rsync do not
            # compare it), so we keep the reference's 0o444 rather than the conventional 0o777.
            a.st_mode = stat.S_IFLNK | 0o444
            a.st_size = len(data.target)
        else:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_size = data.size
        return a

    def _entry(self, ino: int) -> pyfuse3.EntryAttributes:
        """The attributes of a tracked inode (ENOENT if unknown), built once and kept.

        An inode's data never changes (a directory's size is fixed before it is populated), and
        readdirplus asks for the attributes of every entry of every listing: `find` over a tree
        otherwise rebuilds one EntryAttributes per entry per run.
        """
        a = self._entries.get(ino)
        if a is None:
            a = self._entries[ino] = self._attrs(ino, self._data(ino))
        return a

    def _data(self, ino: int) -> InodeData:
        """The tracked data of ``ino``; ENOENT for an inode we never handed out."""
        data = self.inodes.get(ino)
        if data is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return data

    async def _populated(self, data: InodeData) -> DirectoryData:
        """``data`` as a populated directory, fetching it from the DirectoryService if still sparse.

        A small subtree (at most :data:`SUBTREE_FETCH` elements, known from the DirectoryNode's size)
        is fetched whole with one ``get_recursive``: one worker-thread hop (one RPC for a gRPC store)
        instead of one per directory. If that fails (e.g. a descendant is missing), only this
        directory is fetched, so a broken subdirectory gives EIO on itself alone.
        """
        if not isinstance(data, DirectoryData):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if data.populated:
            return data
        digest = B3Digest(data.digest)
        if 0 < data.size <= SUBTREE_FETCH:
            try:
                directories = await trio.to_thread.run_sync(self._fetch_subtree, digest, abandon_on_cancel=True)
            except Exception as e:
                log.debug("subtree fetch failed, fetching the directory alone", digest=str(digest), error=str(e))
            else:
                for sub_digest, directory in directories:
                    self.inodes.put_directory(sub_digest, directory)
                if data.populated:
                    return data
        directory = await _from_store(self.store.directory.get, digest, digest=digest,
                                      failed="directory fetch failed", missing="directory missing from the store")
        self.inodes.put_directory(digest, directory)
        return data

    def _fetch_subtree(self, digest: B3Digest) -> list[tuple[B3Digest, Directory]]:
        """Runs in a worker thread: the directory and all its descendants, each with its digest (root first)."""
        out = []
        seen: set[bytes] = set()
        for directory in self.store.directory.get_recursive(digest):
            sub_digest = directory_digest(directory)
            if sub_digest not in seen:
                seen.add(sub_digest)
                out.append((sub_digest, directory))
        return out

    # -- lookups and attributes -----------------------------------------------------------------------------

    @_guard
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT_INO:
            ino = await self._lookup_store_path(bytes(name))
        else:
            data = await self._populated(self._data(parent_inode))
            assert data.children is not None
            i = data.index.get(bytes(name))
            if i is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            ino = data.children[i][0]
        return self._entry(ino)

    async def _lookup_store_path(self, name: bytes) -> int:
        """The inode of the store path ``name`` (a basename), asking the PathInfoService the first time."""
        ino = self.inodes.store_path(name)
        if ino is not None:
            return ino
        from tvixd.castore.storepath import StorePath

        try:
            store_path = StorePath.from_basename(name.decode())
        except Exception:  # not UTF-8, not a store path basename: it can't exist
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        try:
            path_info = await trio.to_thread.run_sync(
                self.store.path_info.get, store_path.digest, abandon_on_cancel=True
            )
        except Exception as e:
            log.error("path info lookup failed", store_path=name.decode(), error=str(e))
            raise pyfuse3.FUSEError(errno.EIO) from None
        if path_info is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = root_node(path_info.node)
        if node is None:
            log.error("path info has no root node", store_path=name.decode())
            raise pyfuse3.FUSEError(errno.EIO)
        # The hash alone is not enough: `<hash>-tes` must not find `<hash>-test`.
        if bytes(node.name) != name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.inodes.put_store_path(name, node)

    @_guard
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == ROOT_INO:
            return self._attrs(ROOT_INO, None)
        return self._entry(inode)

    async def forget(self, inode_list: Any) -> None:
        """Inodes are never freed: the numbers are content addresses, cheap to keep."""

    @_guard
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == ROOT_INO:
            raise pyfuse3.FUSEError(errno.EINVAL)
        data = self._data(inode)
        if not isinstance(data, SymlinkData):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return data.target

    # -- directories ---------------------------------------------------------------------------------------

    @_guard
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT_INO and not isinstance(self._data(inode), DirectoryData):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._fh()
        self._dirs[fh] = _DirHandle(inode)
        return fh

    @_guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if handle.ino == ROOT_INO:
            if not self.list_root:
                raise pyfuse3.FUSEError(errno.EPERM)
            if handle.entries is None:
                handle.entries = await self._list_root()
            entries = handle.entries
        else:
            data = await self._populated(self._data(handle.ino))
            assert data.children is not None
            entries = data.children
        # Offsets are indices into an immutable list (the merged child order, or the root snapshot):
        # entry i has next-offset i + 1. No `.`/`..` entries, as in the reference.
        for i in range(start_id, len(entries)):
            ino, node = entries[i]
            if not pyfuse3.readdir_reply(token, node.name, self._entry(ino), i + 1):
                return

    async def _list_root(self) -> list[tuple[int, AnyNode]]:
        """A snapshot of every store path (taken once per opendir, so offsets stay consistent)."""

        def collect() -> list[AnyNode]:
            nodes = []
            for path_info in self.store.path_info.list():
                node = root_node(path_info.node)
                if node is not None:
                    nodes.append(node)
            return nodes

        try:
            nodes = await trio.to_thread.run_sync(collect, abandon_on_cancel=True)
        except Exception as e:
            log.error("listing path infos failed", error=str(e))
            raise pyfuse3.FUSEError(errno.EIO) from None
        return [(self.inodes.put_store_path(bytes(node.name), node), node) for node in nodes]

    @_guard
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files -----------------------------------------------------------------------------------------------

    @_guard
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        if inode == ROOT_INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        data = self._data(inode)
        if isinstance(data, DirectoryData):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if isinstance(data, SymlinkData):
            raise pyfuse3.FUSEError(errno.ELOOP)
        handle: _LocalBlob | _FileHandle
        if isinstance(self.store.blob, FsBlobService) and data.size <= READ_AHEAD:
            handle = await self._read_small(self.store.blob, data)
        elif isinstance(self.store.blob, FsBlobService):
            handle = await self._open_local(self.store.blob, data)
        else:
            handle = _FileHandle(data.digest, data.size, await self._open_blob(data.digest))
        fh = self._fh()
        self._files[fh] = handle
        # Content under an inode never changes, so the kernel may keep its page cache across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def _read_small(self, blobs: FsBlobService, data: FileData) -> _FileHandle:
        """A small fs:// blob, read whole and verified at open: one worker-thread hop per file opened and read.

        Its handle holds all the bytes (as a read-ahead buffer covering the file), so no read needs a reader.
        """
        digest = B3Digest(data.digest)
        content = await _from_store(blobs.read_verified, digest, data.size, digest=digest,
                                    failed="reading blob failed", missing="blob missing from the store")
        return _FileHandle(data.digest, data.size, None, buf=content)

    async def _open_local(self, blobs: FsBlobService, data: FileData) -> _LocalBlob:
        """Open the blob file of ``data`` in the fs:// store (verified later, on the first read)."""
        digest = B3Digest(data.digest)
        path = blobs.path_of(digest)

        def open_file() -> int:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
            except BaseException:
                os.close(fd)
                raise
            if size != data.size:
                os.close(fd)
                raise DataLoss(f"blob file {path} has {size} bytes, the store says {data.size}")
            return fd

        try:
            fd = await trio.to_thread.run_sync(open_file)
        except FileNotFoundError:
            log.error("blob missing from the store", digest=str(digest))
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as e:
            log.error("opening blob failed", digest=str(digest), error=str(e))
            raise pyfuse3.FUSEError(errno.EIO) from None
        return _LocalBlob(data.digest, data.size, fd)

    async def _read_local(self, handle: _LocalBlob, off: int, size: int) -> memoryview:
        """A read of an fs:// blob: verify the whole blob on the first read, then slice the mapping."""
        if not handle.verified:
            async with handle.lock:
                if not handle.verified:
                    try:
                        # Not abandoned on cancel: the thread uses the handle's descriptor.
                        await trio.to_thread.run_sync(handle.verify)
                    except Exception as e:
                        log.error("reading blob failed", digest=str(B3Digest(handle.digest)), error=str(e))
                        raise pyfuse3.FUSEError(errno.EIO) from None
        assert handle.map is not None  # verified, and not empty (the caller answered reads past EOF)
        return memoryview(handle.map)[off : off + size]

    async def _open_blob(self, digest: bytes) -> BlobReader:
        return await _from_store(self.store.blob.open_read, digest, digest=digest,
                                 failed="opening blob failed", missing="blob missing from the store")

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if off >= handle.size or size <= 0:
            return b""
        if isinstance(handle, _LocalBlob):
            return await self._read_local(handle, off, size)
        async with handle.lock:
            data = handle.cached(off, size)
            if data is not None:
                return data
            try:
                return await trio.to_thread.run_sync(self._read_at, handle, off, size, abandon_on_cancel=True)
            except pyfuse3.FUSEError:
                raise
            except Exception as e:
                log.error("reading blob failed", digest=str(B3Digest(handle.digest)), offset=off, error=str(e))
                # Start over with a fresh reader next time rather than trusting this one's position.
                self._drop_reader(handle)
                raise pyfuse3.FUSEError(errno.EIO) from None

    def _read_at(self, handle: _FileHandle, off: int, size: int) -> bytes | memoryview:
        """Runs in a worker thread: position the handle's reader at ``off`` and read ``size`` bytes (fewer at EOF).

        A sequential read (``off`` where the last one ended) reads ahead :data:`READ_AHEAD` bytes into the
        handle's buffer, so the next requests (the kernel sends at most 128 KiB each) need no thread hop.
        A forward-only reader (the gRPC client) refuses backward seeks with ``io.UnsupportedOperation``;
        then the blob is opened afresh and read forward to ``off``.
        """
        sequential = off == handle.pos
        if handle.reader is None:
            handle.reader = self._open_blob_sync(handle.digest)
            handle.pos = 0
        if off != handle.pos:
            try:
                handle.pos = handle.reader.seek(off)
            except io.UnsupportedOperation:
                log.debug("reopening blob to seek backwards", digest=str(B3Digest(handle.digest)), offset=off,
                          position=handle.pos)
                self._drop_reader(handle)
                handle.reader = self._open_blob_sync(handle.digest)
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

    def _open_blob_sync(self, digest: bytes) -> BlobReader:
        reader = self.store.blob.open_read(digest)
        if reader is None:
            log.error("blob missing from the store", digest=str(B3Digest(digest)))
            raise pyfuse3.FUSEError(errno.EIO)
        return reader

    @staticmethod
    def _drop_reader(handle: _FileHandle) -> None:
        if handle.reader is not None:
            try:
                handle.reader.close()
            except Exception:
                pass
            handle.reader = None

    @_guard
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if isinstance(handle, _LocalBlob):
            async with handle.lock:
                handle.close()
        elif handle is not None and (handle.reader is not None or handle.lock.locked()):
            async with handle.lock:
                await trio.to_thread.run_sync(self._drop_reader, handle, abandon_on_cancel=True)

    async def flush(self, fh: int) -> None:
        """Nothing to flush on a read-only file (ENOSYS would also do, this is quieter)."""

    async def fsync(self, fh: int, datasync: bool) -> None:
        """Nothing to sync."""

    # -- extended attributes ----------------------------------------------------------------------------------

    def _xattrs(self, inode: int) -> dict[bytes, bytes]:
        if not self.show_xattr or inode == ROOT_INO:
            return {}
        data = self._data(inode)
        if isinstance(data, FileData):
            return {XATTR_BLOB_DIGEST: str(B3Digest(data.digest)).encode()}
        if isinstance(data, DirectoryData):
            return {XATTR_DIRECTORY_DIGEST: str(B3Digest(data.digest)).encode()}
        return {}

    @_guard
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self._xattrs(inode).get(bytes(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_guard
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(self._xattrs(inode))

    # -- the rest ------------------------------------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Nothing is free on a read-only filesystem; names up to 255 bytes."""
        st = pyfuse3.StatvfsData()
        st.f_bsize = BLKSIZE
        st.f_frsize = BLKSIZE
        st.f_namemax = 255
        return st

    setattr = _erofs(pyfuse3.Operations.setattr)
    mknod = _erofs(pyfuse3.Operations.mknod)
    mkdir = _erofs(pyfuse3.Operations.mkdir)
    unlink = _erofs(pyfuse3.Operations.unlink)
    rmdir = _erofs(pyfuse3.Operations.rmdir)
    symlink = _erofs(pyfuse3.Operations.symlink)
    rename = _erofs(pyfuse3.Operations.rename)
    link = _erofs(pyfuse3.Operations.link)
    write = _erofs(pyfuse3.Operations.write)
    create = _erofs(pyfuse3.Operations.create)
    setxattr = _erofs(pyfuse3.Operations.setxattr)
    removexattr = _erofs(pyfuse3.Operations.removexattr)

