"""Walking the Directory DAG: ``traverse_to`` (SPEC Part B §7.3) and the reference's BFS order."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator

from tvixd.castore.digest import B3Digest
from tvixd.castore.directory import AnyNode, directory_nodes
from tvixd.directoryservice.base import DirectoryService
from tvixd.errors import NotFound
from tvixd.proto.castore_pb2 import Directory, DirectoryNode


def _components(path: str | bytes) -> list[bytes]:
    """Split like Rust's ``Path::components``: empty and interior ``.`` parts vanish, a leading ``.`` stays.

    ``..`` stays literal too; neither ever matches a valid child name.
    """
    raw = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
    if raw.startswith(b"/"):
        raw = raw[1:]
    parts = raw.split(b"/")
    return [p for i, p in enumerate(parts) if p and not (p == b"." and i > 0)]


def traverse_to(directory_service: DirectoryService, node: AnyNode, path: str | bytes) -> AnyNode | None:
    """The node at ``path`` below ``node`` (no components → ``node`` itself), or ``None``.

    Symlinks are not followed; a component below a file or symlink gives ``None``.
    A directory the walk needs but the store lacks raises ``NotFound`` naming it.
    """
    for component in _components(path):
        if not isinstance(node, DirectoryNode):
            return None
        digest = B3Digest(node.digest)
        directory = directory_service.get(digest)
        if directory is None:
            raise NotFound(f"directory {digest} does not exist (referred from {node.name!r})")
        for child in directory_nodes(directory):
            if child.name == component:
                node = child
                break
        else:
            return None
    return node


def bfs(get: Callable[[B3Digest], Directory | None], digest: bytes) -> Iterator[Directory]:
    """``get_recursive`` for any backend with a ``get``: the reference's BFS with pending-queue dedup.

    A FIFO worklist starts with ``digest``; pop the front, emit it, append each
    child digest (list order) unless the same digest is still waiting in the
    worklist. So put [A, A, C] → get_recursive(C) = [C, A], while R→{a:A, b:B},
    B→{a:A} gives [R, A, B, A] (the reference client relies on the repeat).
    The root is fetched now: a missing root raises ``NotFound`` before the
    iterator exists; a missing descendant raises ``NotFound`` from it.
    """
    root_digest = B3Digest(digest)
    root = get(root_digest)
    if root is None:
        raise NotFound(f"directory {root_digest} not found")
    return _bfs_iter(get, root_digest, root)


def _bfs_iter(
    get: Callable[[B3Digest], Directory | None], root_digest: B3Digest, root: Directory
) -> Iterator[Directory]:
    queue: deque[B3Digest] = deque([root_digest])
    waiting: Counter[B3Digest] = Counter({root_digest: 1})
    first: Directory | None = root
    while queue:
        current = queue.popleft()
        waiting[current] -= 1
        if first is not None:
            directory, first = first, None
        else:
            directory = get(current)
            if directory is None:
                raise NotFound(f"directory {current} does not exist (referred from a directory below {root_digest})")
        for child in directory.directories:
            child_digest = B3Digest(child.digest)
            if waiting[child_digest] <= 0:
                queue.append(child_digest)
                waiting[child_digest] += 1
        yield directory
