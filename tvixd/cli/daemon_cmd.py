"""``tvixd daemon``: serve a store over gRPC until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import argparse
import re

from tvixd.cli.common import add_store_args

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
    """Open the store, serve, and drain on SIGTERM/SIGINT."""
    import signal
    import threading
    from pathlib import Path

    import structlog

    from tvixd import config
    from tvixd.cli.common import store_addrs
    from tvixd.errors import InvalidRequest
    from tvixd.server.server import TlsConfig, build_server
    from tvixd.store import Store

    log = structlog.get_logger("tvixd.daemon")
    # flag > environment variable > config file > built-in default, per key (tvixd.config).
    cfg = getattr(args, "cfg", None) or config.load(args)
    daemon = cfg.daemon
    tls = None
    if daemon.tls_cert:
        try:
            tls = TlsConfig(cert_chain=Path(daemon.tls_cert).read_bytes(),
                            private_key=Path(daemon.tls_key).read_bytes())
        except OSError as e:
            raise InvalidRequest(f"cannot read TLS certificate/key: {e}") from None

    args.cfg = cfg
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
            daemon.listen_address,
            workers=daemon.workers,
            max_message_bytes=daemon.max_message_size,
            tls=tls,
            max_concurrent_rpcs=cfg.limits.max_concurrent_rpcs,
            interceptors=observability.interceptors,
        )
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        server.start()
        log.info("listening", addresses=server.addresses, tls=tls is not None,
                 blob_service=addrs.blob, directory_service=addrs.directory, path_info_service=addrs.path_info)
        sdnotify.ready(f"listening on {', '.join(server.addresses)}")
        while not stop.wait(1.0):
            pass
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
