"""StoreFS operations and the FUSE protocol layer without a mount: the error paths a mount can't easily provoke.

Unknown inodes, file handles and opcodes must give errors, never crash the mount (Part A §10); a
forward-only blob reader (the gRPC client) must be reopened for a backward read. The protocol tests
drive a real :class:`tvixd.fuse.kernel.Session` over a SOCK_SEQPACKET socket pair with the kernel's
own message layout (one request per read, as /dev/fuse does).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import BLOB_A, BLOB_A_DIGEST, BLOB_B, BLOB_B_DIGEST
from tests.fuse_helpers import DIR_COMPLICATED, FILE_A, FILE_B, populate_fixtures, put_blob, put_path_info
from tvixd.fuse import kernel
from tvixd.fuse.fs import StoreFS
from tvixd.fuse.inodes import ROOT_INO, DirectoryData
from tvixd.fuse.kernel import FuseError
from tvixd.proto.castore_pb2 import FileNode
from tvixd.store import Store, StoreAddrs

UNKNOWN = 987654


@pytest.fixture
def store() -> Iterator[Store]:
    with Store.open(StoreAddrs(blob="memory://", directory="memory://", path_info="memory://")) as s:
        populate_fixtures(s)
        yield s


def err(fn: Callable[..., Any], *args: Any) -> int | None:
    """The errno ``fn(*args)`` fails with, or None if it succeeds."""
    try:
        fn(*args)
    except FuseError as e:
        return e.errno
    return None


def test_unknown_inodes_and_handles(store: Store) -> None:
    fs = StoreFS(store)
    assert err(fs.getattr, UNKNOWN) == errno.ENOENT
    assert err(fs.entry, UNKNOWN) == errno.ENOENT
    assert err(fs.lookup, UNKNOWN, b"x") == errno.ENOENT
    assert err(fs.readlink, UNKNOWN) == errno.ENOENT
    assert err(fs.open, UNKNOWN, os.O_RDONLY) == errno.ENOENT
    assert err(fs.readdir, UNKNOWN, 0, 4096) == errno.ENOENT
    assert err(fs.getxattr, UNKNOWN, b"user.x") == errno.ENODATA
    assert err(fs.read, UNKNOWN, 0, 10) == errno.EBADF
    assert err(fs.release, UNKNOWN) is None
    # still fully working afterwards
    assert err(fs.getattr, ROOT_INO) is None
    assert fs.lookup(ROOT_INO, FILE_A.encode()) >= 2


def test_wrong_kinds(store: Store) -> None:
    fs = StoreFS(store, show_xattr=True)
    f = fs.lookup(ROOT_INO, FILE_A.encode())
    d = fs.lookup(ROOT_INO, DIR_COMPLICATED.encode())
    assert err(fs.lookup, f, b"x") == errno.ENOTDIR
    assert err(fs.readdir, f, 0, 4096) == errno.ENOTDIR
    assert err(fs.readlink, f) == errno.EINVAL
    assert err(fs.readlink, ROOT_INO) == errno.EINVAL
    assert err(fs.open, d, os.O_RDONLY) == errno.EISDIR
    assert err(fs.open, ROOT_INO, os.O_RDONLY) == errno.EISDIR
    assert err(fs.open, f, os.O_WRONLY) == errno.EROFS
    assert err(fs.open, f, os.O_RDONLY | os.O_TRUNC) == errno.EROFS
    assert err(fs.lookup, ROOT_INO, b"\xff\xfe") == errno.ENOENT
    assert err(fs.readdir, ROOT_INO, 0, 4096) == errno.EPERM  # no --list-root
    assert fs.xattrs(ROOT_INO) == {}


def test_root_listing_offsets_name_their_snapshot(store: Store) -> None:
    """No OPENDIR reaches us, so a continuation's offset must find the listing it continues."""
    fs = StoreFS(store, list_root=True)

    def names(records: list[bytes], plus: bool) -> list[tuple[bytes, int]]:
        out = []
        for r in records:
            _, off, namelen, _ = kernel.DIRENT.unpack_from(r, 128 if plus else 0)
            start = (128 if plus else 0) + kernel.DIRENT.size
            out.append((r[start : start + namelen], off))
        return out

    first = names(fs.readdir(ROOT_INO, 0, 400, plus=True), True)
    assert 1 <= len(first) < 8  # 400 bytes hold two direntplus records
    rest = names(fs.readdir(ROOT_INO, first[-1][1], 1 << 16, plus=True), True)
    every = [n for n, _ in first + rest]
    assert len(every) == len(set(every)) == 8
    # A second listing started meanwhile does not disturb the first one's continuation.
    other = names(fs.readdir(ROOT_INO, 0, 1 << 16, plus=False), False)
    assert sorted(n for n, _ in other) == sorted(every)
    assert names(fs.readdir(ROOT_INO, first[-1][1], 1 << 16, plus=True), True) == rest


