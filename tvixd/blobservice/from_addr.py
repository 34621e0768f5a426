"""Build a BlobService from its address.

Accepted (SPEC Part B §7.1, with ``fs`` in place of ``sled``):
- ``memory://`` (or ``memory:``): no host, no path;
- ``fs:///abs/dir``: no host, an absolute directory other than ``/`` (created if missing);
- ``grpc+unix:///socket``, ``grpc+http://host:port``, ``grpc+https://host``: the gRPC client
  (its own ``from_url`` checks host/path rules).
Anything else raises ``InvalidRequest`` naming the address and the rule broken.
"""

from __future__ import annotations

from tvixd import addr as _addr
from tvixd.blobservice.base import BlobService


def from_addr(addr: str) -> BlobService:
    """The blob service at ``addr``."""
    url = _addr.parse(addr)
    if url.scheme == "memory":
        _addr.check_memory(addr, url)
        from tvixd.blobservice.memory import MemoryBlobService

        return MemoryBlobService()
    if url.scheme == "fs":
        path = _addr.fs_path(addr, url)
        from tvixd.blobservice.fs import FsBlobService

        return FsBlobService(path)
    if url.scheme.startswith("grpc+"):
        return _addr.grpc_from_url("blobservice", addr)
    raise _addr.unknown_scheme(addr, url, "memory://, fs:///abs/dir, grpc+unix://, grpc+http(s)://")
