"""The backends the conformance suites run against (name → factory).

A factory takes ``(tmp_path, stack)`` and returns a fresh, empty service; it may
register clean-up on the ``contextlib.ExitStack`` (the fixture closes the
service itself first). Other helpers add entries here (the grpc helper adds
gRPC client backends talking to a real daemon) and every suite picks them up.

Path info factories return a service whose ``.blob_service`` and
``.directory_service`` are where the tests upload the content the path infos
point at (for a gRPC client: clients of the same daemon).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from tvixd.blobservice.base import BlobService
from tvixd.blobservice.from_addr import from_addr as blob_from_addr
from tvixd.directoryservice.base import DirectoryService
from tvixd.directoryservice.from_addr import from_addr as directory_from_addr
from tvixd.pathinfoservice.base import PathInfoService
from tvixd.pathinfoservice.from_addr import from_addr as path_info_from_addr

BlobFactory = Callable[[Path, ExitStack], BlobService]
DirectoryFactory = Callable[[Path, ExitStack], DirectoryService]
PathInfoFactory = Callable[[Path, ExitStack], PathInfoService]


def _closing(stack: ExitStack, service):
    stack.callback(service.close)
    return service


def _memory_path_info(tmp_path: Path, stack: ExitStack) -> PathInfoService:
    blob = _closing(stack, blob_from_addr("memory://"))
    directory = _closing(stack, directory_from_addr("memory://"))
    return path_info_from_addr("memory://", blob, directory)


BLOB_BACKENDS: dict[str, BlobFactory] = {
    "memory": lambda tmp_path, stack: blob_from_addr("memory://"),
    "fs": lambda tmp_path, stack: blob_from_addr(f"fs://{tmp_path}/blobs"),
}

DIRECTORY_BACKENDS: dict[str, DirectoryFactory] = {
    "memory": lambda tmp_path, stack: directory_from_addr("memory://"),
    "sqlite": lambda tmp_path, stack: directory_from_addr(f"sqlite://{tmp_path}/store.sqlite"),
    "sqlite-temp": lambda tmp_path, stack: directory_from_addr("sqlite://"),
}

def _embedded_path_info(tmp_path: Path, stack: ExitStack) -> PathInfoService:
    """The embedded store's combination: fs blobs, one SQLite file for directories and path infos."""
    blob = _closing(stack, blob_from_addr(f"fs://{tmp_path}/blobs"))
    directory = _closing(stack, directory_from_addr(f"sqlite://{tmp_path}/store.sqlite"))
    return path_info_from_addr(f"sqlite://{tmp_path}/store.sqlite", blob, directory)


def _temp_sqlite_path_info(tmp_path: Path, stack: ExitStack) -> PathInfoService:
    blob = _closing(stack, blob_from_addr("memory://"))
    directory = _closing(stack, directory_from_addr("sqlite://"))
    return path_info_from_addr("sqlite://", blob, directory)


PATH_INFO_BACKENDS: dict[str, PathInfoFactory] = {
    "memory": _memory_path_info,
    "sqlite": _embedded_path_info,
    "sqlite-temp": _temp_sqlite_path_info,
}


# gRPC clients talking to a real in-process server (memory backends) over a Unix socket (grpc helper).
def _grpc_blob(tmp_path: Path, stack: ExitStack) -> BlobService:
    from tests.daemon import memory_store_url

    return blob_from_addr(memory_store_url(stack))


def _grpc_directory(tmp_path: Path, stack: ExitStack) -> DirectoryService:
    from tests.daemon import memory_store_url

    return directory_from_addr(memory_store_url(stack))


def _grpc_path_info(tmp_path: Path, stack: ExitStack) -> PathInfoService:
    from tests.daemon import memory_store_url

    url = memory_store_url(stack)
    blob = _closing(stack, blob_from_addr(url))
    directory = _closing(stack, directory_from_addr(url))
    service = path_info_from_addr(url, blob, directory)
    # from_addr does not hand blob/directory to a gRPC client (it uses the remote store);
    # the suite uploads content through these, clients of the same server.
    service.blob_service, service.directory_service = blob, directory
    return service


BLOB_BACKENDS["grpc"] = _grpc_blob
DIRECTORY_BACKENDS["grpc"] = _grpc_directory
PATH_INFO_BACKENDS["grpc"] = _grpc_path_info