def parse_records(buf: bytes, plus: bool) -> list[tuple[bytes, int, int]]:
    """``(name, next offset, node id of the attributes or 0)`` of each READDIR(PLUS) record in ``buf``."""
    head = kernel.ENTRY_OUT.size if plus else 0
    out, pos = [], 0
    while pos < len(buf):
        nodeid = struct.unpack_from("<Q", buf, pos)[0] if plus else 0
        _, off, namelen, _ = kernel.DIRENT.unpack_from(buf, pos + head)
        start = pos + head + kernel.DIRENT.size
        out.append((bytes(buf[start : start + namelen]), off, nodeid))
        pos = start + (namelen + 7) // 8 * 8
    assert pos == len(buf)
    return out


def test_directory_listing_in_pieces(store: Store) -> None:
    """A listing read one record per request (continuing at each next offset) equals the whole one, for
    READDIR, lean READDIRPLUS (attributes for subdirectories only) and full READDIRPLUS (a file statter's)."""
    fs = StoreFS(store)
    d = fs.lookup(ROOT_INO, DIR_COMPLICATED.encode())
    fs.statters.note(7)
    for plus, pid in ((False, 0), (True, 0), (True, 7)):
        whole = parse_records(bytes(fs.readdir(d, 0, 1 << 16, plus=plus, pid=pid)), plus)
        assert [(name, off) for name, off, _ in whole] == [(b".keep", 1), (b"aa", 2), (b"keep", 3)]
        with_attributes = [name for name, _, nodeid in whole if nodeid]
        assert with_attributes == ([] if not plus else [b"keep"] if pid == 0 else [b".keep", b"aa", b"keep"])
        one = 200 if plus else 40  # room for one record (of these short names), not two
        pieces, offset = [], 0
        while chunk := bytes(fs.readdir(d, offset, one, plus=plus, pid=pid)):
            records = parse_records(chunk, plus)
            assert len(records) == 1
            pieces += records
            offset = records[-1][1]
        assert pieces == whole
        assert bytes(fs.readdir(d, 2, 1 << 16, plus=plus, pid=pid)) == bytes(fs.readdir(d, 2, one, plus=plus, pid=pid))


def test_backward_reads_reopen_a_forward_only_reader(store: Store) -> None:
    from tests.daemon import serve_in_process

    with ExitStack() as stack:
        url = serve_in_process(stack, store)
        with Store.open(StoreAddrs(blob=url, directory=url, path_info=url)) as remote:
            fs = StoreFS(remote)
            ino = fs.lookup(ROOT_INO, FILE_B.encode())
            fh, flags, backing = fs.open(ino, os.O_RDONLY)
            assert flags == kernel.FOPEN_KEEP_CACHE and backing == 0
            got = []
            for off, n in [(1_000_000, 10), (5, 10), (1_044_470, 100), (0, 4096), (2_000_000, 1)]:
                fs._files[fh].buf = b""  # type: ignore[union-attr]  # defeat the read-ahead: every read reads
                got.append(bytes(fs.read(fh, off, n)))
            fs.release(fh)
            assert got == [BLOB_B[1_000_000:1_000_010], BLOB_B[5:15], BLOB_B[1_044_470:], BLOB_B[:4096], b""]
            assert err(fs.read, fh, 0, 1) == errno.EBADF  # released
            a = fs.lookup(ROOT_INO, FILE_A.encode())
            fh, _, _ = fs.open(a, os.O_RDONLY)
            assert bytes(fs.read(fh, 0, 4096)) == BLOB_A


