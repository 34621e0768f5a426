"""``tvixd daemon``: serve a store over gRPC until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from tvixd.cli.common import add_store_args

if TYPE_CHECKING:
    from tvixd.config import Config

_SIZE_UNITS = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(value: str) -> int:
    """``67108864``, ``64MiB``, ``64M`` (decimal) -> bytes; for argparse."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {value!r} (examples: 67108864, 64MiB, 100M)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``tvixd daemon`` and its options."""
    p = subparsers.add_parser(
        "daemon",
        help="serve the store over gRPC (BlobService, DirectoryService, PathInfoService)",
        description="Serve the tvix.store.v1 gRPC services, with reflection and grpc.health.v1.",
    )
    p.add_argument(
        "-l", "--listen-address", action="append", metavar="ADDR", default=None,
        help="HOST:PORT, [IPv6]:PORT or unix:/path; repeatable (default localhost:8000: 127.0.0.1 and [::1]). "
        "All interfaces ([::]:8000, 0.0.0.0:8000) only when given explicitly; use TLS there.",
    )
    p.add_argument("--tls-cert", metavar="PEM", default=None, help="server certificate chain (enables TLS)")
    p.add_argument("--tls-key", metavar="PEM", default=None, help="server private key (with --tls-cert)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="worker threads (default 32)")
    p.add_argument(
        "--processes", type=int, default=None, metavar="N",
        help="serving processes sharing the TCP ports (SO_REUSEPORT; default 1). One process serves about "
        "2,000 small calls/s (one Python GIL); N > 1 needs TCP listen addresses, backends shared through "
        "files (fs://, sqlite:///file, grpc+; not memory://) and no --metrics-listen-address. "
        "Recommended on a busy daemon: twice the number of CPUs.",
    )
    # ops: [metrics] and [limits] flags (tvixd.config resolves flag > env > file > default).
    p.add_argument("--metrics-listen-address", metavar="HOST:PORT", default=None,
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off)")
    p.add_argument("--max-concurrent-rpcs", type=int, metavar="N", default=None,
                   help="refuse RPCs beyond N in flight with RESOURCE_EXHAUSTED (default: no limit)")
    p.add_argument(
        "--max-message-size", type=parse_size, default=None, metavar="BYTES",
        help="largest request message accepted (default 64MiB); larger ones fail RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--shutdown-grace", type=float, default=None, metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight calls may finish (default 10)",
    )
    add_store_args(p, None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve in this process, or supervise ``daemon.processes`` serving processes."""
    from tvixd import config
    from tvixd.cli.common import store_addrs

    # flag > environment variable > config file > built-in default, per key (tvixd.config).
    cfg = getattr(args, "cfg", None) or config.load(args)
    args.cfg = cfg
    if cfg.daemon.processes > 1:
        from tvixd.server.supervisor import supervise

        # The store addresses are resolved (and the state directory created) before forking.
        return supervise(args, cfg, store_addrs(args), serve)
    return serve(args, cfg)


MALLOC_MMAP_THRESHOLD = 16 << 20
MALLOC_TRIM_THRESHOLD = 64 << 20


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the kernel at once.

    Why: a daemon receiving a big blob allocates and frees a ~1 MiB buffer per message
    (grpcio's receive, the Python bytes of each chunk). By default glibc gives the top of a
    thread's heap back (``madvise``) whenever more than its trim threshold is free, and the
    next message faults those pages in again: 136,000-189,000 page faults per 1 GiB Put
    (``/proc/PID/stat``), ~15% of the daemon's CPU (perf: ``exc_page_fault`` under recvmsg
    and memmove). With allocations below 16 MiB served from the heaps and 64 MiB kept free
    there before trimming: 18-16,000 faults, and 3.6-4.9 -> 2.3-3.2 s of daemon CPU per GiB
    (loaded 2-core VM). The price is that a process keeps up to that much freed memory.
    False where there is no glibc ``mallopt`` (nothing changes).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)) and bool(
        mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD))


def serve(args: argparse.Namespace, cfg: Config, shared_addresses: list[str] | None = None,
          worker: int | None = None, on_ready: Callable[[], None] | None = None) -> int:
    """Open the store, serve, and drain on SIGTERM/SIGINT.

    In a serving process of ``--processes N`` (``worker`` is its index) the supervisor passes the
    resolved ``shared_addresses`` (bound with SO_REUSEPORT) and ``on_ready``; the supervisor, not
    this process, then logs "listening" and notifies systemd.
    """
    import signal
    import threading
    from pathlib import Path

    import structlog

    from tvixd.cli.common import store_addrs
    from tvixd.errors import InvalidRequest
    from tvixd.server.server import TlsConfig, build_server
    from tvixd.store import Store

    log = structlog.get_logger("tvixd.daemon")
    daemon = cfg.daemon
    tls = None
    if daemon.tls_cert:
        try:
            tls = TlsConfig(cert_chain=Path(daemon.tls_cert).read_bytes(),
                            private_key=Path(daemon.tls_key).read_bytes())
        except OSError as e:
            raise InvalidRequest(f"cannot read TLS certificate/key: {e}") from None

    keep_freed_memory()
    addrs = store_addrs(args)  # unset ones: the embedded store under the state directory (created 0700)
    store = Store.open(addrs)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received, draining", signal=signal.Signals(signum).name)
        stop.set()

    # ops hooks (tvixd.log, tvixd.server.interceptors, tvixd.sdnotify): grpc core's raw stderr lines
    # become log events; one access-log line and the metrics per RPC; READY=1/STOPPING=1 for systemd.
    from tvixd import sdnotify
    from tvixd.log import StderrCapture
    from tvixd.server.interceptors import DaemonObservability

    capture = StderrCapture().start()
    observability = None
    try:
        observability = DaemonObservability(cfg, store)
        server = build_server(
            store,
            shared_addresses or daemon.listen_address,
            workers=daemon.workers,
            max_message_bytes=daemon.max_message_size,
            tls=tls,
            max_concurrent_rpcs=cfg.limits.max_concurrent_rpcs,
            interceptors=observability.interceptors,
            reuse_port=shared_addresses is not None,
        )
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})  # the supervisor blocked them
        server.start()
        if worker is None:
            log.info("listening", addresses=server.addresses, tls=tls is not None, blob_service=addrs.blob,
                     directory_service=addrs.directory, path_info_service=addrs.path_info)
            sdnotify.ready(f"listening on {', '.join(server.addresses)}")
        else:
            log.info("serving process listening", worker=worker, addresses=server.addresses)
            if on_ready is not None:
                on_ready()
        while not stop.wait(1.0):
            pass
        if worker is None:
            sdnotify.stopping("draining")
        server.stop(daemon.shutdown_grace)
        # Drained: a late second signal must not kill the interpreter while it exits (status 0).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        observability.close()  # the access lines still queued come before "stopped"
        log.info("stopped")
    finally:
        if observability is not None:
            observability.close()
        capture.stop()
        store.close()
    return 0
