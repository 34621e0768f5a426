"""The FUSE kernel protocol over ``/dev/fuse``, in plain Python (no libfuse, no pyfuse3).

Why our own: Debian's libfuse 3.14 and pyfuse3 expose neither FUSE passthrough (the kernel reads
a verified blob file itself, no copy through userspace) nor FUSE_NO_OPENDIR_SUPPORT (no OPENDIR /
RELEASEDIR round trips per directory), and pyfuse3 + trio cost 60-90 us per request; a request
here is one ``os.read``, a dict dispatch and one ``os.write`` (see BENCHMARKS.md, fuse).

Layout follows ``include/uapi/linux/fuse.h`` (protocol 7.40: passthrough). :func:`mount` opens
the device and mounts it (mount(2) as root, ``fusermount3`` otherwise); :class:`Session` answers
INIT, then reads requests on one thread, calls the handler for each opcode and writes the reply;
a request that may block (a store fetch, a blob verification) is handed to a worker thread, so it
stalls nothing else. Handlers get ``(nodeid, request bytes)`` and return the reply payload; they
raise :class:`FuseError` for an errno. Unknown opcodes get ENOSYS; a failing handler gets EIO (logged).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import fcntl
import os
import queue
import select
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

log = structlog.get_logger("tvixd.fuse")

KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 40  # 7.40: FUSE_PASSTHROUGH, fuse_open_out.backing_id, init_out.max_stack_depth

# Opcodes (enum fuse_opcode).
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS, RELEASE = 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, INIT = 20, 21, 22, 23, 24, 25, 26
OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, GETLK, SETLK, SETLKW, ACCESS, CREATE = 27, 28, 29, 30, 31, 32, 33, 34, 35
INTERRUPT, BMAP, DESTROY, IOCTL, POLL, NOTIFY_REPLY, BATCH_FORGET, FALLOCATE = 36, 37, 38, 39, 40, 41, 42, 43
READDIRPLUS, RENAME2, LSEEK, COPY_FILE_RANGE, SETUPMAPPING, REMOVEMAPPING, SYNCFS, TMPFILE = (
    44, 45, 46, 47, 48, 49, 50, 51)  # fmt: skip
STATX, COPY_FILE_RANGE_64 = 52, 53
OPCODE_NAMES = {v: k for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int) and k != "KERNEL_VERSION"
                and k != "KERNEL_MINOR_VERSION"}  # fmt: skip
"""Opcode -> name, for logs and request counts."""

WRITE_OPS = (SETATTR, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, WRITE, SETXATTR, REMOVEXATTR, CREATE,
             FALLOCATE, RENAME2, COPY_FILE_RANGE, TMPFILE, COPY_FILE_RANGE_64)  # fmt: skip
"""Opcodes that would change the filesystem: always EROFS (the kernel refuses most of them itself, ``ro``)."""

NO_REPLY = (FORGET, BATCH_FORGET, INTERRUPT)
"""Requests the kernel expects no answer to."""

# INIT flags (fuse_init_in/out.flags; bits >= 32 travel in flags2 when FUSE_INIT_EXT is set).
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
DO_READDIRPLUS = 1 << 13
WRITEBACK_CACHE = 1 << 16  # never asked for: passthrough excludes it, and nothing is written
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37

# fuse_open_out.open_flags
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_PASSTHROUGH = 1 << 7

# ioctls on the device (FUSE_DEV_IOC_MAGIC 229): _IOW(229, 1, struct fuse_backing_map), _IOW(229, 2, uint32_t)
DEV_IOC_BACKING_OPEN = (1 << 30) | (16 << 16) | (229 << 8) | 1
DEV_IOC_BACKING_CLOSE = (1 << 30) | (4 << 16) | (229 << 8) | 2

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error (negative errno), unique
IN_HEADER_SIZE = IN_HEADER.size  # 40
_pack_out_header = OUT_HEADER.pack
# ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev blksize flags
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec
ENTRY_OUT = struct.Struct("<QQQQII" + ATTR.format[1:])  # the head and the fuse_attr in one pack
ATTR_OUT_HEAD = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
DIRENT = struct.Struct("<QQII")  # ino off namelen type (name follows, padded to 8)
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
READ_IN = struct.Struct("<QQII")  # fh offset size read_flags (lock_owner, flags follow)
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (flags2 follows with INIT_EXT)
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # ... flags2 max_stack_depth unused; 64 bytes
KSTATFS = struct.Struct("<QQQQQIII28x")  # blocks bfree bavail files ffree bsize namelen frsize; 80 bytes

MAX_PAGES_VALUE = 256
"""Pages per READ request (1 MiB): the kernel sends fewer, larger reads on the non-passthrough path."""

MAX_WRITE = 4096
"""The mount is read-only; the smallest value the kernel accepts keeps the request buffer small."""

BUFFER_SIZE = 64 * 1024 + 4096
"""Bytes read per request: at least max(8192, 40 + 40 + MAX_WRITE) as the kernel demands; names are <= 255."""

Reply = bytes | bytearray | memoryview | Sequence[Any] | None
Handler = Callable[[int, bytes], Reply]


class FuseError(Exception):
    """A handler's answer is this errno (ENOENT, EIO, ...), not a crash."""

    def __init__(self, errno_: int) -> None:
        super().__init__(os.strerror(errno_))
        self.errno = errno_


