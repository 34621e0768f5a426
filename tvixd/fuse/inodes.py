"""Inode numbers for the FUSE view of the store (SPEC Part B §8.1, Part A §10).

Inodes are shared by content, store-wide, as the reference does: identical
files, symlinks or directories anywhere in the store get one inode number.
Numbers start at 2 (1 is the FUSE root, i.e. ``/nix/store``), increase by one
per allocation, and are never freed (the store is immutable, so an inode's
data never changes; only a sparse directory is upgraded to a populated one).

Unlike the reference, files are keyed by ``(blob digest, executable)``, not by
the digest alone: Part A §10 shows the executable bit, and an executable and a
non-executable file with the same bytes must not share one inode (they would
share one mode, the first one seen). Symlinks are keyed by target bytes,
directories by directory digest; the three key spaces are separate.

Nodes are entry tuples of :mod:`tvixd.castore.entries` (``(kind, name, ref, size, executable)``),
as the directory service decodes them from its rows without protobuf: a tree's first listing
handles one per entry (/usr/share/doc: ~5,000 in ~820 directories), and protobuf nodes cost
about three times as much to read and to keep. A file's or symlink's inode data is the first
entry seen with its content (its name is not used).

This module does no I/O and is not thread-safe: the FUSE layer changes it under
one lock and does the blocking fetches outside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tvixd.castore.entries import DIRECTORY, Entry

ROOT_INO = 1
FIRST_INO = 2


@dataclass(slots=True)
class DirectoryData:
    """A directory: *sparse* (``entries is None``, only digest and size known) or *populated*.

    ``size`` is the DirectoryNode's recursive element count and never changes
    once set (the reference switched to the number of direct children on
    population, so ``stat`` of one directory gave different sizes over time).
    ``entries`` are the children in merged name order (SPEC §5.5), ``inos`` their inodes.
    """

    digest: bytes
    size: int
    entries: list[Entry] | None = None
    inos: list[int] | None = None
    _index: dict[bytes, int] | None = None

    @property
    def populated(self) -> bool:
        return self.entries is not None

    def child(self, name: bytes) -> int | None:
        """The inode of the child called ``name`` of a populated directory, or ``None``.

        The name index is built at the first lookup: `find` lists directories without looking anything up.
        """
        index = self._index
        if index is None:
            assert self.entries is not None and self.inos is not None
            index = self._index = {e[1]: ino for e, ino in zip(self.entries, self.inos, strict=True)}
        return index.get(name)


InodeData = Entry | DirectoryData
"""What an inode is: the first file or symlink entry seen with its content, or a directory."""


def directory_size(entries: Iterable[Entry]) -> int:
    """A directory's recursive element count (``DirectoryNode.size``) from its entries (SPEC §3.3)."""
    return sum(1 + e[3] if e[0] == DIRECTORY else 1 for e in entries)


class InodeTracker:
    """Allocates inode numbers by content and remembers what each one is."""

    def __init__(self) -> None:
        self._data: dict[int, InodeData] = {}
        self._directories: dict[bytes, int] = {}
        self._store_paths: dict[bytes, int] = {}
        # The key spaces by kind (DIRECTORY 0, FILE 1, SYMLINK 2; executable files 4 = FILE + 3), each keyed
        # by the entry's ref (digest or target): one index and one dict lookup per entry.
        self._tables: tuple[dict[bytes, int], ...] = (self._directories, {}, {}, {}, {})
        self._next = FIRST_INO

    def get(self, ino: int) -> InodeData | None:
        """What inode ``ino`` is, or ``None`` if it was never allocated (the root is not tracked here)."""
        return self._data.get(ino)

    def put_node(self, entry: Entry) -> int:
        """The inode of ``entry`` (a child or a PathInfo root), allocating it if new.

        Directories are recorded sparse unless already known; the name is
        ignored (inodes are by content).
        """
        return self._put_entries((entry,))[0]

    def _put_entries(self, entries: Iterable[Entry]) -> list[int]:
        """The inode of each entry, allocating new ones (:meth:`put_node` for many, in one tight loop:
        a tree's first listing puts one entry per child)."""
        tables, data = self._tables, self._data
        out = []
        for entry in entries:
            kind, _, key, size, executable = entry
            table = tables[kind + 3 if executable else kind]
            ino = table.get(key)
            if ino is None:
                ino = table[key] = self._next
                self._next += 1
                data[ino] = DirectoryData(key, size) if kind == DIRECTORY else entry
            out.append(ino)
        return out

    def put_directory(self, digest: bytes, entries: list[Entry]) -> int:
        """Record the contents (``entries`` in merged name order) of the directory named ``digest``; its inode.

        A sparse inode with this digest keeps its number and becomes populated;
        an already populated one is left alone; a directory never seen gets its
        children's inodes first, then its own (SPEC §8.1). ``digest`` must be the
        directory's real digest (the DirectoryService checks that on fetch).
        """
        digest = bytes(digest)
        ino = self._directories.get(digest)
        if ino is not None:
            data = self._data[ino]
            assert isinstance(data, DirectoryData)
            if data.entries is not None:
                return ino
        inos = self._put_entries(entries)
        if ino is None:
            ino = self._put_entries(((DIRECTORY, b"", digest, directory_size(entries), False),))[0]
        data = self._data[ino]
        assert isinstance(data, DirectoryData)
        data.entries, data.inos = entries, inos
        return ino

    def put_directories(self, closure: Mapping[bytes, list[Entry]]) -> None:
        """:meth:`put_directory` for every directory of a fetched closure (digest -> entries), in its order."""
        for digest, entries in closure.items():
            self.put_directory(digest, entries)

    def put_store_path(self, basename: bytes, entry: Entry) -> int:
        """Record the root node of the store path ``basename`` and return its inode."""
        ino = self.put_node(entry)
        self._store_paths[bytes(basename)] = ino
        return ino

    def store_path(self, basename: bytes) -> int | None:
        """The inode of a store path seen before, or ``None``."""
        return self._store_paths.get(bytes(basename))