def test_big_fs_blobs_without_passthrough_are_verified_at_open(tmp_path: Path) -> None:
    """No passthrough (not root, or an older kernel): a big fs:// blob is verified whole at open, then mapped;
    one changed byte makes the open fail with EIO, whatever range would be read."""
    from tvixd.blobservice.fs import FsBlobService
    from tvixd.castore.digest import B3Digest
    from tvixd.proto.castore_pb2 import FileNode

    big = os.urandom(3 << 20)
    addrs = StoreAddrs.embedded(tmp_path)
    with Store.open(addrs) as store:
        digest = put_blob(store, big)
        put_path_info(store, FileNode(name=b"99999999999999999999999999999999-big", digest=digest, size=len(big)))
        fs = StoreFS(store)  # no session: no passthrough
        ino = fs.lookup(ROOT_INO, b"99999999999999999999999999999999-big")
        fh, flags, backing = fs.open(ino, os.O_RDONLY)
        assert (flags, backing) == (kernel.FOPEN_KEEP_CACHE, 0)
        assert not fs.may_block(kernel.READ, ino, kernel.IN_HEADER.pack(0, 0, 0, 0, 0, 0, 0, 0, 0)
                                + kernel.READ_IN.pack(fh, 0, 4096, 0))  # fmt: skip
        for off, n in [(2 << 20, 4096), (0, 1 << 20), (len(big) - 10, 4096), (len(big), 1)]:
            assert bytes(fs.read(fh, off, n)) == big[off : off + n]
        fs.release(fh)
        assert err(fs.read, fh, 0, 1) == errno.EBADF
        blob_file = Path(FsBlobService(str(tmp_path / "blobs")).path_of(B3Digest(digest)))
        blob_file.chmod(0o644)
        with open(blob_file, "r+b") as f:
            f.seek(100)
            f.write(bytes([big[100] ^ 1]))
        assert err(fs.open, ino, os.O_RDONLY) == errno.EIO


def test_small_subtrees_are_fetched_whole(store: Store) -> None:
    """Looking into a store path populates its whole (small) directory tree with one fetch."""
    fs = StoreFS(store)
    root = fs.lookup(ROOT_INO, DIR_COMPLICATED.encode())
    keep = fs.lookup(root, b"keep")
    data = fs.inodes.get(keep)
    assert isinstance(data, DirectoryData) and data.populated
    assert [e[1] for e in data.entries or []] == [b".keep"]
    assert err(fs.lookup, root, b"missing") == errno.ENOENT


# -- the protocol layer ---------------------------------------------------------------------------------------


class Wire:
    """The kernel's side of a Session: sends requests, reads replies (one message each)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unique = 0

    def send(self, opcode: int, nodeid: int = ROOT_INO, body: bytes = b"", pid: int = 1) -> int:
        self.unique += 2
        self.sock.send(kernel.IN_HEADER.pack(kernel.IN_HEADER_SIZE + len(body), opcode, self.unique, nodeid, 0, 0, pid,
                                             0, 0) + body)  # fmt: skip
        return self.unique

    def call(self, opcode: int, nodeid: int = ROOT_INO, body: bytes = b"", pid: int = 1) -> tuple[int, bytes]:
        """Send one request (as thread ``pid``); (errno, payload) of its reply."""
        unique = self.send(opcode, nodeid, body, pid)
        reply = self.sock.recv(1 << 20)
        length, error, got = kernel.OUT_HEADER.unpack_from(reply)
        assert got == unique and length == len(reply)
        return -error, reply[kernel.OUT_HEADER.size :]


@pytest.fixture
def wire(store: Store) -> Iterator[Wire]:
    with serving(StoreFS(store)) as w:
        yield w


@contextmanager
def serving(fs: StoreFS) -> Iterator[Wire]:
    """A Session answering for ``fs`` (as a mount sets it up), INIT done; the kernel's side of it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.settimeout(60)
    session = kernel.Session(ours.fileno(), fs.handlers(), threads=2, may_block=fs.may_block)
    fs.session = session
    session.start()
    w = Wire(theirs)
    flags = kernel.DO_READDIRPLUS | kernel.NO_OPENDIR_SUPPORT | kernel.INIT_EXT | kernel.ASYNC_READ
    e, out = w.call(kernel.INIT, 0, kernel.INIT_IN.pack(7, 45, 1 << 20, flags) + struct.pack("<I", 0) + bytes(44))
    assert e == 0
    major, minor, _, granted, *_ = kernel.INIT_OUT.unpack(out)
    assert (major, minor) == (7, 40) and granted & kernel.NO_OPENDIR_SUPPORT and not granted & kernel.WRITEBACK_CACHE
    assert session.no_opendir and not session.passthrough  # not offered here
    try:
        yield w
    finally:
        theirs.close()  # the session's reads then fail: its threads end
        session.join(timeout=10)
        ours.close()


