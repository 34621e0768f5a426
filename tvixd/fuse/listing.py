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
from itertools import accumulate
from typing import NamedTuple

from tvixd.castore.directory import AnyNode
from tvixd.fuse import kernel
from tvixd.proto.castore_pb2 import DirectoryNode, FileNode, SymlinkNode

PLAIN, LEAN, FULL = 0, 1, 2
"""Listing kinds: READDIR records; READDIRPLUS records with attributes for subdirectories only; for all."""

DT_DIR, DT_REG, DT_LNK = 4, 8, 10
DTYPE = {DirectoryNode: DT_DIR, FileNode: DT_REG, SymlinkNode: DT_LNK}

_LEAN_DIRENTPLUS = struct.Struct(f"<{kernel.ENTRY_OUT.size}x" + kernel.DIRENT.format[1:])
"""A ``fuse_direntplus`` without attributes (its ``fuse_entry_out`` all zeros: node id 0 means "no attributes
for this record", not ENOENT as in a LOOKUP), without its name."""

STATTERS_KEPT = 1024
"""Processes remembered as wanting attributes (then all are forgotten, see FileStatters)."""

_EMPTY = memoryview(b"")


class Listing(NamedTuple):
    """All records of one directory back to back; ``ends[i]`` is where record ``i`` ends."""

    records: bytes
    ends: list[int]

    def window(self, offset: int, size: int) -> memoryview:
        """The whole records from number ``offset`` on that fit in ``size`` bytes (empty at the end)."""
        ends = self.ends
        if offset >= len(ends):
            return _EMPTY
        start = ends[offset - 1] if offset else 0
        stop = bisect_right(ends, start + size, offset)
        return memoryview(self.records)[start : ends[stop - 1] if stop > offset else start]


def pack_listing(children: Sequence[tuple[int, AnyNode]], kind: int, entry: Callable[[int], bytes]) -> Listing:
    """The records of ``children`` ((inode, node) in listing order) for ``kind``; ``entry(ino)`` packs attributes.

    Record ``i`` has next-offset ``i + 1``; names are padded to 8 bytes.
    """
    records = []
    pack, lean_pack, padding = kernel.DIRENT.pack, _LEAN_DIRENTPLUS.pack, kernel.PADDING
    for i, (ino, node) in enumerate(children, 1):
        name = node.name
        node_type = type(node)
        if kind == LEAN and node_type is not DirectoryNode:
            record = lean_pack(ino, i, len(name), DTYPE[node_type]) + name + padding[len(name) & 7]
        else:
            record = pack(ino, i, len(name), DTYPE[node_type]) + name + padding[len(name) & 7]
            if kind != PLAIN:
                record = entry(ino) + record
        records.append(record)
    return Listing(b"".join(records), list(accumulate(map(len, records))))


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