class MountFailed(Exception):
    """mount(2) or fusermount3 refused; the message says why."""


# -- mounting ----------------------------------------------------------------------------------------------

MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(dest: str, *, allow_other: bool) -> int:
    """Open /dev/fuse and mount it read-only at ``dest``; the device fd (close-on-exec).

    As root: mount(2) directly. Otherwise ``fusermount3`` (setuid) mounts and hands the fd back over
    a socketpair (the ``_FUSE_COMMFD`` protocol libfuse uses).
    """
    if os.geteuid() != 0:
        return mount_with_fusermount(dest, allow_other=allow_other)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    data = f"fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions"
    if allow_other:
        data += ",allow_other"
    libc = _libc()
    if libc.mount(b"tvixd", os.fsencode(dest), b"fuse.tvixd", MS_RDONLY | MS_NOSUID | MS_NODEV, data.encode()) != 0:
        e = ctypes.get_errno()
        os.close(fd)
        if e == errno.EPERM:  # root without CAP_SYS_ADMIN (a container): fusermount3 may still be allowed
            return mount_with_fusermount(dest, allow_other=allow_other)
        raise MountFailed(f"mount(2) failed: {os.strerror(e)}")
    return fd


def mount_with_fusermount(dest: str, *, allow_other: bool) -> int:
    """Mount through ``fusermount3``: it opens /dev/fuse, mounts, and sends the fd back with SCM_RIGHTS."""
    options = "ro,nosuid,nodev,default_permissions,fsname=tvixd,subtype=tvixd" + (",allow_other" if allow_other else "")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        try:
            proc = subprocess.run(["fusermount3", "-o", options, "--", dest], env=env, pass_fds=(theirs.fileno(),),
                                  capture_output=True, check=False)  # fmt: skip
        except FileNotFoundError:
            raise MountFailed("fusermount3 is not installed (Debian: fuse3)") from None
        theirs.close()
        if proc.returncode != 0:
            raise MountFailed(proc.stderr.decode(errors="replace").strip() or f"fusermount3 exited {proc.returncode}")
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        if not fds:
            raise MountFailed("fusermount3 sent no file descriptor")
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        ours.close()
        theirs.close()


def unmount(dest: str) -> None:
    """Detach the mount at ``dest`` (lazily, like libfuse: open files keep working until closed)."""
    if os.geteuid() == 0:
        if _libc().umount2(os.fsencode(dest), MNT_DETACH) == 0:
            return
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            return
        log.warning("umount2 failed, trying fusermount3", dest=dest, error=os.strerror(e))
    subprocess.run(["fusermount3", "-u", "-q", "-z", "--", dest], capture_output=True, check=False)


