"""The quick pool (tvixd.server.servicers.quick_pool): local point lookups run on it, everything else does not."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import grpc
import pytest

from tests.daemon import serve_in_process, start_daemon
from tvixd.server.interceptors import ObservingInterceptor
from tvixd.server.servicers import THREAD_POOL_ATTR, generic_handlers, quick_pool
from tvixd.store import Store, StoreAddrs


def quick_threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.name.startswith("tvixd-quick")}


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def pools(store: Store, pool: object) -> dict[str, object]:
    """Which pool each method's behaviour asks grpcio for (None: the server's)."""
    handlers = generic_handlers(store, 1 << 20, pool)  # type: ignore[arg-type]
    out = {}
    for service, methods in {"tvix.store.v1.BlobService": ("Stat", "Read", "Put"),
                             "tvix.store.v1.DirectoryService": ("Get", "Put"),
                             "tvix.store.v1.PathInfoService": ("Get", "Put", "CalculateNAR", "List")}.items():
        for name in methods:
            method = f"/{service}/{name}"
            [handler] = [h for h in (g.service(_Details(method)) for g in handlers) if h is not None]
            behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
            out[method] = getattr(behaviour, THREAD_POOL_ATTR, None)
    return out


def test_only_local_point_lookups_ask_for_the_quick_pool(tmp_path):
    pool = quick_pool()
    try:
        with Store.open(StoreAddrs(blob=f"fs://{tmp_path}/blobs", directory="memory://", path_info="memory://")) as s:
            chosen = pools(s, pool)
        assert {m for m, p in chosen.items() if p is pool} == {
            "/tvix.store.v1.BlobService/Stat", "/tvix.store.v1.PathInfoService/Get"}
        assert {m for m, p in chosen.items() if p is not pool} == {m for m, p in chosen.items() if p is None}
        # A proxy: its lookups wait for another daemon, so they stay on the server's pool.
        with start_daemon(tmp_path / "upstream") as upstream, Store.open(StoreAddrs.daemon(upstream.addr)) as proxy:
            assert set(pools(proxy, pool).values()) == {None}
    finally:
        pool.shutdown()


@pytest.mark.parametrize("observed", [False, True], ids=["bare", "interceptor"])
def test_stat_and_path_info_get_are_served_by_quick_threads(observed):
    """Through a real server (with the daemon's interceptor or not): grpcio honours the choice, answers stay right."""
    from tvixd.proto.pathinfo_pb2 import PathInfo
    from tvixd.proto.rpc_blobstore_pb2 import BlobChunk, BlobMeta, PutBlobResponse, StatBlobRequest
    from tvixd.proto.rpc_pathinfo_pb2 import GetPathInfoRequest

    with ExitStack() as stack:
        store = stack.enter_context(Store.open(StoreAddrs("memory://", "memory://", "memory://")))
        interceptor = ObservingInterceptor(access_log=False)
        url = serve_in_process(stack, store, interceptors=[interceptor] if observed else [])
        channel = stack.enter_context(grpc.insecure_channel("unix:" + url.removeprefix("grpc+unix://")))
        put = channel.stream_unary("/tvix.store.v1.BlobService/Put", BlobChunk.SerializeToString,
                                   PutBlobResponse.FromString)
        stat = channel.unary_unary("/tvix.store.v1.BlobService/Stat", StatBlobRequest.SerializeToString,
                                   BlobMeta.FromString)
        get = channel.unary_unary("/tvix.store.v1.PathInfoService/Get", GetPathInfoRequest.SerializeToString,
                                  PathInfo.FromString)
        before = quick_threads()
        digest = put(iter([BlobChunk(data=b"quick")])).digest
        assert quick_threads() == before  # a Put is not a point lookup
        meta = stat(StatBlobRequest(digest=digest, include_chunks=True))
        assert meta.chunks[0].size == 5
        with pytest.raises(grpc.RpcError) as e:
            stat(StatBlobRequest(digest=bytes(32)))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            get(GetPathInfoRequest(by_output_hash=bytes(20)))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert quick_threads() - before  # the lookups ran on a quick thread
    assert not quick_threads() - before  # stopping the server stopped them
