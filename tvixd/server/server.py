"""Build the tvixd gRPC server: listeners, TLS, tvix-store's three services + BlobBatchService, reflection, health."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import structlog
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tvixd import errors
from tvixd.server.listen import family_available, parse_listen_address
from tvixd.server.servicers import SERVICE_NAMES, generic_handlers, quick_pool
from tvixd.store import Store

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest request message accepted by default: big enough for a Directory with ~500k entries."""

HANDLER_DRAIN_SECONDS = 5.0
"""How long ``TvixdServer.stop`` waits, after grpc's own stop, for handler threads still finishing."""

DEFAULT_WORKERS = 32
"""Worker threads; each streaming call holds one for its duration (16 concurrent clients need 16)."""

_log = structlog.get_logger("tvixd.server")


@dataclass(frozen=True)
class TlsConfig:
    """PEM-encoded server certificate chain and private key."""

    cert_chain: bytes
    private_key: bytes


def _prepare_unix_socket(address: str) -> None:
    """Remove a stale socket file left by a crashed daemon; refuse to steal a live one."""
    path = address[len("unix:"):]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise errors.InvalidRequest(f"listen address {address!r}: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: stale
    else:
        raise errors.InvalidRequest(f"listen address {address!r}: another server is listening on {path}")
    finally:
        probe.close()


class _ReflectionPool:
    """The default descriptor pool, plus method symbols (``pkg.Service.Method``).

    Python's pool cannot find the file containing a method, so without this
    ``grpcurl describe tvix.store.v1.BlobService.Put`` fails "Symbol not found".
    """

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def FindFileContainingSymbol(self, name: str):
        try:
            return self._pool.FindFileContainingSymbol(name)
        except KeyError:
            service, _, method = name.rpartition(".")
            try:
                if method and self._pool.FindServiceByName(service).methods_by_name.get(method):
                    return self._pool.FindFileContainingSymbol(service)
            except KeyError:
                pass
            raise

    def __getattr__(self, attr: str):
        return getattr(self._pool, attr)


@dataclass
class TvixdServer:
    """A built (not yet started) server and what it is bound to."""

    server: grpc.Server
    health: health.HealthServicer
    quick: futures.ThreadPoolExecutor | None = None  # servicers.quick_pool: stopped with the server
    pool: futures.ThreadPoolExecutor | None = None  # the server's own worker pool
    addresses: list[str] = field(default_factory=list)
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Start serving and report SERVING for every service."""
        self.server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight calls finish within ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        # Every call is over on the wire now, but a handler may still be finishing (a cancelled upload
        # in its cancel grace, its access line not yet submitted): wait for the threads, so whoever
        # closes the access log after stop() gets every line. Bounded: a handler stuck on an upstream
        # (proxy mode) must not keep a stopping daemon alive.
        for pool in (self.pool, self.quick):
            if pool is not None:
                drain = threading.Thread(target=pool.shutdown, name="tvixd-drain", daemon=True)
                drain.start()
                drain.join(HANDLER_DRAIN_SECONDS)
                if drain.is_alive():
                    _log.warning("handlers still running after the server stopped", waited_s=HANDLER_DRAIN_SECONDS)
        self._stopped.set()


def build_server(
    store: Store,
    listen_addresses: Sequence[str],
    workers: int = DEFAULT_WORKERS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    tls: TlsConfig | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    max_concurrent_rpcs: int | None = None,
    reuse_port: bool = False,
) -> TvixdServer:
    """A server for ``store`` bound to every listen address (``parse_listen_address`` syntax).

    ``interceptors`` see every call (access log, metrics). ``max_concurrent_rpcs``
    (default: no limit) makes further calls fail RESOURCE_EXHAUSTED. ``reuse_port`` is for the
    serving processes of a multi-process daemon, which share their ports (the supervisor checked
    that nobody else listens there: ``listen.resolve_shared``). Raises
    ``InvalidRequest`` naming the address when one cannot be bound.
    """
    if workers < 1:
        raise errors.InvalidRequest(f"workers must be at least 1, got {workers}")
    if max_message_bytes < 1024:
        raise errors.InvalidRequest(f"max message size must be at least 1024 bytes, got {max_message_bytes}")
    specs = [spec for value in listen_addresses for spec in parse_listen_address(value)]
    if not specs:
        raise errors.InvalidRequest("no listen address given")
    options = [
        # Our Decoder enforces max_message_bytes with a message naming the setting; grpc core's
        # cap (whose message cannot say which setting to change) only stops far larger messages
        # before they are buffered whole. Clients of ours annotate its message (channel.py).
        ("grpc.max_receive_message_length", min(max(4 * max_message_bytes, max_message_bytes + 64 * 2**20),
                                                2**31 - 1)),
        ("grpc.max_send_message_length", -1),
        # Without this Linux grpc sets SO_REUSEPORT, and a second daemon on the same port would
        # silently share it instead of failing.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tvixd-grpc")
    server = grpc.server(
        pool,
        interceptors=list(interceptors),
        options=options,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    quick = quick_pool()
    server.add_generic_rpc_handlers(generic_handlers(store, max_message_bytes, quick))
    health_servicer = health.HealthServicer()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server, pool=_ReflectionPool()
    )
    credentials = grpc.ssl_server_credentials([(tls.private_key, tls.cert_chain)]) if tls else None
    built = TvixdServer(server=server, health=health_servicer, quick=quick, pool=pool)
    ephemeral_localhost: int | None = None
    for spec in specs:
        address = spec.address
        if address.startswith("unix:"):
            _prepare_unix_socket(address)
        elif address.endswith(":0") and spec.optional and ephemeral_localhost:
            # localhost:0 → the same free port on both loopbacks.
            address = f"{address[:-2]}:{ephemeral_localhost}"
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError as e:
            port = 0
            error = str(e)
        else:
            error = "" if port else "bind failed"
        if not port:
            if spec.optional and not family_available(address):
                _log.warning("IP family unavailable, not listening on it", address=address, error=error)
                continue
            raise errors.InvalidRequest(f"cannot listen on {address}: {error or 'bind failed'} (address in use?)")
        if address.startswith("unix:"):
            built.addresses.append(address)
        else:
            host = address.rsplit(":", 1)[0]
            built.addresses.append(f"{host}:{port}")
            if spec.optional:
                ephemeral_localhost = port
        if spec.all_interfaces and tls is None:
            _log.warning("listening on all interfaces without TLS: anyone who can reach this port can read and "
                         "write the store", address=address)
    if not built.addresses:
        raise errors.InvalidRequest(f"could not bind any of {', '.join(s.address for s in specs)}")
    return built
