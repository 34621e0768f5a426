"""The NAR renderer: a node plus the blob and directory services → NAR bytes (SPEC Part B §5.4).

Errors (SPEC Part A §2), each naming the digest and the entry it was reached from:
missing blob or directory → ``NotFound``; a FileNode whose declared size differs
from its blob → ``DataLoss``; a malformed node (unset, digest not 32 bytes) →
``InvalidRequest``. Corrupt blobs surface as the blob reader's ``DataLoss``.

Memory stays flat: blobs are streamed in chunks, and the walk is iterative, so
deep trees do not hit the recursion limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tvixd.blobservice.base import BlobService
from tvixd.castore.digest import DIGEST_LEN, B3Digest
from tvixd.castore.directory import AnyNode, directory_digest, directory_nodes
from tvixd.castore.nar import NarHashSink, NarSizeError, NarWriter
from tvixd.directoryservice.base import DirectoryService
from tvixd.errors import DataLoss, InvalidRequest, NotFound
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import Node

BLOB_CHUNK = 1 << 20
"""Read size for blob contents: big enough that per-call overhead vanishes, small enough to stay flat."""


def root_of(node: Node | AnyNode) -> AnyNode:
    """The DirectoryNode/FileNode/SymlinkNode inside a ``Node`` (or ``node`` itself)."""
    if isinstance(node, Node):
        kind = node.WhichOneof("node")
        if kind is None:
            raise InvalidRequest("no root node sent (Node.node is unset)")
        return getattr(node, kind)
    if isinstance(node, DirectoryNode | FileNode | SymlinkNode):
        return node
    raise InvalidRequest(f"not a node: {type(node).__name__}")


def _digest(node: DirectoryNode | FileNode, what: str) -> B3Digest:
    if len(node.digest) != DIGEST_LEN:
        raise InvalidRequest(f"invalid digest length {len(node.digest)} in {what} node {node.name!r}")
    return B3Digest(node.digest)


class _Renderer:
    def __init__(self, writer: NarWriter, blobs: BlobService, directories: DirectoryService) -> None:
        self.writer = writer
        self.blobs = blobs
        self.directories = directories
        self.prefetched: dict[B3Digest, Directory] = {}

    def prefetch(self, node: DirectoryNode) -> None:
        """Fetch the whole closure with one ``get_recursive`` (one round trip for a gRPC backend).

        If it is incomplete, fall back to per-directory lookups so the error names the entry.
        """
        try:
            for d in self.directories.get_recursive(_digest(node, "directory")):
                self.prefetched[directory_digest(d)] = d
        except NotFound:
            self.prefetched.clear()

    def directory(self, node: DirectoryNode) -> Directory:
        digest = _digest(node, "directory")
        directory = self.prefetched.get(digest)
        if directory is None:
            directory = self.directories.get(digest)
        if directory is None:
            raise NotFound(f"directory {digest} not found (referred from entry {node.name!r})")
        return directory

    def file(self, node: FileNode) -> None:
        digest = _digest(node, "file")
        reader = self.blobs.open_read(digest)
        if reader is None:
            raise NotFound(f"blob {digest} not found (referred from entry {node.name!r})")
        with reader:
            if reader.size is not None and reader.size != node.size:
                raise DataLoss(
                    f"entry {node.name!r} declares size {node.size} but blob {digest} has {reader.size} bytes"
                )
            w = self.writer
            try:
                w.file_start(node.size, node.executable)
                if reader.size is None:
                    while chunk := reader.read(BLOB_CHUNK):
                        w.file_chunk(chunk)
                else:
                    # Size known: ask for exactly what is left (no final empty read per file); the read
                    # that reaches the end is the one a verifying reader checks. An empty blob gets one
                    # read so it is checked too.
                    remaining = node.size
                    while remaining:
                        chunk = reader.read(min(BLOB_CHUNK, remaining))
                        if not chunk:
                            raise DataLoss(f"blob {digest} (entry {node.name!r}) ended {remaining} bytes early")
                        w.file_chunk(chunk)
                        remaining -= len(chunk)
                    if not node.size:
                        reader.read(1)
                w.file_end()
            except NarSizeError as e:
                raise DataLoss(f"entry {node.name!r} (blob {digest}): {e}") from e

    def render(self, root: AnyNode) -> None:
        w = self.writer
        if isinstance(root, DirectoryNode):
            self.prefetch(root)
        # One iterator over the children per open directory, innermost last.
        stack: list[Iterator[AnyNode]] = []

        def begin(node: AnyNode) -> bool:
            """Write a node, or open it if it is a directory; True if it was a directory."""
            if isinstance(node, SymlinkNode):
                w.symlink(node.target)
                return False
            if isinstance(node, FileNode):
                self.file(node)
                return False
            directory = self.directory(node)
            w.directory_start()
            stack.append(directory_nodes(directory))
            return True

        begin(root)
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                w.directory_end()
                if stack:
                    w.entry_end()
                continue
            w.entry_start(child.name)
            if not begin(child):
                w.entry_end()
        w.flush()


def write_nar(
    sink: Callable[[bytes], object],
    node: Node | AnyNode,
    blob_service: BlobService,
    directory_service: DirectoryService,
) -> None:
    """Write the NAR of ``node`` to ``sink``; the node's own name is not part of a NAR."""
    _Renderer(NarWriter(sink), blob_service, directory_service).render(root_of(node))


def calculate_nar(
    node: Node | AnyNode, blob_service: BlobService, directory_service: DirectoryService
) -> tuple[int, bytes]:
    """``(nar_size, nar_sha256)`` of ``node``'s NAR, without keeping the NAR."""
    sink = NarHashSink()
    write_nar(sink, node, blob_service, directory_service)
    return sink.result()
