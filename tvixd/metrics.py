"""Prometheus metrics: per-method RPC counts, latencies, codes and bytes, plus store gauges.

Off unless ``[metrics] listen_address`` (``--metrics-listen-address``) is set. RPC metrics come from
the same interceptor as the access log (:mod:`tvixd.server.interceptors`) and use the names of
go-grpc-prometheus (``grpc_server_handled_total{grpc_service,grpc_method,grpc_code}``, ...) so
existing dashboards work; byte counters are ours (``tvixd_grpc_server_*_bytes_total``).

Store gauges (``tvixd_store_blobs``, ``tvixd_store_blob_bytes``, ``tvixd_store_directories``,
``tvixd_store_path_infos``) are recomputed every ``[metrics] store_stats_interval`` seconds: a service
may offer ``stats() -> dict`` (``count``, and ``bytes`` for blobs); the ``fs://`` blob directory is
walked (scandir, no reads); memory backends are counted; SQLite backends are counted with one
``SELECT count(*)`` on their file (tables ``directories``, ``path_infos`` of :mod:`tvixd.sqlite`).
Remote (``grpc+``) services have no gauges. How long the last
computation took, and when, are gauges too, so an expensive walk is visible.
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

    def __init__(self, store: Any = None, store_stats_interval: float = 60.0) -> None:
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
        self._by_method: dict[str, tuple[Any, ...]] = {}
        self._handled: dict[tuple[str, Any], Any] = {}
        self.store_collector: StoreCollector | None = None
        if store is not None:
            self.store_collector = StoreCollector(store, store_stats_interval)
            r.register(self.store_collector)

    def _children(self, method: str) -> tuple[Any, ...]:
        """The per-method metric children, looked up once per method (``labels()`` costs a lock + dict)."""
        children = self._by_method.get(method)
        if children is None:
            labels = _split(method)
            children = (self.started_total.labels(*labels), self.handling_seconds.labels(*labels),
                        self.msg_received.labels(*labels), self.msg_sent.labels(*labels),
                        self.bytes_received.labels(*labels), self.bytes_sent.labels(*labels), labels)
            self._by_method[method] = children
        return children

    def started(self, call: CallRecord) -> None:
        self._children(call.method)[0].inc()
        self.in_flight.inc()

    def finished(self, call: CallRecord) -> None:
        _, seconds, msg_in, msg_out, bytes_in, bytes_out, labels = self._children(call.method)
        self.in_flight.dec()
        key = (call.method, call.code)
        handled = self._handled.get(key)
        if handled is None:
            handled = self._handled[key] = self.handled_total.labels(*labels, call.code.name)
        handled.inc()
        seconds.observe(call.duration)
        msg_in.inc(call.messages_in)
        msg_out.inc(call.messages_out)
        bytes_in.inc(call.bytes_in)
        bytes_out.inc(call.bytes_out)

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
    """The store gauges, recomputed every ``interval`` seconds in a background thread (0: on every scrape).

    Counting can be slow on a big store (the ``fs://`` walk stats every blob: ~25 µs per blob here,
    see BENCHMARKS.md), so scrapes never wait for it except for the very first computation.
    """

    def __init__(self, store: Any, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._lock = threading.Lock()
        self._families: list[GaugeMetricFamily] | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        if interval > 0:
            threading.Thread(target=self._loop, name="store-stats", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                families = self._compute()
            except Exception as e:  # a failing count must not kill the thread: log, keep the old values
                import structlog

                structlog.get_logger("tvixd.metrics").warning("store gauges failed", error=str(e))
            else:
                with self._lock:
                    self._families = families
            self._ready.set()
            if self._stop.wait(self.interval):
                return

    def close(self) -> None:
        self._stop.set()

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
        out.append(GaugeMetricFamily("tvixd_store_stats_timestamp_seconds",
                                     "When the store gauges were computed (Unix time).", value=time.time()))
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.interval <= 0:
            yield from self._compute()
            return
        self._ready.wait(30)
        with self._lock:
            families = list(self._families or ())
        yield from families

    def describe(self) -> list[Any]:
        return []  # computed lazily; do not scrape the store when the collector is registered
