"""``memory://``: path infos in a process-local dict. A real implementation, used heavily in tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from tvixd.blobservice.base import BlobService
from tvixd.directoryservice.base import DirectoryService
from tvixd.pathinfoservice.base import PathInfoService
from tvixd.pathinfoservice.common import check_output_digest, check_path_info, nar_cache_key
from tvixd.proto.pathinfo_pb2 import Node, PathInfo


class MemoryPathInfoService(PathInfoService):
    """Serialized PathInfos keyed by the 20-byte store path digest, plus an in-memory NAR cache."""

    def __init__(self, blob_service: BlobService, directory_service: DirectoryService) -> None:
        super().__init__(blob_service, directory_service)
        self._lock = threading.Lock()
        self._infos: dict[bytes, bytes] = {}
        self._nar_cache: dict[bytes, tuple[int, bytes]] = {}

    def get(self, digest: bytes) -> PathInfo | None:
        key = check_output_digest(digest)
        with self._lock:
            data = self._infos.get(key)
        return None if data is None else PathInfo.FromString(data)

    def put(self, path_info: PathInfo) -> PathInfo:
        key = check_path_info(path_info, self.blob_service, self.directory_service)
        data = path_info.SerializeToString(deterministic=True)
        with self._lock:
            self._infos[key] = data
        return path_info

    def list(self) -> Iterator[PathInfo]:
        with self._lock:
            snapshot = list(self._infos.values())  # references to immutable bytes, not copies
        for data in snapshot:
            yield PathInfo.FromString(data)

    def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        key = nar_cache_key(node)
        with self._lock:
            cached = self._nar_cache.get(key)
        if cached is not None:
            return cached
        from tvixd.nar import calculate_nar

        result = calculate_nar(node, self.blob_service, self.directory_service)
        with self._lock:
            self._nar_cache[key] = result
        return result