def test_protocol_answers_everything_without_crashing(wire: Wire) -> None:
    e, out = wire.call(kernel.LOOKUP, ROOT_INO, FILE_A.encode() + b"\0")
    assert e == 0
    ino = struct.unpack_from("<Q", out)[0]
    assert kernel.ENTRY_OUT.unpack(out)[7] == len(BLOB_A)  # fuse_attr.size
    assert wire.call(kernel.LOOKUP, ROOT_INO, b"nope\0")[0] == errno.ENOENT
    assert wire.call(kernel.GETATTR, UNKNOWN, bytes(16))[0] == errno.ENOENT
    assert wire.call(kernel.READ, ino, kernel.READ_IN.pack(UNKNOWN, 0, 10, 0) + bytes(16))[0] == errno.EBADF
    assert wire.call(kernel.OPENDIR, ino, bytes(8))[0] == errno.ENOSYS  # the kernel then stops sending them
    for opcode in (kernel.MKDIR, kernel.UNLINK, kernel.WRITE, kernel.SETATTR, kernel.CREATE, kernel.SETXATTR,
                   kernel.RENAME2, kernel.FALLOCATE, kernel.COPY_FILE_RANGE):  # fmt: skip
        assert wire.call(opcode, ino, bytes(64))[0] == errno.EROFS, opcode
    for opcode in (kernel.BMAP, kernel.IOCTL, kernel.POLL, kernel.LSEEK, kernel.FLUSH, kernel.FSYNC, 200, 4096):
        assert wire.call(opcode, ino, bytes(64))[0] == errno.ENOSYS, opcode
    # Requests without a reply, then a normal one: the next reply must be the next request's.
    wire.send(kernel.FORGET, ino, struct.pack("<Q", 1))
    wire.send(kernel.BATCH_FORGET, 0, struct.pack("<II", 1, 0) + struct.pack("<QQ", ino, 1))
    wire.send(kernel.INTERRUPT, 0, struct.pack("<Q", 12345))
    e, out = wire.call(kernel.OPEN, ino, struct.pack("<II", os.O_RDONLY, 0))
    assert e == 0
    fh, flags, backing = kernel.OPEN_OUT.unpack(out)
    assert flags == kernel.FOPEN_KEEP_CACHE and backing == 0
    e, out = wire.call(kernel.READ, ino, kernel.READ_IN.pack(fh, 0, 4096, 0) + bytes(16))
    assert (e, out) == (0, BLOB_A)
    assert wire.call(kernel.RELEASE, ino, struct.pack("<QIIQ", fh, 0, 0, 0)) == (0, b"")
    assert wire.call(kernel.STATFS, ino)[0] == 0
    # A request too short for its arguments is a handler failure: EIO, and the session goes on.
    assert wire.call(kernel.READ, ino, b"")[0] == errno.EIO
    # No --show-xattr: no xattr support at all (the kernel remembers ENOSYS and asks no more).
    assert wire.call(kernel.GETXATTR, ino, struct.pack("<II", 100, 0) + b"user.x\0")[0] == errno.ENOSYS
    assert wire.call(kernel.LISTXATTR, ino, struct.pack("<II", 0, 0))[0] == errno.ENOSYS
    assert wire.call(kernel.LOOKUP, ROOT_INO, FILE_A.encode() + b"\0")[0] == 0


