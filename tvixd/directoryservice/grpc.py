"""``grpc+http://``, ``grpc+https://``, ``grpc+unix://``: the DirectoryService of a remote tvixd (or tvix-store).

Everything received is validated and digest-checked (a server sending anything
else is reported as ``DataLoss``). A putter streams its directories into one
Put call as they come, after checking them locally with the same rules the
server applies, so mistakes surface at ``put`` rather than at ``close``.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc

from tvixd import errors
from tvixd.blobservice.base import Precommit, run_precommit
from tvixd.castore.digest import B3Digest
from tvixd.castore.directory import directory_digest, directory_size, validate_directory
from tvixd.directoryservice.base import DirectoryPutter, DirectoryService
from tvixd.proto.castore_pb2 import Directory
from tvixd.proto.rpc_directory_pb2 import GetDirectoryRequest, PutDirectoryResponse
from tvixd.server.channel import SharedChannel

PUT_QUEUE_DIRECTORIES = 64
"""Directories a putter may have in flight before ``put`` blocks."""

_END = None


class GrpcDirectoryService(DirectoryService):
    """A DirectoryService client on a shared, lazily connected channel."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._channel = SharedChannel.acquire(url)
        self._get = self._put = None

    def _stubs(self) -> tuple[grpc.UnaryStreamMultiCallable, grpc.StreamUnaryMultiCallable]:
        if self._put is None:
            channel = self._channel.get()
            self._get = channel.unary_stream(
                "/tvix.store.v1.DirectoryService/Get",
                request_serializer=GetDirectoryRequest.SerializeToString,
                response_deserializer=Directory.FromString,
            )
            self._put = channel.stream_unary(
                "/tvix.store.v1.DirectoryService/Put",
                request_serializer=Directory.SerializeToString,
                response_deserializer=PutDirectoryResponse.FromString,
            )
        return self._get, self._put

    def _checked(self, directory: Directory) -> B3Digest:
        digest = directory_digest(directory)
        try:
            validate_directory(directory)
        except errors.InvalidRequest as e:
            raise errors.DataLoss(f"{self.url}: received directory {digest} failed validation: {e}") from None
        return digest

    def get(self, digest: bytes) -> Directory | None:
        digest = B3Digest(digest)
        call = self._stubs()[0](GetDirectoryRequest(digest=digest))
        try:
            directory = next(call)
        except StopIteration:
            return None
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._channel.error(e) from None
        finally:
            call.cancel()
        got = self._checked(directory)
        if got != digest:
            raise errors.DataLoss(f"{self.url}: requested directory {digest}, but got {got}")
        return directory

    def get_recursive(self, digest: bytes) -> Iterator[Directory]:
        digest = B3Digest(digest)
        call = self._stubs()[0](GetDirectoryRequest(digest=digest, recursive=True))
        try:
            first = next(call)
        except StopIteration:
            raise errors.NotFound(f"directory {digest} not found (empty response from {self.url})") from None
        except grpc.RpcError as e:
            raise self._channel.error(e) from None
        return self._recursive(digest, call, first)

    def _recursive(self, root: B3Digest, call: Iterator[Directory], first: Directory) -> Iterator[Directory]:
        # Lenient (Part A §4): a directory may come again after it was received (the
        # reference's pending-queue dedup repeats some); anything never referenced is an error.
        expected = {root}
        received: set[B3Digest] = set()
        directory: Directory | None = first
        try:
            while True:
                if directory is None:
                    try:
                        directory = next(call)
                    except StopIteration:
                        break
                    except grpc.RpcError as e:
                        raise self._channel.error(e) from None
                digest = self._checked(directory)
                if digest in expected:
                    expected.discard(digest)
                    received.add(digest)
                    for child in directory.directories:
                        child_digest = B3Digest(child.digest)
                        if child_digest not in received:
                            expected.add(child_digest)
                elif digest not in received:
                    raise errors.DataLoss(f"{self.url}: received unexpected directory {digest} below {root}")
                yield directory
                directory = None
        finally:
            call.cancel()
        if expected:
            missing = ", ".join(str(d) for d in sorted(expected)[:3])
            raise errors.DataLoss(
                f"{self.url}: still expected {len(expected)} directories below {root} (e.g. {missing}), "
                "but the stream ended")

    def put_multiple_start(self) -> DirectoryPutter:
        return GrpcDirectoryPutter(self)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.release()
            self._channel = None


