"""``grpc+http://``, ``grpc+https://``, ``grpc+unix://``: the BlobService of a remote tvixd (or tvix-store).

Writes stream chunks through a bounded queue into one client-streaming Put
call, so a writer never buffers a whole blob; a blob that fits one chunk (most
files of an import) goes as the same single message through grpcio's unary
call path instead (see :meth:`GrpcBlobWriter.close`), and in a batch
(:class:`GrpcBlobBatch`, the importer's) packed with others into calls of
tvixd's BlobBatchService, without waiting for the answer;
reads stream forward only (SPEC Part B §9.3) and verify the blake3 digest as
the bytes arrive.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Iterator

import blake3
import grpc

from tvixd import errors
from tvixd.blobservice.base import BlobBatch, BlobReader, BlobService, BlobWriter, Precommit, run_precommit
from tvixd.castore.digest import B3Digest
from tvixd.proto.blob_batch_pb2 import PutBlobsResponse
from tvixd.proto.rpc_blobstore_pb2 import BlobMeta, PutBlobResponse, ReadBlobRequest, StatBlobRequest
from tvixd.server.channel import GRPC_TOO_LARGE, SharedChannel
from tvixd.server.codec import decode_blob_chunk, encode_blob_chunk

WRITE_CHUNK_SIZE = 1024 * 1024
"""Writes are split into BlobChunks of at most this many bytes (far below any message limit)."""

WRITE_QUEUE_CHUNKS = 8
"""Chunks a writer may have in flight: bounds its memory to ~8 MiB while keeping the call busy."""

BATCH_MESSAGE_BYTES = 1 << 20
"""Bytes of blobs per PutBlobs call of a :class:`GrpcBlobBatch`, at most (far below the daemon's default
message limit, 64 MiB; a daemon with a lower one refuses the call and its blobs go as Puts).

/usr/share/doc (3,500 distinct blobs) through a daemon, 4 interleaved runs at load 3-5, median wall:
256 KiB 2.90 s (179 calls), 1 MiB 2.44 s (72 calls), 4 MiB 2.35 s (17 calls); one Put per blob 8.3 s."""

BATCH_MESSAGE_BLOBS = 1024
"""Blobs per PutBlobs call, at most: keeps the answer (34 bytes a digest) small."""

BATCH_CALLS = 4
"""PutBlobs calls of a :class:`GrpcBlobBatch` awaiting their answer, at most: the daemon writes the blobs
of one while the client packs the next. Same runs as above: 2 calls 2.63 s, 4 calls 2.44 s, 8 calls 2.28 s
(differences within the noise of a loaded machine)."""

_EMPTY_ENTRY = b"\x0a\x00"
"""The empty blob as a PutBlobsRequest.blobs entry (an empty BlobChunk encodes to nothing at all)."""

BATCH_INFLIGHT = 16
"""One-message Puts of a :class:`GrpcBlobBatch` awaiting their answer, at most (bounds memory to ~16 MiB).

