"""Thin servicers: decode the request, call the blocking service API, encode the answer.

No storage logic lives here. Every exception leaves through one wrapper
(:func:`_rpc`) that picks the status code from :mod:`tvixd.server.status`;
anything that is not a tvixd error is a bug: INTERNAL, logged with its traceback.

Requests are decoded by our own deserializer (:class:`Decoder`) rather than
grpcio's, so a malformed message is INVALID_ARGUMENT naming the message type
(grpcio would say INTERNAL), an oversized one is RESOURCE_EXHAUSTED naming the
limit, and unknown fields are dropped on arrival, as the reference (prost) does.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
import structlog
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from tvixd import errors
from tvixd.castore.digest import DIGEST_LEN, B3Digest
from tvixd.proto import blob_batch_pb2, rpc_blobstore_pb2, rpc_directory_pb2, rpc_pathinfo_pb2
from tvixd.proto.blob_batch_pb2 import PutBlobsRequest, PutBlobsResponse
from tvixd.proto.pathinfo_pb2 import Node, PathInfo
from tvixd.proto.rpc_blobstore_pb2 import BlobChunk, BlobMeta, PutBlobResponse
from tvixd.proto.rpc_directory_pb2 import PutDirectoryResponse
from tvixd.proto.rpc_pathinfo_pb2 import CalculateNARResponse
from tvixd.server.codec import Chunk, decode_blob_chunk, serialize_blob_chunk
from tvixd.server.status import code_for
from tvixd.store import Store

READ_CHUNK_SIZE = 512 * 1024
"""Bytes per BlobChunk in Blob Read, the fastest measured: reading a 256 MiB fs:// blob with the tvixd
client gave 20 MiB/s at 4 KiB (the reference's size), 132 at 64 KiB, 318 at 128 KiB, 300 at 256 KiB,
468 at 512 KiB and 383 at 1 MiB (bench/grpc_bench.py --read-chunk-sizes; BENCHMARKS.md)."""

UINT32_MAX = 2**32 - 1

CANCEL_GRACE_SECONDS = 0.005
"""How long after a client-streaming request ends we watch for the client's cancellation.

grpcio ends the request iterator *normally* when the client half-closes, but also
when it cancels or its connection drops (the receive completes empty either way);
the cancellation itself arrives as a separate event, measured here 0.2 ms later on
an idle machine. An upload is therefore committed only if the call is still active
this long after its stream ended, checked once the bytes are durable (so the fsync
usually covers the wait). A client that vanishes later than that left a complete,
valid blob or directory graph: unreferenced, never corrupt."""

QUICK_METHODS = frozenset({"/tvix.store.v1.BlobService/Stat", "/tvix.store.v1.PathInfoService/Get"})
"""Point lookups served by the quick pool (:func:`quick_pool`) when their store answers locally."""

QUICK_THREADS = 2
"""Threads of the quick pool (per serving process)."""

THREAD_POOL_ATTR = "experimental_thread_pool"
"""grpcio runs a method's behaviour on the ThreadPoolExecutor found under this attribute of the
behaviour, instead of the server's pool (``grpc._server._select_thread_pool_for_behavior``). Without it
(another grpcio), every call simply runs on the server's pool."""

SERVICE_DESCRIPTORS: tuple[ServiceDescriptor, ...] = (
    rpc_blobstore_pb2.DESCRIPTOR.services_by_name["BlobService"],
    rpc_directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"],
    rpc_pathinfo_pb2.DESCRIPTOR.services_by_name["PathInfoService"],
    blob_batch_pb2.DESCRIPTOR.services_by_name["BlobBatchService"],  # tvixd's extension (protos/tvixd/v1)
)
SERVICE_NAMES = tuple(s.full_name for s in SERVICE_DESCRIPTORS)

_log = structlog.get_logger("tvixd.server")


class Rejected:
    """What :class:`Decoder` hands to a servicer instead of a message it could not accept."""

    __slots__ = ("error",)

    def __init__(self, error: errors.TvixError) -> None:
        self.error = error


class Decoder:
    """Request deserializer for one message type with the daemon's size limit."""

    def __init__(self, cls: type[Message], max_message_bytes: int) -> None:
        self.cls = cls
        self.name = cls.DESCRIPTOR.full_name
        self.max_message_bytes = max_message_bytes

    def __call__(self, data: bytes) -> Message | Rejected:
        if len(data) > self.max_message_bytes:
            return Rejected(errors.ResourceExhausted(
                f"{self.name} message of {len(data)} bytes exceeds the limit max_message_size="
                f"{self.max_message_bytes} bytes (tvixd daemon --max-message-size)"))
        try:
            if self.cls is BlobChunk:
                return Chunk(decode_blob_chunk(data))  # bulk bytes: no copies (tvixd.server.codec)
            msg = self.cls.FromString(data)
        except DecodeError as e:
            return Rejected(errors.InvalidRequest(f"malformed {self.name} message: {e}"))
        msg.DiscardUnknownFields()
        return msg


def _checked(request: Any) -> Any:
    if isinstance(request, Rejected):
        raise request.error
    return request


def _checked_stream(requests: Iterable[Any]) -> Iterator[Any]:
    for request in requests:
        yield _checked(request)


def _fail(context: grpc.ServicerContext, method: str, exc: Exception) -> None:
    """Terminate the call with the status the table gives ``exc`` (always raises)."""
    if isinstance(exc, grpc.RpcError) and not context.is_active():
        # The client went away while we read its request stream: nobody to answer.
        raise exc
    code = code_for(exc)
    if code is not None and not context.is_active():
        # The client went away (cancelled, disconnected, deadline) and our refusal follows from that, e.g.
        # the upload check of _client_stayed: record the call as cancelled, not as an internal error.
        context.abort(grpc.StatusCode.CANCELLED, f"client went away: {exc}")
    if code is None:
        _log.error("unexpected error", method=method, exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}"
    else:
        if code == grpc.StatusCode.INTERNAL:
            _log.error("internal error", method=method, exc_info=exc)
        message = str(exc)
    context.abort(code, message)


def _rpc(method: str, fn: Callable[..., Any], request_streaming: bool, response_streaming: bool) -> Callable[..., Any]:
    """Wrap a servicer method: check decoded requests, map every exception to its status."""
    if response_streaming:

        def stream_handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                req = _checked_stream(request) if request_streaming else _checked(request)
                yield from fn(req, context)
            except Exception as e:  # the one place exceptions become statuses
                _fail(context, method, e)

        return functools.update_wrapper(stream_handler, fn)

    def unary_handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            req = _checked_stream(request) if request_streaming else _checked(request)
            return fn(req, context)
        except Exception as e:
            _fail(context, method, e)

    return functools.update_wrapper(unary_handler, fn)


def quick_pool() -> futures.ThreadPoolExecutor:
    """The pool of :data:`QUICK_THREADS` threads that serves :data:`QUICK_METHODS` (one per server).

    Why: grpcio hands every call to a thread of the server's pool, and with 32 threads
    each call wakes another one; 8 clients Stat'ing one daemon process kept ~10 threads
    fighting over the GIL, 12-26 voluntary context switches per call. Two threads pick
    the next call up while they are still running and switch 6 times per call: with
    8 h2load clients one process went from 850-1,750 to 1,950-2,770 Stat calls/s and from
    620-970 to 380-540 µs of CPU per call (alternating runs, loaded 2-core VM). Only point
    lookups answered from local files go here: they take microseconds and never wait for
    a client, so two threads cannot be held up; everything else (streams, uploads with
    their fsyncs, CalculateNAR, lookups a gRPC backend forwards) keeps the server's pool.
    """
    return futures.ThreadPoolExecutor(max_workers=QUICK_THREADS, thread_name_prefix="tvixd-quick")


def generic_handler(
    descriptor: ServiceDescriptor, servicer: object, max_message_bytes: int,
    quick: futures.ThreadPoolExecutor | None = None,
) -> grpc.GenericRpcHandler:
    """grpcio handlers for every method of ``descriptor``, served by ``servicer``'s same-named methods.

    ``quick``, if given, serves the :data:`QUICK_METHODS` among them.
    """
    handlers = {}
    for m in descriptor.methods:
        fn = getattr(servicer, m.name)
        assert inspect.isgeneratorfunction(fn) == m.server_streaming, m.full_name
        request_cls = message_factory.GetMessageClass(m.input_type)
        response_cls = message_factory.GetMessageClass(m.output_type)
        behaviour = _rpc(m.full_name, fn, m.client_streaming, m.server_streaming)
        if quick is not None and f"/{descriptor.full_name}/{m.name}" in QUICK_METHODS:
            setattr(behaviour, THREAD_POOL_ATTR, quick)
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = make(
            behaviour,
            request_deserializer=Decoder(request_cls, max_message_bytes),
            response_serializer=serialize_blob_chunk if response_cls is BlobChunk else response_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


def _digest(value: bytes, field: str) -> B3Digest:
    if len(value) != DIGEST_LEN:
        raise errors.InvalidRequest(f"{field}: invalid digest length {len(value)}, expected {DIGEST_LEN}")
    return B3Digest(value)


def _client_stayed(context: grpc.ServicerContext, what: str) -> Callable[[], None]:
    """A precommit check: raise unless the client half-closed its stream (rather than going away).

    Called right after the request stream ended; the returned check waits out what is
    left of :data:`CANCEL_GRACE_SECONDS` while watching for the cancellation.
    """
    deadline = time.monotonic() + CANCEL_GRACE_SECONDS

    def check() -> None:
        while True:
            if not context.is_active():
                raise errors.StorageError(f"client went away before the end of the {what} upload")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.0005))

    return check


