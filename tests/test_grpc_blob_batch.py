"""tvixd's BlobBatchService (PutBlobs) against real daemons, and the client batch that packs blobs into it.

The raw-stub tests check the wire (digests, status codes, messages naming the field or the limit,
nothing visible after a refused or cancelled call); the client tests check what
``tvixd.blobservice.grpc.GrpcBlobBatch`` sends (from the daemon's access log) and its fallback to
Put against a server without the service.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import blake3
import grpc
import pytest

from tests.daemon import short_socket_dir, start_daemon
from tvixd import errors
from tvixd.blobservice.from_addr import from_addr
from tvixd.proto.blob_batch_pb2 import PutBlobsRequest
from tvixd.proto.blob_batch_pb2_grpc import BlobBatchServiceStub
from tvixd.proto.rpc_blobstore_pb2 import ReadBlobRequest
from tvixd.proto.rpc_blobstore_pb2_grpc import BlobServiceStub

PUT = "/tvix.store.v1.BlobService/Put"
PUT_BLOBS = "/tvixd.v1.BlobBatchService/PutBlobs"
MEMORY = ("--blob-service-addr", "memory://", "--directory-service-addr", "memory://",
          "--path-info-service-addr", "memory://")


def b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def read(channel: grpc.Channel, digest: bytes) -> bytes | None:
    """A blob's bytes through BlobService/Read, or None if the daemon does not have it."""
    try:
        return b"".join(c.data for c in BlobServiceStub(channel).Read(ReadBlobRequest(digest=digest)))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
        return None


def calls(daemon, method: str) -> list[dict]:
    """The access-log lines of ``method`` calls (stop the daemon first: then every line is written)."""
    return [e for e in daemon.events() if e.get("event") == "rpc" and e.get("method") == method]


@pytest.fixture(scope="module", params=["fs", "memory"])
def daemon(request, tmp_path_factory):
    """A daemon with the embedded fs:// + sqlite store, or with memory:// backends."""
    args = MEMORY if request.param == "memory" else ()
    with start_daemon(tmp_path_factory.mktemp(f"blob-batch-{request.param}"), *args) as d:
        yield d


@pytest.fixture
def channel(daemon):
    with grpc.insecure_channel(daemon.target) as ch:
        yield ch


# --- the wire -------------------------------------------------------------------------------------------


def test_round_trip_over_several_messages(channel):
    """Digests in the order sent (duplicates and the empty blob included); every blob readable after."""
    blobs = [os.urandom(n) for n in (1, 100, 70_000)]
    messages = [PutBlobsRequest(blobs=[blobs[0], b"", blobs[1]]), PutBlobsRequest(blobs=[blobs[2], blobs[0]])]
    response = BlobBatchServiceStub(channel).PutBlobs(iter(messages))
    sent = [b for m in messages for b in m.blobs]
    assert list(response.digests) == [b3(b) for b in sent]
    for data in sent:
        assert read(channel, b3(data)) == data


def test_empty_blob_alone(channel):
    response = BlobBatchServiceStub(channel).PutBlobs(iter([PutBlobsRequest(blobs=[b""])]))
    assert list(response.digests) == [b3(b"")]
    assert read(channel, b3(b"")) == b""


def test_message_without_blobs_is_invalid_argument(channel):
    blob = os.urandom(64)
    for messages in ([PutBlobsRequest(blobs=[blob]), PutBlobsRequest()], []):
        with pytest.raises(grpc.RpcError) as e:
            BlobBatchServiceStub(channel).PutBlobs(iter(messages))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "PutBlobsRequest.blobs" in e.value.details()
    # Both backends' batches make a call's blobs visible only at its end: the refused call stored nothing.
    assert read(channel, b3(blob)) is None