Enough to keep a daemon busy (a Put takes it ~2 ms of CPU and answers in 10-40 ms).
/usr/share/doc through a daemon, alternated runs on a loaded machine: 12 or 16
in flight cost the daemon 9.1-10.0 s of CPU, 32 in flight 10.8 s (more of its
worker threads contend for its GIL), with no difference in wall time."""

_END = None  # queue sentinel: the writer was closed


class GrpcBlobService(BlobService):
    """A BlobService client; every method is one gRPC call on a shared, lazily connected channel."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._channel = SharedChannel.acquire(url)
        self._stat = self._read = self._put = self._put_one = self._put_blobs = None

    def _stubs(self) -> tuple[grpc.UnaryUnaryMultiCallable, grpc.UnaryStreamMultiCallable,
                              grpc.StreamUnaryMultiCallable, grpc.UnaryUnaryMultiCallable,
                              grpc.UnaryUnaryMultiCallable]:
        if self._put is None:
            channel = self._channel.get()
            self._stat = channel.unary_unary(
                "/tvix.store.v1.BlobService/Stat",
                request_serializer=StatBlobRequest.SerializeToString,
                response_deserializer=BlobMeta.FromString,
            )
            self._read = channel.unary_stream(
                "/tvix.store.v1.BlobService/Read",
                request_serializer=ReadBlobRequest.SerializeToString,
                response_deserializer=decode_blob_chunk,  # -> memoryview of the data, no copies
            )
            self._put = channel.stream_unary(
                "/tvix.store.v1.BlobService/Put",
                request_serializer=None,  # _drain yields encoded BlobChunks (tvixd.server.codec)
                response_deserializer=PutBlobResponse.FromString,
            )
            # The same Put method called with exactly one request message: gRPC's wire format does
            # not tell unary from client-streaming calls, so the server sees an ordinary Put stream.
            self._put_one = channel.unary_unary(
                "/tvix.store.v1.BlobService/Put",
                request_serializer=None,
                response_deserializer=PutBlobResponse.FromString,
            )
            # tvixd's extension, also called with one message (GrpcBlobBatch builds its bytes).
            self._put_blobs = channel.unary_unary(
                "/tvixd.v1.BlobBatchService/PutBlobs",
                request_serializer=None,
                response_deserializer=PutBlobsResponse.FromString,
            )
        return self._stat, self._read, self._put, self._put_one, self._put_blobs

    def has(self, digest: bytes) -> bool:
        digest = B3Digest(digest)
        try:
            self._stubs()[0](StatBlobRequest(digest=digest))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise self._channel.error(e) from None
        return True

    def size(self, digest: bytes) -> int | None:
        digest = B3Digest(digest)
        try:
            meta = self._stubs()[0](StatBlobRequest(digest=digest, include_chunks=True))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._channel.error(e) from None
        if meta.chunks:
            return sum(c.size for c in meta.chunks)
        # A server that lists no chunks (the reference; tvixd for blobs of 4 GiB or more): count.
        reader = self.open_read(digest)
        if reader is None:
            return None
        with reader:
            total = 0
            while chunk := reader.read(WRITE_CHUNK_SIZE):
                total += len(chunk)
            return total

    def open_read(self, digest: bytes) -> BlobReader | None:
        digest = B3Digest(digest)
        call = self._stubs()[1](ReadBlobRequest(digest=digest))
        try:
            first = next(call)
        except StopIteration:
            first = b""  # the empty blob: no chunks at all
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._channel.error(e) from None
        return GrpcBlobReader(self._channel, digest, call, first)

    def open_write(self) -> BlobWriter:
        return GrpcBlobWriter(self)

    def batch(self) -> BlobBatch:
        return GrpcBlobBatch(self)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.release()
            self._channel = None


