"""The Prometheus endpoint: RPC metrics from the interceptor and store gauges, scraped over HTTP."""

from __future__ import annotations

import socket
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import blake3
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import serve_in_process
from tvixd.metrics import Metrics
from tvixd.proto import rpc_blobstore_pb2 as pb
from tvixd.proto.rpc_blobstore_pb2_grpc import BlobServiceStub
from tvixd.server.interceptors import ObservingInterceptor
from tvixd.store import Store, StoreAddrs


def scrape(address: str) -> dict[tuple[str, frozenset], float]:
    """GET /metrics and index every sample by (name, labels)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_scrape_after_calls(tmp_path: Path):
    with ExitStack() as stack:
        store = Store.open(StoreAddrs(blob=f"fs://{tmp_path / 'blobs'}", directory="memory://", path_info="memory://"))
        stack.callback(store.close)
        metrics = Metrics(store, store_stats_interval=0)
        server, bound = metrics.serve("127.0.0.1:0")
        stack.callback(server.shutdown)
        url = serve_in_process(stack, store, interceptors=[ObservingInterceptor(access_log=False,
                                                                                observers=(metrics,))])
        channel = grpc.insecure_channel("unix:" + url.removeprefix("grpc+unix://"))
        stack.callback(channel.close)
        stub = BlobServiceStub(channel)

        before = scrape(bound)
        assert sample(before, "tvixd_store_blobs") == 0 and sample(before, "tvixd_store_blob_bytes") == 0
        assert sample(before, "tvixd_store_directories") == 0 and sample(before, "tvixd_store_path_infos") == 0

        blobs = [b"x" * 5000, b"hello", b"y" * 100_000]
        sent = 0
        for data in blobs:
            chunk = pb.BlobChunk(data=data)
            sent += chunk.ByteSize()
            assert stub.Put(iter([chunk])).digest == blake3.blake3(data).digest()
        for data in blobs:
            stub.Stat(pb.StatBlobRequest(digest=blake3.blake3(data).digest()))
        with pytest.raises(grpc.RpcError):
            stub.Stat(pb.StatBlobRequest(digest=b"\0" * 32))
        read = list(stub.Read(pb.ReadBlobRequest(digest=blake3.blake3(blobs[2]).digest())))

        after = scrape(bound)
        svc = {"grpc_service": "tvix.store.v1.BlobService"}
        assert sample(after, "grpc_server_handled_total", **svc, grpc_method="Put", grpc_code="OK") == 3
        assert sample(after, "grpc_server_handled_total", **svc, grpc_method="Stat", grpc_code="OK") == 3
        assert sample(after, "grpc_server_handled_total", **svc, grpc_method="Stat", grpc_code="NOT_FOUND") == 1
        assert sample(after, "grpc_server_started_total", **svc, grpc_method="Stat") == 4
        assert sample(after, "grpc_server_handling_seconds_count", **svc, grpc_method="Stat") == 4
        assert sample(after, "grpc_server_handling_seconds_bucket", **svc, grpc_method="Stat", le="+Inf") == 4
        assert sample(after, "tvixd_grpc_server_received_bytes_total", **svc, grpc_method="Put") == sent
        assert sample(after, "tvixd_grpc_server_sent_bytes_total", **svc, grpc_method="Read") == sum(
            c.ByteSize() for c in read)
        assert sample(after, "grpc_server_msg_sent_total", **svc, grpc_method="Read") == len(read)
        assert sample(after, "tvixd_grpc_server_in_flight") == 0
        assert sample(after, "tvixd_store_blobs") == 3
        assert sample(after, "tvixd_store_blob_bytes") == sum(map(len, blobs))
        assert sample(after, "process_resident_memory_bytes") > 0


def test_store_gauges_are_cached(tmp_path: Path):
    with ExitStack() as stack:
        store = Store.open(StoreAddrs(blob="memory://", directory="memory://", path_info="memory://"))
        stack.callback(store.close)
        metrics = Metrics(store, store_stats_interval=3600)
        stack.callback(metrics.store_collector.close)
        server, bound = metrics.serve("127.0.0.1:0")
        stack.callback(server.shutdown)
        assert sample(scrape(bound), "tvixd_store_blobs") == 0
        w = store.blob.open_write()
        w.write(b"new")
        w.close()
        assert sample(scrape(bound), "tvixd_store_blobs") == 0  # within the interval: not recomputed
        assert sample(scrape_registry(store), "tvixd_store_blobs") == 1  # a fresh computation sees it


def scrape_registry(store: Store) -> dict:
    from prometheus_client import generate_latest

    text = generate_latest(Metrics(store, store_stats_interval=0).registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_port_in_use_raises_oserror():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken, pytest.raises(OSError):
        Metrics().serve(f"127.0.0.1:{taken.getsockname()[1]}")