class BlobServicer:
    """tvix.store.v1.BlobService over a :class:`~tvixd.blobservice.base.BlobService`."""

    def __init__(self, store: Store) -> None:
        self.blobs = store.blob

    def Stat(self, request: rpc_blobstore_pb2.StatBlobRequest, context: grpc.ServicerContext) -> BlobMeta:
        digest = _digest(request.digest, "StatBlobRequest.digest")
        if request.include_bao:
            raise errors.Unimplemented("StatBlobRequest.include_bao: bao is not implemented")
        size = self.blobs.size(digest)
        if size is None:
            raise errors.NotFound(f"blob {digest} not found")
        if request.include_chunks and size <= UINT32_MAX:
            # One chunk for the whole blob (the proto's promise; Part A §6). ChunkMeta.size is a
            # uint32, so a blob of 4 GiB or more gets no chunk list (clients then count bytes).
            return BlobMeta(chunks=[BlobMeta.ChunkMeta(digest=digest, size=size)])
        return BlobMeta()

    def Read(self, request: rpc_blobstore_pb2.ReadBlobRequest, context: grpc.ServicerContext) -> Iterator[Chunk]:
        digest = _digest(request.digest, "ReadBlobRequest.digest")
        reader = self.blobs.open_read(digest)
        if reader is None:
            raise errors.NotFound(f"blob {digest} not found")
        with reader:
            while data := reader.read(READ_CHUNK_SIZE):
                yield Chunk(data)

    def Put(self, requests: Iterator[Chunk], context: grpc.ServicerContext) -> PutBlobResponse:
        writer = self.blobs.open_write()
        try:
            for chunk in requests:
                writer.write(chunk.data)
            digest = writer.close(precommit=_client_stayed(context, "blob"))
        except BaseException:
            # Cancelled, disconnected or failed: nothing of this upload becomes visible.
            writer.abort()
            raise
        return PutBlobResponse(digest=digest)


