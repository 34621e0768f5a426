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

A file's or symlink's inode data is the first node seen with its content (a
``FileNode``: digest, size, executable; a ``SymlinkNode``: target; its name is
not used), kept as it is: a tree's first listing allocates one inode per entry,
and a copy into a tuple of our own cost 40% of that.

This module does no I/O and is not thread-safe: the FUSE layer changes it under
one lock and does the blocking fetches outside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tvixd.castore.directory import AnyNode, directory_nodes, directory_size
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode

ROOT_INO = 1
FIRST_INO = 2


@dataclass
class DirectoryData:
    """A directory: *sparse* (``children is None``, only digest and size known) or *populated*.

    ``size`` is the DirectoryNode's recursive element count and never changes
    once set (the reference switched to the number of direct children on
    population, so ``stat`` of one directory gave different sizes over time).
    ``children`` are ``(inode, node)`` in merged name order (SPEC §5.5).
    """

    digest: bytes
    size: int
    children: list[tuple[int, AnyNode]] | None = None
    _index: dict[bytes, int] | None = None

    @property
    def populated(self) -> bool:
        return self.children is not None

    def child(self, name: bytes) -> int | None:
        """The inode of the child called ``name`` of a populated directory, or ``None``.

        The name index is built at the first lookup: `find` lists directories without looking anything up.
        """
        index = self._index
        if index is None:
            assert self.children is not None
            index = self._index = {bytes(node.name): ino for ino, node in self.children}
        return index.get(name)


InodeData = FileNode | SymlinkNode | DirectoryData
"""What an inode is: the first file or symlink node seen with its content, or a directory."""


class InodeTracker:
    """Allocates inode numbers by content and remembers what each one is."""

    def __init__(self) -> None:
        self._data: dict[int, InodeData] = {}
        self._files: dict[tuple[bytes, bool], int] = {}
        self._symlinks: dict[bytes, int] = {}
        self._directories: dict[bytes, int] = {}
        self._store_paths: dict[bytes, int] = {}
        self._by_kind: dict[type, dict] = {FileNode: self._files, SymlinkNode: self._symlinks,
                                           DirectoryNode: self._directories}  # fmt: skip  # the three key spaces
        self._next = FIRST_INO

    def get(self, ino: int) -> InodeData | None:
        """What inode ``ino`` is, or ``None`` if it was never allocated (the root is not tracked here)."""
        return self._data.get(ino)

    def _allocate(self, data: InodeData) -> int:
        ino = self._next
        self._next += 1
        self._data[ino] = data
        return ino

    def put_node(self, node: AnyNode) -> int:
        """The inode of ``node`` (a child entry or a PathInfo root), allocating it if new.

        Directories are recorded sparse unless already known; the node's name is
        ignored (inodes are by content).
        """
        return self._put_nodes((node,))[0][0]

    def _put_nodes(self, nodes: Iterable[AnyNode]) -> list[tuple[int, AnyNode]]:
        """``(inode, node)`` of each node, allocating new ones (:meth:`put_node` for many, in one tight loop:
        a tree's first listing puts one node per entry)."""
        out = []
        for node in nodes:
            kind = type(node)
            if kind is FileNode:
                key: object = (node.digest, node.executable)
            elif kind is SymlinkNode:
                key = node.target
            elif kind is DirectoryNode:
                key = node.digest
            else:
                raise TypeError(f"not a castore node: {kind.__name__}")
            table = self._by_kind[kind]
            ino = table.get(key)
            if ino is None:
                ino = table[key] = self._allocate(DirectoryData(key, node.size) if kind is DirectoryNode else node)
            out.append((ino, node))
        return out

    def put_directory(self, digest: bytes, directory: Directory) -> int:
        """Record the contents of the directory named ``digest``; return its inode.

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
            if data.populated:
                return ino
        children = self._put_nodes(directory_nodes(directory))
        if ino is None:
            ino = self._directories[digest] = self._allocate(DirectoryData(digest, directory_size(directory), children))
        else:
            data = self._data[ino]
            assert isinstance(data, DirectoryData)
            data.children = children
        return ino

    def put_store_path(self, basename: bytes, node: AnyNode) -> int:
        """Record the root node of the store path ``basename`` and return its inode."""
        ino = self.put_node(node)
        self._store_paths[bytes(basename)] = ino
        return ino

    def store_path(self, basename: bytes) -> int | None:
        """The inode of a store path seen before, or ``None``."""
        return self._store_paths.get(bytes(basename))
