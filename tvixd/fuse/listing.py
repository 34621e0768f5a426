"""Directory listings as the kernel reads them: packed once per directory, then served by slicing.

A directory's entries never change, so all its READDIR(PLUS) records are packed once into one
bytes object; a request is then one bisect and one slice, and its reply one buffer (the kernel
pins every iovec of a reply on its own: ~30 per reply when each record was a separate buffer).

Which READDIRPLUS records carry attributes: the kernel instantiates an inode for every record with
a node id, and a record with node id 0 adds the name and type only, as READDIR would (see
``fuse_direntplus_link`` in the kernel's fs/fuse/readdir.c). A *lean* listing gives attributes for
subdirectories only: `find` needs no more (it descends without a LOOKUP and reads file types from
the records), and the kernel creates ~850 inodes for /usr/share/doc instead of ~5,000. A process
that looks up a file it could have had attributes for (`ls -l`, `du`, `diff -r`, `tar`) is noted
in :class:`FileStatters` and gets *full* listings from then on, so it pays one LOOKUP per file of
its first directory only. (The kernel's own FUSE_READDIRPLUS_AUTO cannot do this: it asks for
READDIRPLUS at offset 0 of every listing, and every listing here is asked for once.)
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Callable, Sequence

from tvixd.castore.entries import DIRECTORY, Entry
from tvixd.fuse import kernel

PLAIN, LEAN, FULL = 0, 1, 2
"""Listing kinds: READDIR records; READDIRPLUS records with attributes for subdirectories only; for all."""

DT_DIR, DT_REG, DT_LNK = 4, 8, 10
DTYPE = (DT_DIR, DT_REG, DT_LNK)
"""``d_type`` by entry kind (DIRECTORY 0, FILE 1, SYMLINK 2)."""

STATTERS_KEPT = 1024
"""Processes remembered as wanting attributes (then all are forgotten, see FileStatters)."""


class _Packers(dict[int, Callable[..., bytes]]):
    """``packers[len(name)](ino, off, len(name), type, name)``: one record, its name zero-padded to 8 bytes,
    in one struct pack (a pack, a name and a padding concatenated cost a third more)."""

    def __init__(self, head: int) -> None:
        super().__init__()
        self.format = f"<{head}x{kernel.DIRENT.format[1:]}" if head else kernel.DIRENT.format

    def __missing__(self, n: int) -> Callable[..., bytes]:
        pack = self[n] = struct.Struct(f"{self.format}{(n + 7) & ~7}s").pack
        return pack


_DIRENT = _Packers(0)
"""``fuse_dirent`` records (READDIR), and the tail of a READDIRPLUS record with attributes."""

_LEAN_DIRENTPLUS = _Packers(kernel.ENTRY_OUT.size)
"""``fuse_direntplus`` records without attributes (their ``fuse_entry_out`` all zeros: node id 0 means
"no attributes for this record", not ENOENT as in a LOOKUP)."""


class Listing:
    """All records of one directory back to back (``count`` of them, each ``head`` + a ``fuse_dirent``)."""

    __slots__ = ("_ends", "count", "head", "records")

    def __init__(self, records: bytes, count: int, head: int) -> None:
        self.records, self.count, self.head = records, count, head
        self._ends: list[int] | None = None

    def window(self, offset: int, size: int) -> bytes | memoryview:
        """The whole records from number ``offset`` on that fit in ``size`` bytes (empty at the end).

        The common requests are answered without record boundaries: the whole listing (it fits in
        one request) and the empty one after it, which ends every listing.
        """
        records = self.records
        if offset == 0 and len(records) <= size:
            return records
        if offset >= self.count:
            return b""
        ends = self._ends
        if ends is None:
            ends = self._ends = self._record_ends()
        start = ends[offset - 1] if offset else 0
        stop = bisect_right(ends, start + size, offset)
        return memoryview(records)[start : ends[stop - 1] if stop > offset else start]

    def _record_ends(self) -> list[int]:
        """Where each record ends (its name length is at byte 16 of its ``fuse_dirent``)."""
        ends, pos, records, head = [], 0, self.records, self.head
        while pos < len(records):
            pos += head + 24 + ((_U32.unpack_from(records, pos + head + 16)[0] + 7) & ~7)
            ends.append(pos)
        return ends


_U32 = struct.Struct("<I")


def pack_listing(entries: Sequence[Entry], inos: Sequence[int], kind: int, entry: Callable[[int], bytes]) -> Listing:
    """The records of a directory's ``entries`` (in listing order, inodes ``inos``) for ``kind``;
    ``entry(ino)`` is the packed ``fuse_entry_out`` of a child. Record ``i`` has next-offset ``i + 1``."""
    records = []
    append = records.append
    dirent, lean = _DIRENT, _LEAN_DIRENTPLUS
    for off, (e, ino) in enumerate(zip(entries, inos, strict=True), 1):
        node_kind, name = e[0], e[1]
        n = len(name)
        if kind == PLAIN:
            append(dirent[n](ino, off, n, DTYPE[node_kind], name))
        elif kind == FULL or node_kind == DIRECTORY:
            append(entry(ino) + dirent[n](ino, off, n, DTYPE[node_kind], name))
        else:
            append(lean[n](ino, off, n, DTYPE[node_kind], name))
    return Listing(b"".join(records), len(records), 0 if kind == PLAIN else kernel.ENTRY_OUT.size)


def request_pid(req: bytes) -> int:
    """The id of the thread that caused request ``req`` (``fuse_in_header.pid``)."""
    return _PID.unpack_from(req, 32)[0]


_PID = struct.Struct("<I")


class FileStatters:
    """Processes that looked up a file or symlink by name: they get full listings (module docstring).

    A plain set, emptied when it reaches :data:`STATTERS_KEPT` (a forgotten process pays a few LOOKUPs
    again): each operation is atomic under the GIL, so any request thread may note or ask.
    """

    def __init__(self, kept: int = STATTERS_KEPT) -> None:
        self._kept = kept
        self._pids: set[int] = set()

    def note(self, pid: int) -> None:
        if len(self._pids) >= self._kept:
            self._pids.clear()
        self._pids.add(pid)

    def __contains__(self, pid: int) -> bool:
        return pid in self._pids
