"""Build a DirectoryService from its address.

Accepted (SPEC Part B §7.1, with ``sqlite`` in place of ``sled``):
- ``memory://`` (or ``memory:``): no host, no path;
- ``sqlite:///abs/file.sqlite``: no host, an absolute file path (parents created); ``sqlite://`` (or
  ``sqlite:``) is a temporary database deleted on close. The path-info service may share the file;
- ``grpc+unix:///socket``, ``grpc+http://host:port``, ``grpc+https://host``: the gRPC client.
Anything else raises ``InvalidRequest`` naming the address and the rule broken.
"""

from __future__ import annotations

from tvixd import addr as _addr
from tvixd.directoryservice.base import DirectoryService


def from_addr(addr: str) -> DirectoryService:
    """The directory service at ``addr``."""
    url = _addr.parse(addr)
    if url.scheme == "memory":
        _addr.check_memory(addr, url)
        from tvixd.directoryservice.memory import MemoryDirectoryService

        return MemoryDirectoryService()
    if url.scheme == "sqlite":
        path = _addr.sqlite_path(addr, url)
        from tvixd.directoryservice.sqlite import SqliteDirectoryService

        return SqliteDirectoryService(path)
    if url.scheme.startswith("grpc+"):
        return _addr.grpc_from_url("directoryservice", addr)
    raise _addr.unknown_scheme(addr, url, "memory://, sqlite:///abs/file, sqlite://, grpc+unix://, grpc+http(s)://")
