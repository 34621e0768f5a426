"""The observing interceptor against a real gRPC server: codes, exact byte counts, request ids."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import blake3
import grpc
import pytest

from tests.daemon import serve_in_process
from tvixd.proto import rpc_blobstore_pb2 as pb
from tvixd.proto.rpc_blobstore_pb2_grpc import BlobServiceStub
from tvixd.server.interceptors import CallRecord, Observer, ObservingInterceptor
from tvixd.store import Store, StoreAddrs

STAT = "/tvix.store.v1.BlobService/Stat"
READ = "/tvix.store.v1.BlobService/Read"
PUT = "/tvix.store.v1.BlobService/Put"


class Collect(Observer):
    """Keeps every finished call (a real observer, like the metrics)."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self.in_flight = 0
        self.cond = threading.Condition()

    def started(self, call: CallRecord) -> None:
        with self.cond:
            self.in_flight += 1

    def finished(self, call: CallRecord) -> None:
        with self.cond:
            self.in_flight -= 1
            self.calls.append(call)
            self.cond.notify_all()

    def wait_for(self, n: int) -> list[CallRecord]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.calls) >= n, timeout=60), self.calls
            return list(self.calls)


@pytest.fixture
def served():
    collect = Collect()
    with ExitStack() as stack:
        store = Store.open(StoreAddrs(blob="memory://", directory="memory://", path_info="memory://"))
        stack.callback(store.close)
        url = serve_in_process(stack, store, interceptors=[ObservingInterceptor(access_log=False,
                                                                                observers=(collect,))])
        channel = grpc.insecure_channel("unix:" + url.removeprefix("grpc+unix://"))
        stack.callback(channel.close)
        yield BlobServiceStub(channel), collect


def test_unary_and_streaming_calls_are_counted_exactly(served):
    stub, collect = served
    chunks = [b"a" * 1000, b"b" * 70_000, b"c"]
    requests = [pb.BlobChunk(data=c) for c in chunks]
    put = stub.Put(iter(requests), metadata=[("x-request-id", "client-id-1")])
    digest = blake3.blake3(b"".join(chunks)).digest()
    assert put.digest == digest
    stat_req = pb.StatBlobRequest(digest=digest)
    stat = stub.Stat(stat_req)
    read = list(stub.Read(pb.ReadBlobRequest(digest=digest)))
    assert b"".join(c.data for c in read) == b"".join(chunks)

    put_rec, stat_rec, read_rec = collect.wait_for(3)
    assert (put_rec.method, put_rec.code, put_rec.request_id) == (PUT, grpc.StatusCode.OK, "client-id-1")
    assert put_rec.bytes_in == sum(r.ByteSize() for r in requests) and put_rec.messages_in == 3
    assert put_rec.bytes_out == put.ByteSize() and put_rec.messages_out == 1

    assert (stat_rec.method, stat_rec.code) == (STAT, grpc.StatusCode.OK)
    assert stat_rec.bytes_in == stat_req.ByteSize() and stat_rec.bytes_out == stat.ByteSize()
    assert len(stat_rec.request_id) == 32 and stat_rec.request_id != put_rec.request_id  # a fresh uuid4

    assert read_rec.method == READ and read_rec.code == grpc.StatusCode.OK
    assert read_rec.messages_out == len(read) and read_rec.bytes_out == sum(c.ByteSize() for c in read)
    for rec in (put_rec, stat_rec, read_rec):
        assert rec.peer.startswith("unix:") and rec.duration > 0
    assert collect.in_flight == 0


def test_error_codes_are_recorded(served):
    stub, collect = served
    with pytest.raises(grpc.RpcError) as e:
        stub.Stat(pb.StatBlobRequest(digest=b"\0" * 32))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.Stat(pb.StatBlobRequest(digest=b"short"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Read(pb.ReadBlobRequest(digest=b"\1" * 32)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    codes = [(c.method, c.code) for c in collect.wait_for(3)]
    assert codes == [(STAT, grpc.StatusCode.NOT_FOUND), (STAT, grpc.StatusCode.INVALID_ARGUMENT),
                     (READ, grpc.StatusCode.NOT_FOUND)]


def test_cancelled_stream_is_recorded_once(served):
    stub, collect = served
    data = bytes(range(256)) * (64 * 1024)  # 16 MiB: far more than fits in flow-control windows
    put = stub.Put(iter([pb.BlobChunk(data=data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]))
    collect.wait_for(1)
    stream = stub.Read(pb.ReadBlobRequest(digest=put.digest))
    first = next(stream)
    assert first.data
    stream.cancel()
    calls = collect.wait_for(2)
    read = calls[1]
    assert read.method == READ and read.code == grpc.StatusCode.CANCELLED
    assert 0 < read.bytes_out < len(data)
    time.sleep(0.5)  # give a (wrong) second report the chance to show up
    assert len(collect.calls) == 2 and collect.in_flight == 0