def test_subdirectory_listings_are_packed_while_idle(store: Store) -> None:
    """Serving a listing queues its subdirectories' listings, which the loop packs while no request waits
    (`find` asks for them next); a request for one is then answered from the packed listing."""
    import time

    fs = StoreFS(store)
    with serving(fs) as w:
        e, out = w.call(kernel.LOOKUP, ROOT_INO, DIR_COMPLICATED.encode() + b"\0")
        assert e == 0
        root = struct.unpack_from("<Q", out)[0]
        keep = fs.lookup(root, b"keep")  # populated with its store path, not listed yet
        lean = fs._listings[1]
        assert keep not in lean
        e, out = w.call(kernel.READDIRPLUS, root, kernel.READ_IN.pack(0, 0, 4096, 0) + bytes(16))
        assert e == 0 and [r[0] for r in parse_listing(out, True)] == [b".keep", b"aa", b"keep"]
        deadline = time.monotonic() + 30
        while keep not in lean and time.monotonic() < deadline:
            time.sleep(0.01)
        assert keep in lean, "the subdirectory's listing was not packed while idle"
        packed = bytes(lean[keep].records)
        e, out = w.call(kernel.READDIRPLUS, keep, kernel.READ_IN.pack(0, 0, 4096, 0) + bytes(16))
        assert (e, out) == (0, packed) and [r[0] for r in parse_listing(out, True)] == [b".keep"]


def test_a_blocked_request_does_not_stall_the_others() -> None:
    """A request that blocks (a slow store) holds one request thread; the others keep answering."""
    import threading

    release = threading.Event()

    def slow(nodeid: int, req: bytes) -> bytes:
        assert release.wait(60)
        return b"slow"

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.settimeout(60)
    handlers = {kernel.READLINK: slow, kernel.STATFS: lambda n, r: b"fast"}
    session = kernel.Session(ours.fileno(), handlers, threads=2, may_block=lambda op, n, r: op == kernel.READLINK)
    session.start()
    try:
        w = Wire(theirs)
        slow_unique = w.send(kernel.READLINK, 5)
        for _ in range(3):
            assert w.call(kernel.STATFS) == (0, b"fast")
        release.set()
        reply = theirs.recv(1 << 16)
        assert kernel.OUT_HEADER.unpack_from(reply)[2] == slow_unique and reply.endswith(b"slow")
    finally:
        release.set()
        theirs.close()
        session.join(timeout=10)
        ours.close()


def parse_listing(payload: bytes, plus: bool) -> list[tuple[bytes, int, int, int, tuple[Any, ...] | None]]:
    """READDIR(PLUS) records: (name, dirent ino, next offset, type, fuse_entry_out fields or None)."""
    out = []
    pos = 0
    while pos < len(payload):
        entry = None
        if plus:
            entry = kernel.ENTRY_OUT.unpack_from(payload, pos)
            pos += kernel.ENTRY_OUT.size
        ino, off, namelen, dtype = kernel.DIRENT.unpack_from(payload, pos)
        pos += kernel.DIRENT.size
        out.append((payload[pos : pos + namelen], ino, off, dtype, entry))
        pos += (namelen + 7) & ~7
    return out