# -- replies -----------------------------------------------------------------------------------------------


def pack_attr(ino: int, size: int, blocks: int, mode: int, blksize: int) -> bytes:
    """A ``fuse_attr``: times 0, nlink 1, owner root (the store's fixed attributes, Part A §10)."""
    return ATTR.pack(ino, size, blocks, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, blksize, 0)


def pack_entry(ino: int, size: int, blocks: int, mode: int, blksize: int, ttl: int) -> bytes:
    """A ``fuse_entry_out`` (LOOKUP's reply, the head of a READDIRPLUS entry): :func:`pack_attr`'s attributes,
    entry and attributes valid for ``ttl`` seconds. One pack: a tree's first listing builds one per entry."""
    return ENTRY_OUT.pack(ino, 1, ttl, ttl, 0, 0, ino, size, blocks, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, blksize, 0)


def pack_attr_out(attr: bytes, attr_ttl: int) -> bytes:
    """A ``fuse_attr_out`` (GETATTR's reply); lifetime in whole seconds."""
    return ATTR_OUT_HEAD.pack(attr_ttl, 0, 0) + attr


PADDING = [b"\0" * (-n % 8) for n in range(8)]
"""Zero bytes that pad a name of length n to a multiple of 8: ``PADDING[len(name) & 7]``."""


def pack_dirent(ino: int, off: int, name: bytes, dtype: int) -> bytes:
    """A ``fuse_dirent``, padded to 8 bytes."""
    return DIRENT.pack(ino, off, len(name), dtype) + name + PADDING[len(name) & 7]


def pack_open(fh: int, open_flags: int, backing_id: int = 0) -> bytes:
    return OPEN_OUT.pack(fh, open_flags, backing_id)


def pack_statfs(bsize: int, namelen: int) -> bytes:
    """A ``fuse_statfs_out``: nothing is free on a read-only filesystem."""
    return KSTATFS.pack(0, 0, 0, 0, 0, bsize, namelen, bsize)


def xattr_reply(value: bytes, size: int) -> bytes:
    """GETXATTR/LISTXATTR: with size 0 the caller asks for the length only; too small a buffer is ERANGE."""
    if size == 0:
        return struct.pack("<II", len(value), 0)
    if len(value) > size:
        raise FuseError(errno.ERANGE)
    return value


# -- the session ---------------------------------------------------------------------------------------------


