"""The DirectoryService contract: a Merkle DAG of Directory messages named by blake3.

A Directory's digest is blake3 of its canonical protobuf encoding
(``tvixd.castore.directory.directory_digest``). The store keeps one invariant:
a directory is visible only together with its whole closure, so readers never
see half a graph. Writes therefore go through a *putter*, which accepts a
stream of directories leaves-first and commits them all at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from tvixd.blobservice.base import Precommit
from tvixd.castore.digest import B3Digest

if TYPE_CHECKING:  # annotations only: a SQLite store's `dump-path` never imports protobuf
    from tvixd.castore.entries import Entry
    from tvixd.proto.castore_pb2 import Directory


class DirectoryPutter(ABC):
    """One all-or-nothing upload of a directory graph (SPEC Part A §3, Part B §2.2 Put).

    Contract:
    - ``put(d)`` validates ``d`` at once (``tvixd.castore.directory.validate_directory``)
      and checks that every child DirectoryNode refers to a directory sent
      *earlier to this putter* with the right ``size``; otherwise it raises
      :class:`tvixd.errors.InvalidRequest` naming the directory digest and the
      child, and the putter is poisoned (``close`` raises the same error).
      Children already in the store but not sent to this putter do not count
      (the reference's rule). Sending the same directory twice is fine.
    - ``close()`` commits every directory sent in one transaction and returns
      the digest of the *last* one sent (the root). No directories →
      ``InvalidRequest("no directories sent")``. Closing again returns the same
      digest. If the commit itself fails (e.g. ``Unavailable``: the database
      stayed locked), nothing was stored and ``close()`` may be called again.
    - ``abort()`` discards everything; nothing becomes visible.
    - ``put`` after ``close``/``abort`` raises :class:`tvixd.errors.AlreadyClosed`.
    - As a context manager an exception inside the block aborts.
    """

    @abstractmethod
    def put(self, directory: Directory) -> B3Digest:
        """Queue ``directory`` for the commit; return its digest."""

    def put_entries(self, dirs: list[Entry], files: list[Entry], links: list[Entry]) -> B3Digest:
        """:meth:`put` the Directory with these child lists (entries, see ``tvixd.castore.entries``).

        Here the message is built and put; the memory and SQLite putters take the entries as
        they are (the importer then builds no protobuf message).
        """
        from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode

        return self.put(
            Directory(
                directories=[DirectoryNode(name=n, digest=d, size=s) for _, n, d, s, _ in dirs],
                files=[FileNode(name=n, digest=d, size=s, executable=x) for _, n, d, s, x in files],
                symlinks=[SymlinkNode(name=n, target=t) for _, n, t, _, _ in links],
            )
        )

    @abstractmethod
    def close(self, precommit: Precommit | None = None) -> B3Digest:
        """Commit everything atomically and return the root (last) digest. Idempotent.

        ``precommit``, if given, is called just before the commit; if it raises,
        nothing is stored, the putter is aborted and the exception propagates
        (as for :meth:`tvixd.blobservice.base.BlobWriter.close`).
        """

    @abstractmethod
    def abort(self) -> None:
        """Discard everything sent; nothing becomes visible. Idempotent."""

    def __enter__(self) -> DirectoryPutter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


class DirectoryService(ABC):
    """Stores and retrieves Directory messages by digest.

    Digest arguments are 32-byte ``bytes`` (else ``InvalidRequest`` naming the
    length). Returned directories have been validated and their digest checked
    against the requested one; a stored directory that fails either check
    raises :class:`tvixd.errors.DataLoss`.
    """

    @abstractmethod
    def get(self, digest: bytes) -> Directory | None:
        """The directory with this digest, or ``None`` if absent."""

    def put(self, directory: Directory) -> B3Digest:
        """Store a single directory; same as a putter that receives only ``directory``.

        So a directory with child directories can never be put alone (its
        children were not sent in the same stream): ``InvalidRequest``.
        """
        with self.put_multiple_start() as putter:
            putter.put(directory)
            return putter.close()

    @abstractmethod
    def get_recursive(self, digest: bytes) -> Iterator[Directory]:
        """The directory and all its descendants, breadth-first, as the reference sends them.

        Order (SPEC Part B §2.2): a FIFO worklist starts with ``digest``; pop the
        front, emit it, and append each child directory digest in list order
        unless that digest is *currently waiting* in the worklist. So a
        directory reachable at different depths may be emitted more than once
        (the reference client relies on this). A missing root raises
        :class:`tvixd.errors.NotFound` *when this method is called*, before any
        directory is produced; a missing descendant raises ``NotFound`` naming
        it from the iterator.
        """

    def get_entries(self, digest: bytes) -> list[Entry] | None:
        """:meth:`get` as the directory's entries in NAR order (``tvixd.castore.entries``), or ``None``.

        What ``tvixd ls`` and ``cat`` walk. SQLite decodes its canonical row without protobuf;
        this default converts the message.
        """
        from tvixd.castore.entries import directory_entries

        directory = self.get(digest)
        return None if directory is None else directory_entries(directory)

    def get_closure(self, digest: bytes) -> dict[B3Digest, Directory]:
        """The directory and all its descendants, by digest: for walking a whole tree (rendering a NAR).

        Missing directories raise :class:`tvixd.errors.NotFound` naming one. This default
        collects :meth:`get_recursive` (one stream for a gRPC backend); SQLite answers with
        one query per tree level instead of one per directory.
        """
        from tvixd.castore.directory import directory_digest

        return {directory_digest(d): d for d in self.get_recursive(digest)}

    def get_closure_entries(self, digest: bytes) -> dict[bytes, list[Entry]]:
        """:meth:`get_closure` with each directory as its entries in NAR order (``tvixd.castore.entries``).

        What the NAR renderer walks. SQLite decodes its canonical rows without protobuf
        (``tvixd dump-path`` then never imports it); this default converts the messages.
        """
        from tvixd.castore.entries import directory_entries

        return {d: directory_entries(directory) for d, directory in self.get_closure(digest).items()}

    @abstractmethod
    def put_multiple_start(self) -> DirectoryPutter:
        """A putter for one all-or-nothing upload."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. The service is unusable afterwards."""