def test_listings_carry_file_attributes_for_processes_that_look_files_up(wire: Wire) -> None:
    """READDIRPLUS gives attributes for subdirectories only, until the reading process looks up a file:
    records with node id 0 make the kernel add name and type alone (no inode per file for `find`)."""
    find, ls = 100, 200
    e, out = wire.call(kernel.LOOKUP, ROOT_INO, DIR_COMPLICATED.encode() + b"\0", pid=find)
    assert e == 0
    d = struct.unpack_from("<Q", out)[0]
    args = kernel.READ_IN.pack(0, 0, 4096, 0) + bytes(16)

    def listing(pid: int) -> list[tuple[bytes, int, int, int, tuple[Any, ...] | None]]:
        e, out = wire.call(kernel.READDIRPLUS, d, args, pid=pid)
        assert e == 0
        return parse_listing(out, plus=True)

    lean = listing(find)
    expected = [(b".keep", 1, 8), (b"aa", 2, 10), (b"keep", 3, 4)]  # next offsets, DT_REG / DT_LNK / DT_DIR
    assert [(name, off, dtype) for name, _, off, dtype, _ in lean] == expected
    assert [entry[0] if entry else None for *_, entry in lean] == [0, 0, lean[2][1]]  # node ids: only the directory's
    # The directory's attributes are those a LOOKUP gives; file inode numbers are the real ones too.
    by_lookup = {}
    for name, ino, *_ in lean:
        e, out = wire.call(kernel.LOOKUP, d, name + b"\0", pid=find)
        assert e == 0 and struct.unpack_from("<Q", out)[0] == ino
        by_lookup[name] = kernel.ENTRY_OUT.unpack(out)
    assert lean[2][4] == by_lookup[b"keep"]
    # `find` looked up a file: from now on its listings are full. Another process still gets lean ones.
    full = listing(find)
    assert [(name, ino, off, dtype) for name, ino, off, dtype, _ in full] == [r[:4] for r in lean]
    assert [entry for *_, entry in full] == [by_lookup[name] for name, *_ in full]
    assert listing(ls) == lean
    # Continuations and the end of the listing; a buffer holds whole records only.
    e, out = wire.call(kernel.READDIRPLUS, d, kernel.READ_IN.pack(0, 1, 4096, 0) + bytes(16), pid=ls)
    assert parse_listing(out, plus=True) == lean[1:]
    e, out = wire.call(kernel.READDIRPLUS, d, kernel.READ_IN.pack(0, 3, 4096, 0) + bytes(16), pid=ls)
    assert (e, out) == (0, b"")
    one = kernel.ENTRY_OUT.size + kernel.DIRENT.size + 8
    e, out = wire.call(kernel.READDIRPLUS, d, kernel.READ_IN.pack(0, 0, 2 * one - 1, 0) + bytes(16), pid=ls)
    assert parse_listing(out, plus=True) == lean[:1]
    # Plain READDIR: the same names, offsets and inode numbers.
    e, out = wire.call(kernel.READDIR, d, args, pid=ls)
    assert [r[:4] for r in parse_listing(out, plus=False)] == [r[:4] for r in lean]


def test_small_blobs_kept_verified_for_reopens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small fs:// blob read (and verified) at one open is served from memory at the next: no read, no hash,
    no worker thread (OPEN may not block); kept up to SMALL_BLOBS_KEPT_BYTES, least recently opened dropped first.
    Shown by corrupting the blob files on disk after the first opens."""
    from tvixd.blobservice.fs import FsBlobService
    from tvixd.castore.digest import B3Digest
    from tvixd.fuse import fs as fuse_fs

    monkeypatch.setattr(fuse_fs, "SMALL_BLOBS_KEPT_BYTES", len(BLOB_A) + len(BLOB_B))
    (tmp_path / "state").mkdir()
    with Store.open(StoreAddrs.embedded(tmp_path / "state")) as store:
        populate_fixtures(store)
        fs = StoreFS(store)
        a, b = fs.lookup(ROOT_INO, FILE_A.encode()), fs.lookup(ROOT_INO, FILE_B.encode())
        assert fs.may_block(kernel.OPEN, a, b"")  # nothing kept yet: verification waits for the disk

        def cat(ino: int) -> bytes:
            fh, _, _ = fs.open(ino, os.O_RDONLY)
            try:
                return bytes(fs.read(fh, 0, 1 << 20))
            finally:
                fs.release(fh)

        assert cat(a) == BLOB_A and cat(b) == BLOB_B
        assert not fs.may_block(kernel.OPEN, a, b"") and not fs.may_block(kernel.OPEN, b, b"")
        blobs = FsBlobService(str(tmp_path / "state" / "blobs"))
        for digest, data in ((BLOB_A_DIGEST, BLOB_A), (BLOB_B_DIGEST, BLOB_B)):
            path = Path(blobs.path_of(B3Digest(digest)))
            path.chmod(0o644)
            path.write_bytes(bytes(len(data)))  # same size, wrong bytes
        assert cat(a) == BLOB_A  # verified before, kept: served from memory
        # One more blob than fits: the least recently opened (FILE_B) goes, and is read again: corrupt now.
        big = os.urandom(len(BLOB_B))
        put_path_info(store, FileNode(name=b"99999999999999999999999999999999-x", digest=put_blob(store, big),
                                      size=len(big)))
        assert cat(fs.lookup(ROOT_INO, b"99999999999999999999999999999999-x")) == big
        assert cat(a) == BLOB_A
        assert fs.may_block(kernel.OPEN, b, b"")
        assert err(cat, b) == errno.EIO