DIGEST_ENTRY_BYTES = 2 + DIGEST_LEN
"""Bytes one digest adds to a PutBlobsResponse (tag, length, digest): bounds the blobs of one call."""


class BlobBatchServicer:
    """tvixd.v1.BlobBatchService: many whole blobs per call (protos/tvixd/v1/blob_batch.proto).

    Every blob is hashed and written here, through one :class:`~tvixd.blobservice.base.BlobBatch`
    of the store's blob service per call, so the guarantees are Put's (Part A §7): fs:// makes
    the call's blobs durable with one group-committed ``syncfs`` and names them only then, and
    only if the client is still there; a failed or cancelled call discards what it wrote. Why:
    a Put costs the daemon ~2 ms of CPU in grpcio's per-call machinery, much more than storing
    a small file does. The answer obeys the message size limit too, which bounds the number of
    blobs per call (``max_message_bytes // DIGEST_ENTRY_BYTES``).
    """

    def __init__(self, store: Store, max_message_bytes: int) -> None:
        self.blobs = store.blob
        self.max_message_bytes = max_message_bytes
        self.max_blobs = max_message_bytes // DIGEST_ENTRY_BYTES

    def PutBlobs(self, requests: Iterator[PutBlobsRequest], context: grpc.ServicerContext) -> PutBlobsResponse:
        batch = self.blobs.batch()
        digests: list[B3Digest] = []
        try:
            for request in requests:
                if not request.blobs:
                    raise errors.InvalidRequest("PutBlobsRequest.blobs: a message without blobs")
                if len(digests) + len(request.blobs) > self.max_blobs:
                    raise errors.ResourceExhausted(
                        f"PutBlobs call of more than {self.max_blobs} blobs: its answer would exceed the limit "
                        f"max_message_size={self.max_message_bytes} bytes (tvixd daemon --max-message-size)")
                for data in request.blobs:
                    digests.append(batch.put_whole(data))
            if not digests:
                raise errors.InvalidRequest("PutBlobsRequest.blobs: no blobs received")
            batch.commit(precommit=_client_stayed(context, "blob batch"))
        except BaseException:
            # Cancelled, disconnected or failed: nothing of this call becomes visible half-written.
            batch.abort()
            raise
        return PutBlobsResponse(digests=digests)