class GrpcDirectoryPutter(DirectoryPutter):
    """One Put call fed from a bounded queue; checks each directory locally first (same rules as the server)."""

    def __init__(self, service: GrpcDirectoryService) -> None:
        self._service = service
        self._queue: queue.Queue[Directory | None] = queue.Queue(maxsize=PUT_QUEUE_DIRECTORIES)
        self._future: grpc.Future | None = None
        self._sizes: dict[B3Digest, int] = {}
        self._last: B3Digest | None = None
        self._root: B3Digest | None = None
        self._error: errors.TvixError | None = None
        self._done = False

    def _check(self, directory: Directory) -> B3Digest:
        digest = directory_digest(directory)
        try:
            validate_directory(directory)
        except errors.InvalidRequest as e:
            raise errors.InvalidRequest(f"directory {digest} failed validation: {e}") from e
        for child in directory.directories:
            child_digest = B3Digest(child.digest)
            expected = self._sizes.get(child_digest)
            if expected is None:
                raise errors.InvalidRequest(
                    f"child directory {child.name!r} ({child_digest}) in directory {digest} not seen yet "
                    "(children must be sent earlier in the same upload)")
            if child.size != expected:
                raise errors.InvalidRequest(
                    f"child directory {child.name!r} ({child_digest}) in directory {digest} "
                    f"referred with wrong size, expected {expected}, actual {child.size}")
        self._sizes[digest] = directory_size(directory)
        return digest

    def _fail(self, error: errors.TvixError) -> errors.TvixError:
        self._error = error
        self._cancel()
        return error

    def _cancel(self) -> None:
        if self._future is not None:
            self._future.cancel()
            while True:  # unblock grpcio's thread waiting for the next directory
                try:
                    self._queue.put_nowait(_END)
                    break
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass

    def _enqueue(self, item: Directory | None) -> None:
        if self._future is None:
            self._future = self._service._stubs()[1].future(_drain(self._queue))
        while True:
            if self._future.done():
                raise self._fail(self._call_error())
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _call_error(self) -> errors.TvixError:
        try:
            self._future.result()
        except grpc.RpcError as e:
            return self._service._channel.error(e)
        except grpc.FutureCancelledError:
            return errors.AlreadyClosed("directory putter was aborted")
        return errors.StorageError(f"{self._service.url}: directory upload ended before all directories were sent")

    def put(self, directory: Directory) -> B3Digest:
        if self._done:
            raise errors.AlreadyClosed("directory putter already closed")
        if self._error is not None:
            raise self._error
        try:
            digest = self._check(directory)
        except errors.TvixError as e:
            raise self._fail(e) from None
        self._enqueue(directory)
        self._last = digest
        return digest

    def close(self, precommit: Precommit | None = None) -> B3Digest:
        if self._root is not None:
            return self._root
        if self._done:
            raise errors.AlreadyClosed("directory putter was aborted or previously closed with an error")
        if self._error is None and self._last is not None:
            run_precommit(precommit, self.abort)  # before the half-close that makes the server commit
        self._done = True
        if self._error is not None:
            raise self._error
        if self._last is None:
            raise errors.InvalidRequest("no directories sent, can't show root digest")
        self._enqueue(_END)
        try:
            response = self._future.result()
        except grpc.RpcError as e:
            raise self._service._channel.error(e) from None
        if len(response.root_digest) != 32:
            raise errors.StorageError(
                f"{self._service.url}: invalid root digest length {len(response.root_digest)} in Put response")
        self._root = B3Digest(response.root_digest)
        return self._root

    def abort(self) -> None:
        if self._done and self._error is None:
            return
        self._done = True
        self._cancel()

    def __del__(self) -> None:
        if not self._done and self._future is not None:
            self.abort()


def _drain(q: queue.Queue[Directory | None]) -> Iterator[Directory]:
    """The Put request stream: directories from the putter's queue until the end marker."""
    while (directory := q.get()) is not _END:
        yield directory


def from_url(url: str) -> GrpcDirectoryService:
    """The client for a ``grpc+http(s)://host:port`` or ``grpc+unix:///abs/path`` address (SPEC §7.1)."""
    return GrpcDirectoryService(url)