def test_undecodable_message_is_invalid_argument(channel):
    raw = channel.unary_unary(PUT_BLOBS, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x0a\x05abc")  # an entry announcing 5 bytes, carrying 3
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed tvixd.v1.PutBlobsRequest" in e.value.details()


def test_limits_are_resource_exhausted_naming_them(tmp_path):
    """A message over --max-message-size, and more blobs than an answer under it can name: nothing stored."""
    with start_daemon(tmp_path, "--max-message-size", "1KiB") as d, grpc.insecure_channel(d.target) as ch:
        stub = BlobBatchServiceStub(ch)
        fits = os.urandom(100)
        with pytest.raises(grpc.RpcError) as e:
            stub.PutBlobs(iter([PutBlobsRequest(blobs=[fits]), PutBlobsRequest(blobs=[os.urandom(1100)])]))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_message_size=1024" in e.value.details()
        # 1024 // 34 = 30 digests fit an answer: 31 blobs (in small messages) are too many.
        many = [i.to_bytes(2, "big") for i in range(31)]
        with pytest.raises(grpc.RpcError) as e:
            stub.PutBlobs(iter([PutBlobsRequest(blobs=many[:16]), PutBlobsRequest(blobs=many[16:])]))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more than 30 blobs" in e.value.details() and "max_message_size=1024" in e.value.details()
        assert all(read(ch, b3(b)) is None for b in [fits, *many])
        assert list(stub.PutBlobs(iter([PutBlobsRequest(blobs=many[:30])])).digests) == [b3(b) for b in many[:30]]


def test_cancelled_call_leaves_nothing_visible(tmp_path):
    """The client goes away after its first message, which the daemon has written: nothing is committed."""
    from tests.test_blobservice import temp_files

    blob = os.urandom(5000)
    leave = threading.Event()

    def messages():
        yield PutBlobsRequest(blobs=[blob])
        leave.wait(60)

    with start_daemon(tmp_path) as d, grpc.insecure_channel(d.target) as ch:
        tmp_dir = d.state_dir / "blobs" / "tmp"
        future = BlobBatchServiceStub(ch).PutBlobs.future(messages())
        deadline = time.monotonic() + 60
        while not temp_files(tmp_dir, d.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # until the daemon holds the blob in a temp file, awaiting the call's end
        assert temp_files(tmp_dir, d.proc.pid), "the daemon never wrote the first message's blob"
        future.cancel()
        leave.set()
        assert d.stop() == 0
    assert [c["code"] for c in calls(d, PUT_BLOBS)] == ["CANCELLED"]
    hex_digest = b3(blob).hex()
    assert not (d.state_dir / "blobs" / hex_digest[:2] / hex_digest[2:]).exists()
    assert os.listdir(tmp_dir) == []


def test_access_log_and_metrics(tmp_path):
    """A PutBlobs call is logged and counted like the tvix.store.v1 calls."""
    import urllib.request

    with start_daemon(tmp_path, "--metrics-listen-address", "127.0.0.1:0") as d, \
            grpc.insecure_channel(d.target) as ch:
        message = PutBlobsRequest(blobs=[b"one", b"two"])
        BlobBatchServiceStub(ch).PutBlobs(iter([message, message]))
        [address] = [e["address"] for e in d.events() if e.get("event") == "metrics listening"]
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as r:
            text = r.read().decode()
        assert d.stop() == 0
    [line] = calls(d, PUT_BLOBS)
    assert (line["code"], line["messages_in"], line["bytes_in"], line["bytes_out"]) == ("OK", 2, 20, 4 * 34)
    assert ('grpc_server_handled_total{grpc_code="OK",grpc_method="PutBlobs",grpc_service="tvixd.v1.BlobBatchService"}'
            ' 1.0') in text


# --- the client batch -------------------------------------------------------------------------------------


def test_client_packs_blobs_up_to_the_message_size(tmp_path, monkeypatch):
    """A blob filling a batch message exactly is batched; one byte more and it goes by Put."""
    import tvixd.blobservice.grpc as grpc_blobs

    monkeypatch.setattr(grpc_blobs, "BATCH_MESSAGE_BYTES", 4096)
    exact = os.urandom(4096 - 3)  # entry: tag, 2-byte length, bytes = 4096
    over = os.urandom(4096 - 2)
    small = [os.urandom(1000) for _ in range(5)]  # 1003 bytes each: four fill a message, the fifth starts one
    with start_daemon(tmp_path) as d:
        service = from_addr(d.addr)
        batch = service.batch()
        digests = []
        for data in [exact, over, *small]:
            w = batch.open_write()
            w.write(data)
            digests.append(w.close())
        batch.commit()
        assert digests == [b3(b) for b in [exact, over, *small]]
        for data, digest in zip([exact, over, *small], digests, strict=True):
            assert service.read_verified(digest, len(data)) == data
        service.close()
        assert d.stop() == 0
    assert sorted(c["bytes_in"] for c in calls(d, PUT_BLOBS)) == [1003, 4 * 1003, 4096]  # lines: in end order
    assert [c["bytes_in"] for c in calls(d, PUT)] == [4096 - 2 + 3]


def test_client_falls_back_to_put_without_the_service():
    """Against a server with only tvix.store.v1's BlobService: Puts, and PutBlobs is tried once per channel."""
    from tvixd.server.interceptors import Observer, ObservingInterceptor
    from tvixd.server.servicers import SERVICE_DESCRIPTORS, BlobServicer, generic_handler
    from tvixd.store import Store, StoreAddrs

    finished: list[tuple[str, str]] = []
    unknown: list[str] = []

    class Record(Observer):
        def finished(self, call) -> None:
            finished.append((call.method, call.code.name))

    class Unknown(grpc.GenericRpcHandler):
        """Consulted for methods no other handler serves: notes them, and grpc answers UNIMPLEMENTED."""

        def service(self, handler_call_details):
            unknown.append(handler_call_details.method)

    with ExitStack() as stack:
        store = stack.enter_context(Store.open(StoreAddrs(blob="memory://", directory="memory://",
                                                          path_info="memory://")))
        service = bare_server(stack, [generic_handler(SERVICE_DESCRIPTORS[0], BlobServicer(store), 1 << 20),
                                      Unknown()], interceptors=[ObservingInterceptor(False, (Record(),))])
        blobs = [os.urandom(n) for n in (10, 2000, 0)]
        for round_ in range(2):
            batch = service.batch()
            for data in blobs:
                w = batch.open_write()
                w.write(data + bytes([round_]))
                w.close()
            batch.commit()
        for round_ in range(2):
            for data in blobs:
                blob = data + bytes([round_])
                assert store.blob.read_verified(b3(blob), len(blob)) == blob
    assert unknown == [PUT_BLOBS]
    assert finished == [(PUT, "OK")] * 6  # every blob once


def bare_server(stack: ExitStack, handlers: list[grpc.GenericRpcHandler], interceptors: tuple = ()):
    """A plain grpcio server with only ``handlers``, on a Unix socket until ``stack`` closes: a blob client of it."""
    from concurrent import futures

    pool = futures.ThreadPoolExecutor(max_workers=4)
    stack.callback(pool.shutdown)
    server = grpc.server(pool, interceptors=interceptors)
    server.add_generic_rpc_handlers(handlers)
    sock = short_socket_dir(stack) / "bare.sock"
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    stack.callback(server.stop, 0)
    service = from_addr(f"grpc+unix://{sock}")
    stack.callback(service.close)
    return service


def test_client_checks_the_digests_answered():
    """A server naming the blobs wrongly (here: a bare handler answering them reversed) fails the commit."""
    from tvixd.proto.blob_batch_pb2 import PutBlobsResponse

    def put_blobs(request: PutBlobsRequest, context) -> PutBlobsResponse:
        return PutBlobsResponse(digests=[b3(b) for b in reversed(request.blobs)])

    handler = grpc.method_handlers_generic_handler("tvixd.v1.BlobBatchService", {
        "PutBlobs": grpc.unary_unary_rpc_method_handler(
            put_blobs, request_deserializer=PutBlobsRequest.FromString,
            response_serializer=PutBlobsResponse.SerializeToString)})
    with ExitStack() as stack:
        service = bare_server(stack, [handler])
        batch = service.batch()
        for data in (b"first", b"second"):
            w = batch.open_write()
            w.write(data)
            w.close()
        with pytest.raises(errors.StorageError, match="for a blob that hashes to b3:") as e:
            batch.commit()
        assert "answered" in str(e.value)


def test_proxy_daemon_batches_upstream(tmp_path):
    """A daemon whose blob service is another daemon forwards a PutBlobs call as PutBlobs (not Puts)."""
    with start_daemon(tmp_path / "a") as a:
        with start_daemon(tmp_path / "b", "--blob-service-addr", a.addr, "--directory-service-addr", "memory://",
                          "--path-info-service-addr", "memory://") as b, grpc.insecure_channel(b.target) as ch:
            blobs = [os.urandom(300) for _ in range(3)]
            response = BlobBatchServiceStub(ch).PutBlobs(iter([PutBlobsRequest(blobs=blobs)]))
            assert list(response.digests) == [b3(x) for x in blobs]
            assert all(read(ch, b3(x)) == x for x in blobs)
        assert a.stop() == 0
    assert [c["messages_in"] for c in calls(a, PUT_BLOBS)] == [1]
    assert calls(a, PUT) == []


def test_fs_batch_precommit_failure_discards(tmp_path: Path):
    """BlobBatch.commit(precommit): a raising check discards every blob of the batch (fs:// defers visibility)."""
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    batch = service.batch()
    w = batch.open_write()
    w.write(b"never visible")
    digest = w.close()

    def refuse() -> None:
        raise errors.StorageError("client went away")

    with pytest.raises(errors.StorageError, match="went away"):
        batch.commit(precommit=refuse)
    assert not service.has(digest)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    service.close()


def test_fs_batch_precommit_runs_with_only_stored_blobs(tmp_path: Path):
    """A batch whose blobs were all stored already still runs the check (a PutBlobs of known blobs is answered
    only if its client stayed)."""
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    with service.open_write() as w:
        w.write(b"stored before")
        digest = w.close()
    batch = service.batch()
    with batch.open_write() as w:
        w.write(b"stored before")
        assert w.close() == digest

    def refuse() -> None:
        raise errors.StorageError("client went away")

    with pytest.raises(errors.StorageError, match="went away"):
        batch.commit(precommit=refuse)
    assert service.has(digest)
    service.close()


def test_client_does_not_resend_blob_by_blob_to_a_full_disk(tmp_path, small_disk):
    """A PutBlobs call refused because the daemon's disk is full (RESOURCE_EXHAUSTED "no space left") fails
    the commit with that error: not sent again blob by blob as a call refused for its size is (the daemon's
    blobs on a 1 MiB tmpfs)."""
    with start_daemon(tmp_path, "--blob-service-addr", f"fs://{small_disk}") as d:
        service = from_addr(d.addr)
        batch = service.batch()
        with pytest.raises(errors.ResourceExhausted, match="no space left"):
            for _ in range(40):  # 2.4 MB in 60 KB blobs: several PutBlobs calls, the disk holds 1 MiB
                w = batch.open_write()
                w.write(os.urandom(60_000))
                w.close()
            batch.commit()
        batch.abort()
        service.close()
        assert d.stop() == 0
    refused = [c for c in calls(d, PUT_BLOBS) if c["code"] == "RESOURCE_EXHAUSTED"]
    assert refused, calls(d, PUT_BLOBS)
    assert calls(d, PUT) == []
