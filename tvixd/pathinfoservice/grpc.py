"""``grpc+http://``, ``grpc+https://``, ``grpc+unix://``: the PathInfoService of a remote tvixd (or tvix-store).

Like the reference, it uses the remote store for everything (put checks, NAR
calculation) and ignores the blob/directory services it is given.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from tvixd import errors
from tvixd.blobservice.base import BlobService
from tvixd.directoryservice.base import DirectoryService
from tvixd.pathinfoservice.base import PathInfoService
from tvixd.proto.pathinfo_pb2 import Node, PathInfo
from tvixd.proto.rpc_pathinfo_pb2 import CalculateNARResponse, GetPathInfoRequest, ListPathInfoRequest
from tvixd.server.channel import SharedChannel


class GrpcPathInfoService(PathInfoService):
    """A PathInfoService client on a shared, lazily connected channel."""

    def __init__(self, url: str, blob_service: BlobService | None = None,
                 directory_service: DirectoryService | None = None) -> None:
        super().__init__(blob_service, directory_service)  # type: ignore[arg-type]
        self.url = url
        self._channel = SharedChannel.acquire(url)
        self._stubs_cache: tuple | None = None

    def _stubs(self) -> tuple:
        if self._stubs_cache is None:
            channel = self._channel.get()
            prefix = "/tvix.store.v1.PathInfoService/"
            self._stubs_cache = (
                channel.unary_unary(prefix + "Get", request_serializer=GetPathInfoRequest.SerializeToString,
                                    response_deserializer=PathInfo.FromString),
                channel.unary_unary(prefix + "Put", request_serializer=PathInfo.SerializeToString,
                                    response_deserializer=PathInfo.FromString),
                channel.unary_unary(prefix + "CalculateNAR", request_serializer=Node.SerializeToString,
                                    response_deserializer=CalculateNARResponse.FromString),
                channel.unary_stream(prefix + "List", request_serializer=ListPathInfoRequest.SerializeToString,
                                     response_deserializer=PathInfo.FromString),
            )
        return self._stubs_cache

    def get(self, digest: bytes) -> PathInfo | None:
        if len(digest) != 20:
            raise errors.InvalidRequest(f"invalid output digest length: {len(digest)} (expected 20)")
        try:
            return self._stubs()[0](GetPathInfoRequest(by_output_hash=bytes(digest)))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._channel.error(e) from None

    def put(self, path_info: PathInfo) -> PathInfo:
        try:
            return self._stubs()[1](path_info)
        except grpc.RpcError as e:
            raise self._channel.error(e) from None

    def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        if node.WhichOneof("node") is None:
            raise errors.InvalidRequest("no root node sent")
        try:
            response = self._stubs()[2](node)
        except grpc.RpcError as e:
            raise self._channel.error(e) from None
        if len(response.nar_sha256) != 32:
            raise errors.StorageError(
                f"{self.url}: invalid nar_sha256 length {len(response.nar_sha256)} in CalculateNAR response")
        return response.nar_size, response.nar_sha256

    def list(self) -> Iterator[PathInfo]:
        """Every PathInfo of the remote store, each validated (SPEC §2.4): a bad one is ``DataLoss``."""
        from tvixd.castore.pathinfo import validate_path_info

        call = self._stubs()[3](ListPathInfoRequest())
        try:
            for path_info in call:
                try:
                    validate_path_info(path_info)
                except errors.InvalidRequest as e:
                    raise errors.DataLoss(f"{self.url}: listed PathInfo failed validation: {e}") from None
                yield path_info
        except grpc.RpcError as e:
            raise self._channel.error(e) from None
        finally:
            call.cancel()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.release()
            self._channel = None


def from_url(url: str, blob_service: BlobService | None = None,
             directory_service: DirectoryService | None = None) -> GrpcPathInfoService:
    """The client for a ``grpc+http(s)://host:port`` or ``grpc+unix:///abs/path`` address (SPEC §7.1)."""
    return GrpcPathInfoService(url, blob_service, directory_service)