class GrpcBlobReader(BlobReader):
    """Forward-only reader over a Read stream (SPEC Part B §9.3).

    Forward seeks read and discard; backward seeks and ``SEEK_END`` raise
    ``io.UnsupportedOperation`` (reopen the blob instead), and so does seeking
    past the end (the reference's UnexpectedEof), naming how far it got.
    Every byte is hashed; at EOF a mismatch with the digest raises ``DataLoss``.
    """

    def __init__(self, channel: SharedChannel, digest: B3Digest, call: Iterator[memoryview], first: memoryview) -> None:
        super().__init__()
        self._channel = channel
        self._digest = digest
        self._call = call
        self._buf = memoryview(first)
        self._pos = 0
        self._eof = not first
        self._hasher = blake3.blake3(first)
        if self._eof:
            self._verify()

    def _verify(self) -> None:
        if self._hasher.digest() != self._digest:
            got = B3Digest(self._hasher.digest())
            raise errors.DataLoss(f"blob {self._digest}: received bytes hash to {got}")

    def _fill(self) -> bool:
        """Make ``_buf`` non-empty; False at EOF."""
        while not self._buf:
            if self._eof:
                return False
            try:
                data = next(self._call)
            except StopIteration:
                self._eof = True
                self._verify()
                return False
            except grpc.RpcError as e:
                raise self._channel.error(e) from None
            self._hasher.update(data)
            self._buf = data
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("read from a closed blob reader")
        if not self._fill():
            return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if not self._fill():
            return b""
        if size >= len(self._buf):
            # Hand out whole chunks without copying them into a caller buffer.
            data, self._buf = bytes(self._buf), memoryview(b"")
        else:
            data, self._buf = bytes(self._buf[:size]), self._buf[size:]
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        parts = []
        while self._fill():
            parts.append(bytes(self._buf))
            self._pos += len(self._buf)
            self._buf = memoryview(b"")
        return b"".join(parts)

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            target = self._pos + pos
        elif whence == io.SEEK_SET:
            target = pos
        else:
            raise io.UnsupportedOperation("can't seek from the end of a gRPC blob stream (forward only)")
        if target < self._pos:
            raise io.UnsupportedOperation(f"can't seek backwards ({self._pos} -> {target}) in a gRPC blob stream")
        while self._pos < target:
            if not self._fill():
                raise io.UnsupportedOperation(
                    f"tried to skip {target - self._pos} more bytes, but reached the end of the blob at {self._pos}")
            n = min(target - self._pos, len(self._buf))
            self._buf = self._buf[n:]
            self._pos += n
        return self._pos

    def close(self) -> None:
        if not self.closed and not self._eof:
            self._call.cancel()
        super().close()


class GrpcBlobWriter(BlobWriter):
    """Streams written bytes into one Put call through a bounded queue; ``close`` returns the digest.

    The first chunk is held back: if ``close`` comes before a second one, the
    blob is sent as one message in a unary-style call (:meth:`_put_single`, or
    :meth:`GrpcBlobBatch.put_single` for a writer of a batch). Otherwise the
    streaming call starts with the second write, on a grpcio thread that drains
    the queue. ``abort`` cancels the call, which makes the server discard the
    upload (nothing becomes visible); an aborted writer that never started a
    call has sent nothing.
    """

    def __init__(self, service: GrpcBlobService, batch: GrpcBlobBatch | None = None) -> None:
        self._service = service
        self._batch = batch
        self._queue: queue.Queue[bytes | None] | None = None  # made by _start: one-chunk blobs need none
        self._future: grpc.Future | None = None
        self._first: bytes | None = None  # the held-back first chunk while no call has started
        self._digest: B3Digest | None = None
        self._done = False

    def _start(self) -> grpc.Future:
        if self._future is None:
            self._queue = queue.Queue(maxsize=WRITE_QUEUE_CHUNKS)
            self._future = self._service._stubs()[2].future(_drain(self._queue))
            if self._first is not None:
                first, self._first = self._first, None
                self._enqueue(first)
        return self._future

    def _put_single(self, chunk: bytes) -> PutBlobResponse:
        """Put a blob of one chunk without grpcio's per-call request-consumer thread.

        A stream-unary call starts a thread to iterate the requests and runs on the
        channel's polling thread; a blocking unary call does neither (importing
        /usr/share/doc, ~5,000 files, through a daemon: 14-18 s -> 8-11 s on the
        same loaded machine). The bytes on the wire are those of a one-message Put stream.
        """
        return self._service._stubs()[3](chunk)

    def _release_consumer(self) -> None:
        """Unblock grpcio's thread waiting in ``_drain`` (the call is over; it must not wait forever)."""
        while True:
            try:
                self._queue.put_nowait(_END)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass

    def _enqueue(self, item: bytes | None) -> None:
        future = self._start()
        while True:
            if future.done():
                # The server ended the call early (an error): surface it now.
                self._done = True
                self._release_consumer()
                raise self._error(future)
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _error(self, future: grpc.Future) -> errors.TvixError:
        try:
            future.result()
        except grpc.RpcError as e:
            return self._service._channel.error(e)
        except grpc.FutureCancelledError:
            return errors.AlreadyClosed("blob upload was aborted")
        return errors.StorageError(f"{self._service.url}: blob upload ended before all data was sent")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise errors.AlreadyClosed("blob writer already closed")
        view = memoryview(data).cast("B")
        for i in range(0, len(view), WRITE_CHUNK_SIZE):
            # Encoding copies the bytes, so the caller may reuse its buffer once write returns.
            chunk = encode_blob_chunk(view[i:i + WRITE_CHUNK_SIZE])
            if not chunk:
                continue
            if self._future is None and self._first is None:
                self._first = chunk  # maybe the only one: see _put_single
            else:
                self._enqueue(chunk)
        return len(view)

    def close(self, precommit: Precommit | None = None) -> B3Digest:
        if self._digest is not None:
            return self._digest
        if self._done:
            raise errors.AlreadyClosed("blob writer was aborted or previously closed with an error")
        run_precommit(precommit, self.abort)  # before the half-close that makes the server commit
        try:
            if self._future is None:
                # One chunk, or none at all: the empty blob goes as one empty message.
                first, self._first = self._first or b"", None
                self._done = True
                if self._batch is not None:
                    self._digest = self._batch.put_single(first)
                    return self._digest
                response = self._put_single(first)
            else:
                self._enqueue(_END)
                self._done = True
                response = self._future.result()
        except grpc.RpcError as e:
            raise self._service._channel.error(e) from None
        if len(response.digest) != 32:
            raise errors.StorageError(
                f"{self._service.url}: invalid digest length {len(response.digest)} in Put response")
        self._digest = B3Digest(response.digest)
        return self._digest

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._first = None
        if self._future is not None:
            self._future.cancel()
            self._release_consumer()

    def __del__(self) -> None:
        # Dropped without close(): like abort (nothing visible), and frees grpcio's thread.
        if not self._done and self._future is not None:
            self.abort()