class Session:
    """One mounted FUSE connection: INIT, then one request loop and ``threads`` workers until the device goes away.

    The loop thread answers what needs no waiting itself (one thread: no hand-off per request, which
    measured ~20% of a cold `find`); a request ``may_block`` says may wait (a store fetch, a blob
    verification) goes to a worker thread, so it stalls neither the loop nor other requests. Between
    requests the loop runs the short jobs queued in ``idle_work`` (work a request would otherwise wait
    for, done while the requester is busy elsewhere, e.g. the next listings of a tree walk).
    """

    def __init__(self, fd: int, handlers: Mapping[int, Handler], *, threads: int = 4, passthrough: bool = True,
                 may_block: Callable[[int, int, bytes], bool] | None = None) -> None:  # fmt: skip
        self.fd = fd
        self.handlers = dict(handlers)
        self.threads = threads
        self.may_block = may_block
        self.want_passthrough = passthrough
        self.passthrough = False  # granted by the kernel at INIT
        self.no_opendir = False
        self.initialised = threading.Event()
        self.ended = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue: queue.SimpleQueue[tuple[Handler, int, int, int, bytes] | None] = queue.SimpleQueue()
        self.idle_work: collections.deque[Callable[[], object]] = collections.deque()
        """Small jobs the loop runs, newest first, while no request waits (each may delay one request)."""

    # replies may be written from any thread: each is one writev, which the kernel takes whole
    def reply(self, unique: int, payload: Reply) -> None:
        """Write the reply to request ``unique``: a buffer (maybe empty), a sequence of buffers, or None (no payload).

        One call for the common answers (it runs ~1,700 times for a fresh mount's `find` of /usr/share/doc)."""
        kind = type(payload)
        if kind is bytes or kind is memoryview or kind is bytearray:
            if payload:
                buffers = [_pack_out_header(16 + len(payload), 0, unique), payload]  # type: ignore[arg-type]
            else:
                buffers = [_pack_out_header(16, 0, unique)]  # the end of a listing, most often
        elif payload is None:
            buffers = [_pack_out_header(16, 0, unique)]
        else:
            buffers = [_pack_out_header(16 + sum(len(p) for p in payload), 0, unique), *payload]  # type: ignore[union-attr]
        try:
            os.writev(self.fd, buffers)
        except OSError as e:
            self._write_failed(e)

    def reply_error(self, unique: int, err: int) -> None:
        self._write([OUT_HEADER.pack(16, -err, unique)])

    def _write(self, buffers: list[Any]) -> None:
        try:
            os.writev(self.fd, buffers)
        except OSError as e:
            self._write_failed(e)

    @staticmethod
    def _write_failed(e: OSError) -> None:
        # ENOENT: the request was interrupted or aborted meanwhile; ENODEV: the mount is gone.
        if e.errno not in (errno.ENOENT, errno.ENODEV):
            log.error("writing a FUSE reply failed", error=str(e))

    def start(self) -> None:
        """Start the request loop and the workers."""
        for i in range(self.threads):
            t = threading.Thread(target=self._work, name=f"fuse-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._loop, name="fuse-loop", daemon=True)
        t.start()
        self._threads.append(t)

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self._dispatch(*item)

    def _loop(self) -> None:
        fd, handlers, may_block, queue_put = self.fd, self.handlers, self.may_block, self._queue.put
        # One buffer for every read, each request copied out of it: os.read allocated a fresh 68 KiB buffer
        # per request, whose pages the kernel first had to fault in (~8 us of a ~40 us request: a fresh
        # mount's `find` of /usr/share/doc used 79 ms of CPU in the mount, 65 ms with this).
        buffer = bytearray(BUFFER_SIZE)
        view, buffers = memoryview(buffer), [buffer]
        # Idle jobs run while no request is waiting (one poll each); with none queued, the read simply blocks.
        idle_work = self.idle_work
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        waiting = poller.poll
        try:
            while True:
                if idle_work and not waiting(0):
                    try:
                        idle_work.pop()()
                    except Exception:
                        log.exception("FUSE idle job failed")
                    continue
                try:
                    data = bytes(view[: os.readv(fd, buffers)])
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):  # ENOENT: interrupted before we read it
                        continue
                    if e.errno != errno.ENODEV:  # ENODEV: unmounted, the normal end
                        log.error("reading /dev/fuse failed", error=str(e))
                    return
                if len(data) < IN_HEADER_SIZE:
                    if not data:  # end of file: not /dev/fuse's way, but nothing more will come
                        return
                    continue
                _, opcode, unique, nodeid, _, _, _, _, _ = IN_HEADER.unpack_from(data)
                handler = handlers.get(opcode)
                if handler is None:
                    self._answer(opcode, unique, data)
                    continue
                try:
                    blocking = may_block is not None and may_block(opcode, nodeid, data)
                except Exception:  # a bad request: let the handler fail on it, off the loop
                    blocking = True
                if blocking:
                    queue_put((handler, opcode, unique, nodeid, data))
                else:
                    self._dispatch(handler, opcode, unique, nodeid, data)
        finally:
            for _ in range(self.threads):
                self._queue.put(None)
            for t in self._threads:  # ended means no thread uses the fd any more
                if t is not threading.current_thread():
                    t.join()
            self.ended.set()

    def _dispatch(self, handler: Handler, opcode: int, unique: int, nodeid: int, data: bytes) -> None:
        """Run one handler and reply: its result, its FuseError's errno, or EIO (logged) for anything else."""
        try:
            result = handler(nodeid, data)
            if opcode not in NO_REPLY:
                self.reply(unique, result)
        except FuseError as e:
            self.reply_error(unique, e.errno)
        except Exception:
            log.exception("FUSE handler failed", opcode=OPCODE_NAMES.get(opcode, opcode))
            self.reply_error(unique, errno.EIO)

    def _answer(self, opcode: int, unique: int, data: bytes) -> None:
        """The opcodes without a handler: INIT, the ones needing no answer, writes (EROFS), no-ops, the rest ENOSYS."""
        if opcode == INIT:
            self._init(unique, data)
        elif opcode in NO_REPLY:
            pass
        elif opcode == OPENDIR and self.no_opendir:
            self.reply_error(unique, errno.ENOSYS)  # the kernel stops sending OPENDIR/RELEASEDIR
        elif opcode in WRITE_OPS:
            self.reply_error(unique, errno.EROFS)
        elif opcode in (RELEASEDIR, OPENDIR, ACCESS, DESTROY):
            self.reply(unique, OPEN_OUT.pack(0, 0, 0) if opcode == OPENDIR else None)
        else:
            # ENOSYS, as libfuse and the reference answer; for FLUSH, FSYNC and FSYNCDIR the kernel then
            # stops sending them and close()/fsync() succeed at once (`diff -r` of /usr/share/doc sent
            # a FLUSH per file it closed: 4,157 round trips).
            self.reply_error(unique, errno.ENOSYS)

    def _init(self, unique: int, data: bytes) -> None:
        """Negotiate: protocol 7.40 at most, and the capabilities the store view uses (module docstring)."""
        major, minor, max_readahead, flags = INIT_IN.unpack_from(data, IN_HEADER_SIZE)
        if major != KERNEL_VERSION:
            log.error("unsupported FUSE kernel protocol", major=major, minor=minor)
            self.reply_error(unique, errno.EPROTO)
            return
        if flags & INIT_EXT and len(data) >= IN_HEADER_SIZE + 20:
            flags |= struct.unpack_from("<I", data, IN_HEADER_SIZE + 16)[0] << 32
        want = ASYNC_READ | DO_READDIRPLUS | PARALLEL_DIROPS | MAX_PAGES | CACHE_SYMLINKS | NO_OPENDIR_SUPPORT
        want |= INIT_EXT
        if self.want_passthrough and os.geteuid() == 0:  # registering backing files needs CAP_SYS_ADMIN
            want |= PASSTHROUGH
        granted = flags & want
        self.passthrough = bool(granted & PASSTHROUGH)
        self.no_opendir = bool(granted & NO_OPENDIR_SUPPORT)
        out = INIT_OUT.pack(
            KERNEL_VERSION, min(minor, KERNEL_MINOR_VERSION), max_readahead, granted & 0xFFFFFFFF,
            16, 12,  # max_background, congestion_threshold (the kernel's defaults)
            MAX_WRITE, 1,  # max_write, time_gran
            MAX_PAGES_VALUE, 0,  # max_pages, map_alignment
            granted >> 32, 1 if self.passthrough else 0,  # flags2, max_stack_depth (backing files on a plain fs)
        )  # fmt: skip
        self.reply(unique, out)
        log.debug("FUSE INIT", minor=minor, passthrough=self.passthrough, no_opendir=self.no_opendir)
        self.initialised.set()

    # -- passthrough ---------------------------------------------------------------------------------------

    def backing_open(self, fd: int) -> int:
        """Register an open file as a passthrough backing file; its id for FOPEN_PASSTHROUGH (OSError if refused)."""
        # A mutable buffer: then ioctl returns the call's return value (the id), not the buffer.
        return fcntl.ioctl(self.fd, DEV_IOC_BACKING_OPEN, bytearray(struct.pack("<iIQ", fd, 0, 0)), True)

    def backing_close(self, backing_id: int) -> None:
        """Drop a backing id (open files already using it keep their reference)."""
        try:
            fcntl.ioctl(self.fd, DEV_IOC_BACKING_CLOSE, bytearray(struct.pack("<I", backing_id)), True)
        except OSError as e:
            log.warning("closing a passthrough backing id failed", backing_id=backing_id, error=str(e))