class DirectoryServicer:
    """tvix.store.v1.DirectoryService over a :class:`~tvixd.directoryservice.base.DirectoryService`."""

    def __init__(self, store: Store) -> None:
        self.directories = store.directory

    def Get(self, request: rpc_directory_pb2.GetDirectoryRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        if request.WhichOneof("by_what") is None:
            raise errors.InvalidRequest("GetDirectoryRequest.by_what needs to be specified")
        digest = _digest(request.digest, "GetDirectoryRequest.digest")
        if not request.recursive:
            directory = self.directories.get(digest)
            if directory is None:
                raise errors.NotFound(f"directory {digest} not found")
            yield directory
            return
        # get_recursive raises NotFound for a missing root when called, so the
        # call fails before any message is streamed (Part A §1).
        yield from self.directories.get_recursive(digest)

    def Put(self, requests: Iterator[Any], context: grpc.ServicerContext) -> PutDirectoryResponse:
        # One putter per stream: all-or-nothing (Part A §3).
        putter = self.directories.put_multiple_start()
        received = 0
        try:
            for directory in requests:
                putter.put(directory)
                received += 1
            if received == 0:
                raise errors.InvalidRequest("no directories received")
            root = putter.close(precommit=_client_stayed(context, "directory"))
        except BaseException:
            putter.abort()
            raise
        return PutDirectoryResponse(root_digest=root)


class PathInfoServicer:
    """tvix.store.v1.PathInfoService over a :class:`~tvixd.pathinfoservice.base.PathInfoService`."""

    def __init__(self, store: Store) -> None:
        self.path_infos = store.path_info

    def Get(self, request: rpc_pathinfo_pb2.GetPathInfoRequest, context: grpc.ServicerContext) -> PathInfo:
        if request.WhichOneof("by_what") is None:
            # The reference says UNIMPLEMENTED; a request without its key is malformed (Part A §1).
            raise errors.InvalidRequest("GetPathInfoRequest.by_what needs to be specified")
        digest = request.by_output_hash
        if len(digest) != 20:
            raise errors.InvalidRequest(
                f"GetPathInfoRequest.by_output_hash: invalid output digest length {len(digest)}, expected 20")
        path_info = self.path_infos.get(digest)
        if path_info is None:
            raise errors.NotFound(f"PathInfo for output hash {digest.hex()} not found")
        return path_info

    def Put(self, request: PathInfo, context: grpc.ServicerContext) -> PathInfo:
        return self.path_infos.put(request)

    def CalculateNAR(self, request: Node, context: grpc.ServicerContext) -> CalculateNARResponse:
        if request.WhichOneof("node") is None:
            raise errors.InvalidRequest("Node.node: no root node sent")
        nar_size, nar_sha256 = self.path_infos.calculate_nar(request)
        return CalculateNARResponse(nar_size=nar_size, nar_sha256=nar_sha256)

    def List(self, request: rpc_pathinfo_pb2.ListPathInfoRequest, context: grpc.ServicerContext) -> Iterator[PathInfo]:
        yield from self.path_infos.list()


def _answers_locally(service: object) -> bool:
    """Whether a service answers from this machine's files or memory (not a gRPC client of another daemon)."""
    from tvixd.blobservice.grpc import GrpcBlobService
    from tvixd.pathinfoservice.grpc import GrpcPathInfoService

    return not isinstance(service, GrpcBlobService | GrpcPathInfoService)


def generic_handlers(store: Store, max_message_bytes: int,
                     quick: futures.ThreadPoolExecutor | None = None) -> list[grpc.GenericRpcHandler]:
    """The three tvix.store.v1 services and tvixd's BlobBatchService over ``store``.

    ``quick`` serves local point lookups (:func:`quick_pool`).
    """
    servicers = (BlobServicer(store), DirectoryServicer(store), PathInfoServicer(store),
                 BlobBatchServicer(store, max_message_bytes))
    local = {BlobServicer: _answers_locally(store.blob), PathInfoServicer: _answers_locally(store.path_info)}
    return [generic_handler(d, s, max_message_bytes, quick if local.get(type(s)) else None)
            for d, s in zip(SERVICE_DESCRIPTORS, servicers, strict=True)]
