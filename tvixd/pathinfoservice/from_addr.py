"""Build a PathInfoService from its address, over the given blob and directory services.

Accepted (SPEC Part B §7.1, with ``sqlite`` in place of ``sled``):
- ``memory://`` (or ``memory:``): no host, no path;
- ``sqlite:///abs/file.sqlite``: no host, an absolute file path (parents created; may be the
  directory service's file); ``sqlite://`` (or ``sqlite:``) is a temporary database deleted on close;
- ``grpc+unix:///socket``, ``grpc+http://host:port``, ``grpc+https://host``: the gRPC client
  (which, like the reference, uses the remote store and ignores ``blob``/``directory``).
Anything else raises ``InvalidRequest`` naming the address and the rule broken.
"""

from __future__ import annotations

from tvixd import addr as _addr
from tvixd.blobservice.base import BlobService
from tvixd.directoryservice.base import DirectoryService
from tvixd.pathinfoservice.base import PathInfoService


def from_addr(addr: str, blob: BlobService, directory: DirectoryService) -> PathInfoService:
    """The path info service at ``addr``; ``blob``/``directory`` are used for put checks and NARs."""
    url = _addr.parse(addr)
    if url.scheme == "memory":
        _addr.check_memory(addr, url)
        from tvixd.pathinfoservice.memory import MemoryPathInfoService

        return MemoryPathInfoService(blob, directory)
    if url.scheme == "sqlite":
        path = _addr.sqlite_path(addr, url)
        from tvixd.pathinfoservice.sqlite import SqlitePathInfoService

        return SqlitePathInfoService(path, blob, directory)
    if url.scheme.startswith("grpc+"):
        return _addr.grpc_from_url("pathinfoservice", addr)
    raise _addr.unknown_scheme(addr, url, "memory://, sqlite:///abs/file, sqlite://, grpc+unix://, grpc+http(s)://")