class _Upload:
    """One call of a :class:`GrpcBlobBatch` in flight: the blobs it carries and the digests it must answer."""

    __slots__ = ("batched", "chunks", "digests", "future")

    def __init__(self, digests: list[B3Digest], chunks: list[bytes], batched: bool) -> None:
        self.digests = digests
        self.chunks: list[bytes] | None = chunks  # encoded BlobChunks, kept to send again by Put; None once done
        self.batched = batched  # a PutBlobs call (else a one-message Put)
        self.future: grpc.Future | None = None


class GrpcBlobBatch(BlobBatch):
    """Blob uploads that do not wait for each other: what the importer writes through.

    A one-chunk blob (a file of up to 1 MiB) would cost a whole Put call, and a call
    costs the client ~0.9 ms and the daemon ~2 ms of CPU in grpcio's per-call machinery.
    So :meth:`put_single` hashes the chunk locally, returns that digest at once, and
    packs the blob with others into one call of tvixd's BlobBatchService
    (``protos/tvixd/v1/blob_batch.proto``): up to :data:`BATCH_MESSAGE_BYTES` and
    :data:`BATCH_MESSAGE_BLOBS` per call, :data:`BATCH_CALLS` calls in flight. Blobs too
    big for a batch message go as one-message Puts (up to :data:`BATCH_INFLIGHT` in
    flight), and so does every blob once the server answered UNIMPLEMENTED (a tvix-store
    server, or an older tvixd: remembered per channel); a batch call the server refuses
    as too large (RESOURCE_EXHAUSTED naming its message limit, lower than ours) is sent
    again blob by blob, so only the blobs that are too large fail, naming the limit;
    any other RESOURCE_EXHAUSTED (the daemon's disk is full) fails the batch as it is.
    Identical blobs of one batch are uploaded once.

    :meth:`commit` sends the partly filled call, waits for every upload started before
    it and checks that the server named each blob as the client hashed it, so an upload
    error or a wrong digest surfaces there, before the importer makes any directory
    visible; once an upload has failed, the next ``put_single`` raises it too (a daemon
    gone away fails the import at once, not after reading the whole tree). Blobs of
    several chunks are streamed by their writer and closed synchronously, as without
    a batch.

    A blob is visible on the server as soon as its call completes, as with unbatched
    writes: :meth:`abort` cancels the calls still in flight (the server discards
    those) and cannot hide completed ones (complete, verified blobs).
    """

    closes_wait = False  # a one-chunk close() hashes and queues the blob (waits only for a free call)

    def __init__(self, service: GrpcBlobService) -> None:
        super().__init__(service)
        self._put_slots = threading.BoundedSemaphore(BATCH_INFLIGHT)
        self._call_slots = threading.BoundedSemaphore(BATCH_CALLS)
        # Guards _sent, _pack and _pending together: a digest is claimed in _sent only with its
        # upload registered (in _pack or _pending), so commit() never misses an upload whose
        # duplicate's close() already returned.
        self._lock = threading.Lock()
        self._sent: set[B3Digest] = set()
        self._pack = _Upload([], [], batched=True)  # the PutBlobs call being filled
        self._pack_bytes = 0
        self._pending: list[_Upload] = []
        self._failed = False  # an upload not yet committed has failed

    def open_write(self) -> BlobWriter:
        return GrpcBlobWriter(self.service, self)

    def put_single(self, chunk: bytes) -> B3Digest:
        """Queue the upload of a one-message blob (an encoded BlobChunk); return the digest of its data."""
        if self._failed:
            self.commit()  # raises the failure (or sends refused batch calls again as Puts)
        digest = B3Digest.of(decode_blob_chunk(chunk))
        if digest in self._sent:
            return digest
        size = len(chunk) or len(_EMPTY_ENTRY)  # its bytes in a PutBlobsRequest
        if size > BATCH_MESSAGE_BYTES or not self.service._channel.blob_batch:
            self._put_slots.acquire()
            with self._lock:
                if digest in self._sent:
                    self._put_slots.release()
                    return digest
                self._sent.add(digest)
                self._start(_Upload([digest], [chunk], batched=False))
            return digest
        with self._lock:
            if digest in self._sent:
                return digest
            self._sent.add(digest)
            if self._pack_bytes + size > BATCH_MESSAGE_BYTES:
                self._send_pack()
            self._pack.digests.append(digest)
            self._pack.chunks.append(chunk)  # type: ignore[union-attr]
            self._pack_bytes += size
            if len(self._pack.digests) >= BATCH_MESSAGE_BLOBS:
                self._send_pack()
        return digest

    def _send_pack(self) -> None:
        """Start the PutBlobs call of the blobs packed so far (under ``_lock``; waits for a free call)."""
        pack = self._pack
        if not pack.digests:
            return
        self._pack, self._pack_bytes = _Upload([], [], batched=True), 0
        self._call_slots.acquire()  # released by grpcio's thread (_finished), which never takes _lock
        self._start(pack)

    def _start(self, upload: _Upload) -> None:
        """Start ``upload``'s call (its slot is taken) and register it for commit (under ``_lock``)."""
        stubs = self.service._stubs()
        slots = self._call_slots if upload.batched else self._put_slots
        try:
            if upload.batched:
                # A non-empty encoded BlobChunk is exactly one PutBlobsRequest.blobs entry (both: field 1, bytes).
                message = b"".join(c or _EMPTY_ENTRY for c in upload.chunks)  # type: ignore[union-attr]
                upload.future = stubs[4].future(message)
            else:
                upload.future = stubs[3].future(upload.chunks[0])  # type: ignore[index]
        except BaseException:
            slots.release()
            raise
        self._pending.append(upload)
        upload.future.add_done_callback(lambda future: self._finished(future, upload, slots))

    def _finished(self, future: grpc.Future, upload: _Upload, slots: threading.BoundedSemaphore) -> None:
        """An upload ended (on grpcio's channel thread): note a failure, free its bytes and its slot."""
        if future.cancelled() or future.exception() is None:
            upload.chunks = None
        else:
            self._failed = True
        slots.release()

    def commit(self, precommit: Precommit | None = None) -> None:
        """Wait for the uploads started so far; raise the first failure (the server's error, or a digest mismatch)."""
        while True:
            with self._lock:
                self._send_pack()
                pending, self._pending = self._pending, []
                self._failed = False  # a failure among these is raised (or retried) below
            if not pending:
                break
            self._wait(pending)  # may start Puts for refused batch calls: the next round waits for them
        if precommit is not None:
            precommit()

    def _wait(self, pending: list[_Upload]) -> None:
        for i, upload in enumerate(pending):
            try:
                response = upload.future.result()  # type: ignore[union-attr]
            except grpc.RpcError as e:
                if upload.batched and self._put_instead(e, upload):
                    continue
                self._cancel(pending[i:])
                raise self.service._channel.error(e) from None
            got = list(response.digests) if upload.batched else [response.digest]
            if got != upload.digests:
                self._cancel(pending[i:])
                raise errors.StorageError(_mismatch(self.service.url, upload.digests, got))

    def _put_instead(self, e: grpc.RpcError, upload: _Upload) -> bool:
        """Send a refused PutBlobs call's blobs again as Puts, if that can help; False if not."""
        code = e.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            self.service._channel.blob_batch = False  # a server without BlobBatchService: Put from now on
        elif code != grpc.StatusCode.RESOURCE_EXHAUSTED or len(upload.digests) == 1 or not _refused_for_size(e):
            return False
        for digest, chunk in zip(upload.digests, upload.chunks, strict=True):  # type: ignore[arg-type]
            self._put_slots.acquire()
            with self._lock:
                self._start(_Upload([digest], [chunk], batched=False))
        return True

    def abort(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            pack, self._pack, self._pack_bytes = self._pack, _Upload([], [], batched=True), 0
        self._sent.difference_update(pack.digests)
        self._cancel(pending)

    def _cancel(self, uploads: list[_Upload]) -> None:
        """Cancel these uploads and forget them: writing one of those blobs again uploads it again."""
        for upload in uploads:
            upload.future.cancel()  # type: ignore[union-attr]
            self._sent.difference_update(upload.digests)


def _refused_for_size(e: grpc.RpcError) -> bool:
    """Whether a RESOURCE_EXHAUSTED answer refused the call for its size, which smaller calls can help.

    grpcio's own refusal says :data:`GRPC_TOO_LARGE`; a tvixd daemon's names ``max_message_size=``
    (tvixd.server.servicers). A full disk (also RESOURCE_EXHAUSTED) would fail every resent blob
    the same way after uploading them all again.
    """
    details = e.details() or ""
    return GRPC_TOO_LARGE in details or "max_message_size=" in details


def _mismatch(url: str, sent: list[B3Digest], got: list[bytes]) -> str:
    """Why a call's answer does not confirm the blobs sent: the first digest that differs, or the counts."""
    for mine, theirs in zip(sent, got, strict=False):
        if mine != theirs:
            return f"{url}: the server answered {_show_digest(theirs)} for a blob that hashes to {mine}"
    return f"{url}: the server answered {len(got)} digests for {len(sent)} blobs"


def _show_digest(raw: bytes) -> str:
    """A digest from a response for a message: ``b3:...`` if it has the right length, else its length."""
    return str(B3Digest(raw)) if len(raw) == 32 else f"a digest of {len(raw)} bytes"


def _drain(q: queue.Queue[bytes | None]) -> Iterator[bytes]:
    """The Put request stream: encoded chunks from the writer's queue until the end marker.

    Holds only the queue (not the writer), so a dropped writer can be collected.
    """
    while (data := q.get()) is not _END:
        yield data


def from_url(url: str) -> GrpcBlobService:
    """The client for a ``grpc+http(s)://host:port`` or ``grpc+unix:///abs/path`` address (SPEC §7.1)."""
    return GrpcBlobService(url)
