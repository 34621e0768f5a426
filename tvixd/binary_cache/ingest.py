"""Ingest a NAR byte stream into the blob and directory services.

Files are streamed into blob writers as they are parsed, directories are
built leaves-first (the NAR's depth-first order closes a directory after all
its children) and sent to one :class:`DirectoryPutter`; the NAR's size and
sha256 are computed over the very bytes parsed. Memory use is bounded by the
directory stack (plus whatever the putter buffers), not by file sizes.

All-or-nothing: the putter is closed only when the whole NAR parsed *and*
matched the expected size/hash (when given); otherwise it is aborted and no
directory becomes visible. Blobs written before the failure may remain: they
are unreferenced content, invisible as store paths (blob stores are
content-addressed, so keeping them is harmless and re-uploads are cheaper).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from tvixd.blobservice.base import BlobService, BlobWriter
from tvixd.castore import nixbase32
from tvixd.castore.digest import B3Digest
from tvixd.castore.directory import directory_size
from tvixd.castore.entries import UINT32_MAX
from tvixd.castore.nar_reader import (
    DEFAULT_CHUNK_SIZE,
    DirectoryEnd,
    DirectoryStart,
    FileChunk,
    FileEnd,
    FileStart,
    Symlink,
    parse_nar,
)
from tvixd.directoryservice.base import DirectoryPutter
from tvixd.errors import InvalidRequest, StorageError
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import Node


class NarMismatch(InvalidRequest):
    """The NAR parsed, but its size or sha256 differs from what was announced."""


@dataclass(frozen=True)
class IngestedNar:
    """The result of an ingest: the root node (named ``b""``) and the NAR's size and sha256."""

    root: Node
    nar_size: int
    nar_sha256: bytes


class _HashingReader:
    """Feeds every byte read through sha256 and counts them."""

    __slots__ = ("_read", "sha256", "size")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int) -> bytes:
        data = self._read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


def ingest_nar(
    read: Callable[[int], bytes],
    blob_service: BlobService,
    putter: DirectoryPutter,
    expected_size: int | None = None,
    expected_sha256: bytes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> IngestedNar:
    """Parse the NAR from ``read(n)`` into ``blob_service`` and ``putter``; commit only if all is well.

    Raises :class:`tvixd.castore.nar_reader.NarParseError` for a malformed NAR,
    :class:`NarMismatch` when it does not match ``expected_size`` /
    ``expected_sha256``, ``InvalidRequest`` for a file of 4 GiB or more (the
    wire's FileNode.size is uint32, SPEC Part A §8), and backend errors as they
    come. On any error the putter is aborted and the open blob writer discarded.
    """
    src = _HashingReader(read)
    # Each open directory: (its name, the Directory being filled).
    stack: list[tuple[bytes, Directory]] = []
    root: Node | None = None
    writer: BlobWriter | None = None
    size = 0
    executable = False
    sent_directories = False
    try:
        for ev in parse_nar(src.read, chunk_size):
            if type(ev) is FileChunk:
                writer.write(ev.data)  # type: ignore[union-attr]
            elif type(ev) is FileStart:
                if ev.size > UINT32_MAX:
                    raise InvalidRequest(
                        f"file {_show(stack, ev.name)} is {ev.size} bytes; files of 4 GiB or more are not supported "
                        "(FileNode.size is uint32 on the wire)"
                    )
                size, executable = ev.size, ev.executable
                writer = blob_service.open_write()
            elif type(ev) is FileEnd:
                digest = writer.close()  # type: ignore[union-attr]
                writer = None
                node = FileNode(name=ev.name, digest=digest, size=size, executable=executable)
                if stack:
                    stack[-1][1].files.append(node)
                else:
                    root = Node(file=node)
            elif type(ev) is Symlink:
                node = SymlinkNode(name=ev.name, target=ev.target)
                if stack:
                    stack[-1][1].symlinks.append(node)
                else:
                    root = Node(symlink=node)
            elif type(ev) is DirectoryStart:
                stack.append((ev.name, Directory()))
            elif type(ev) is DirectoryEnd:
                name, directory = stack.pop()
                digest = putter.put(directory)
                sent_directories = True
                node = DirectoryNode(name=name, digest=digest, size=directory_size(directory))
                if stack:
                    stack[-1][1].directories.append(node)
                else:
                    root = Node(directory=node)
        if root is None:  # pragma: no cover - parse_nar always yields a root or raises
            raise StorageError("NAR parser produced no root node")
        nar_size, nar_sha256 = src.size, src.sha256.digest()
        if expected_size is not None and nar_size != expected_size:
            raise NarMismatch(f"NAR size mismatch: announced {expected_size}, uploaded {nar_size}")
        if expected_sha256 is not None and nar_sha256 != expected_sha256:
            raise NarMismatch(
                f"NAR hash mismatch: announced sha256:{nixbase32.encode(expected_sha256)}, "
                f"uploaded sha256:{nixbase32.encode(nar_sha256)}"
            )
        if sent_directories:
            committed = putter.close()
            if committed != B3Digest(root.directory.digest):
                raise StorageError(f"directory putter committed {committed}, expected the root {root.directory.digest}")
        else:
            putter.abort()
        return IngestedNar(root=root, nar_size=nar_size, nar_sha256=nar_sha256)
    except BaseException:
        if writer is not None:
            writer.abort()
        putter.abort()
        raise


def _show(stack: list[tuple[bytes, Directory]], name: bytes) -> str:
    """The path of an entry inside the NAR, for error messages."""
    parts = [n for n, _ in stack[1:]] + [name]
    return repr(b"/".join(parts).decode("utf-8", "backslashreplace") or "<root>")
