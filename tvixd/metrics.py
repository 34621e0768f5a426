"""Prometheus metrics: per-method RPC counts, latencies, codes and bytes, plus store gauges.

Off unless ``[metrics] listen_address`` (``--metrics-listen-address``) is set. RPC metrics come from
the same interceptor as the access log (:mod:`tvixd.server.interceptors`) and use the names of
go-grpc-prometheus (``grpc_server_handled_total{grpc_service,grpc_method,grpc_code}``, ...) so
existing dashboards work; byte counters are ours (``tvixd_grpc_server_*_bytes_total``).

Store gauges (``tvixd_store_blobs``, ``tvixd_store_blob_bytes``, ``tvixd_store_directories``,
``tvixd_store_path_infos``) are computed when scraped and cached for ``cache_seconds``: a service
may offer ``stats() -> dict`` (``count``, and ``bytes`` for blobs); the ``fs://`` blob directory is
walked (scandir, no reads); memory backends are counted; SQLite backends are counted with one
``SELECT count(*)`` on their file (tables ``directories``, ``path_infos`` of :mod:`tvixd.sqlite`).
Remote (``grpc+``) services have no gauges. How long the last
computation took is itself a gauge, so an expensive walk is visible.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tvixd.server.interceptors import CallRecord, Observer

# Latency buckets (seconds): from sub-millisecond Stat calls to minute-long 1 GiB transfers.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def _split(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> ``("pkg.Service", "Method")``."""
    _, service, name = ([*method.split("/", 2), "", ""])[:3]
    return service or "unknown", name or "unknown"


class Metrics(Observer):
    """The daemon's metrics in their own registry (only what tvixd reports, plus process stats)."""

    def __init__(self, store: Any = None, cache_seconds: float = 30.0) -> None:
        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        labels = ["grpc_service", "grpc_method"]
        r = self.registry
        self.started_total = Counter("grpc_server_started", "RPCs started on the server.", labels, registry=r)
        self.handled_total = Counter("grpc_server_handled", "RPCs completed on the server, by status code.",
                                     [*labels, "grpc_code"], registry=r)
        self.handling_seconds = Histogram("grpc_server_handling_seconds", "RPC latency until the status was set.",
                                          labels, buckets=BUCKETS, registry=r)
        self.msg_received = Counter("grpc_server_msg_received", "Request messages received.", labels, registry=r)
        self.msg_sent = Counter("grpc_server_msg_sent", "Response messages sent.", labels, registry=r)
        self.bytes_received = Counter("tvixd_grpc_server_received_bytes", "Serialized request bytes received.",
                                      labels, registry=r)
        self.bytes_sent = Counter("tvixd_grpc_server_sent_bytes", "Serialized response bytes sent.", labels,
                                  registry=r)
        self.in_flight = Gauge("tvixd_grpc_server_in_flight", "RPCs currently being handled.", registry=r)
        if store is not None:
            r.register(StoreCollector(store, cache_seconds))

    def started(self, call: CallRecord) -> None:
        self.started_total.labels(*_split(call.method)).inc()
        self.in_flight.inc()

    def finished(self, call: CallRecord) -> None:
        labels = _split(call.method)
        self.in_flight.dec()
        self.handled_total.labels(*labels, call.code.name).inc()
        self.handling_seconds.labels(*labels).observe(call.duration)
        self.msg_received.labels(*labels).inc(call.messages_in)
        self.msg_sent.labels(*labels).inc(call.messages_out)
        self.bytes_received.labels(*labels).inc(call.bytes_in)
        self.bytes_sent.labels(*labels).inc(call.bytes_out)

    def serve(self, address: str) -> tuple[Any, str]:
        """Serve ``GET /metrics`` on ``host:port`` in a daemon thread; returns (server, bound host:port).

        Raises OSError (e.g. address in use) for the caller to report in one line.
        """
        from prometheus_client import start_http_server

        from tvixd.config import parse_listen_address

        _, host, port = parse_listen_address(address, unix=False)
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        return server, f"{shown}:{bound}"


# --- store gauges ------------------------------------------------------------------------------


def _walk_fs_blobs(root: str) -> tuple[int, int]:
    """Count the blob files under an ``fs://`` root (fan-out dirs ``xx/``; ``tmp/`` is not blobs)."""
    count = size = 0
    try:
        fanouts = list(os.scandir(root))
    except FileNotFoundError:
        return 0, 0
    for fan in fanouts:
        if len(fan.name) != 2 or not fan.is_dir(follow_symlinks=False):
            continue
        with os.scandir(fan.path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    count += 1
                    size += entry.stat(follow_symlinks=False).st_size
    return count, size


def _sqlite_count(path: str, tables: tuple[str, ...]) -> int | None:
    """``count(*)`` of the first of ``tables`` that exists in the SQLite file, read-only."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in tables:
            if table in names:
                return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        return None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def service_stats(service: Any, kind: str) -> dict[str, int] | None:
    """``{"count": n[, "bytes": b]}`` for a blob/directory/path_info service, or None if unknown."""
    stats = getattr(service, "stats", None)
    if callable(stats):
        return stats()
    name = type(service).__name__
    if kind == "blob" and name == "FsBlobService":
        count, size = _walk_fs_blobs(service.root)
        return {"count": count, "bytes": size}
    if name == "MemoryBlobService":
        with service._lock:
            return {"count": len(service._blobs), "bytes": sum(map(len, service._blobs.values()))}
    if name == "MemoryDirectoryService":
        with service._lock:
            return {"count": len(service._dirs)}
    if name == "MemoryPathInfoService":
        with service._lock:
            return {"count": len(service._infos)}
    # sqlite:// (tvixd.sqlite.SqliteDatabase at .db): its own read-only connection, one count(*).
    path = getattr(getattr(service, "db", None), "path", None)
    if isinstance(path, str | os.PathLike) and os.path.isfile(path):
        count = _sqlite_count(os.fspath(path), ("directories",) if kind == "directory" else ("path_infos",))
        return None if count is None else {"count": count}
    return None


class StoreCollector(Collector):
    """The store gauges, recomputed at most every ``cache_seconds`` (on the scrape that needs them)."""

    def __init__(self, store: Any, cache_seconds: float) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._at = -1e18
        self._families: list[GaugeMetricFamily] = []

    def _compute(self) -> list[GaugeMetricFamily]:
        start = time.perf_counter()
        out = []
        blob = service_stats(self.store.blob, "blob")
        if blob is not None:
            out.append(GaugeMetricFamily("tvixd_store_blobs", "Blobs in the store.", value=blob["count"]))
            if "bytes" in blob:
                out.append(GaugeMetricFamily("tvixd_store_blob_bytes", "Bytes of all blobs.", value=blob["bytes"]))
        directory = service_stats(self.store.directory, "directory")
        if directory is not None:
            out.append(GaugeMetricFamily("tvixd_store_directories", "Directories in the store.",
                                         value=directory["count"]))
        path_info = service_stats(self.store.path_info, "path_info")
        if path_info is not None:
            out.append(GaugeMetricFamily("tvixd_store_path_infos", "PathInfos in the store.",
                                         value=path_info["count"]))
        out.append(GaugeMetricFamily("tvixd_store_stats_duration_seconds",
                                     "How long computing the store gauges took.", value=time.perf_counter() - start))
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.cache_seconds:
                self._families = self._compute()
                self._at = now
            families = list(self._families)
        yield from families

    def describe(self) -> list[Any]:
        return []  # computed lazily; do not scrape the store when the collector is registered
