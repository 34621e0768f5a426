"""``tvixd binary-cache``: serve the store as a Nix HTTP binary cache (gevent pywsgi, own process)."""

from __future__ import annotations

import argparse

from tvixd.cli.common import add_store_args


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``tvixd binary-cache`` and its options (values also come from ``[binary_cache]`` in the config)."""
    p = subparsers.add_parser(
        "binary-cache",
        help="serve the store as a Nix HTTP binary cache (substitute from it, nix copy --to it)",
        description="Serve the store over Nix's HTTP binary cache protocol: /nix-cache-info, /<hash>.narinfo "
        "and NARs for substituters and `nix copy --from`, and uploads from `nix copy --to http://HOST:PORT`.",
    )
    p.add_argument(
        "--listen-address", dest="listen_address", metavar="HOST:PORT", default=None,
        help="where to serve HTTP (default localhost:9000; all interfaces only when given, e.g. [::]:9000)",
    )
    p.add_argument(
        "--signing-key", dest="signing_key", action="append", metavar="FILE", default=None,
        help="secret key file from `nix-store --generate-binary-cache-key`; every narinfo gets a Sig per key "
        "(repeatable)",
    )
    p.add_argument("--priority", dest="priority", type=int, default=None, metavar="N",
                   help="Priority: announced in /nix-cache-info (lower is preferred by Nix; default 50)")
    p.add_argument("--threads", type=int, default=8, metavar="N",
                   help="native threads doing the blocking work: store lookups, blob reads, hashing (default 8)")
    p.add_argument("--max-connections", type=int, default=256, metavar="N",
                   help="concurrent HTTP connections served (default 256)")
    p.add_argument("--max-pending-uploads", type=int, default=1024, metavar="N",
                   help="uploaded NARs that may wait for their narinfo at once (default 1024)")
    p.add_argument("--pending-upload-ttl", type=float, default=3600.0, metavar="SECONDS",
                   help="how long an uploaded NAR waits for its narinfo before it is dropped (default 3600)")
    p.add_argument("--upload-tmp-dir", default=None, metavar="DIR",
                   help="where uploads are spooled while being verified (default: the system temp dir)")
    add_store_args(p, None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the keys, open the store, serve until SIGTERM/SIGINT."""
    import structlog

    from tvixd.binary_cache.app import BinaryCacheApp
    from tvixd.binary_cache.narinfo import SigningKey
    from tvixd.binary_cache.server import parse_listen_address, serve
    from tvixd.cli.common import store_addrs
    from tvixd.errors import InvalidRequest
    from tvixd.store import Store

    cfg = getattr(args, "cfg", None)
    section = cfg.binary_cache if cfg is not None else None
    listen = (section.listen_address if section else None) or args.listen_address or "localhost:9000"
    key_files = (section.signing_key if section else None) or args.signing_key or []
    priority = section.priority if section else (args.priority if args.priority is not None else 50)
    for name, value in (("--threads", args.threads), ("--max-connections", args.max_connections),
                        ("--max-pending-uploads", args.max_pending_uploads)):
        if value < 1:
            raise InvalidRequest(f"{name} must be at least 1, got {value}")
    parse_listen_address(listen)  # fail before opening the store
    keys = [SigningKey.load(f) for f in key_files]
    addrs = store_addrs(args)
    log = structlog.get_logger("tvixd.binary_cache")
    store = Store.open(addrs)
    try:
        app = BinaryCacheApp(
            store,
            signing_keys=keys,
            priority=priority,
            upload_tmp_dir=args.upload_tmp_dir,
            max_pending_uploads=args.max_pending_uploads,
            pending_upload_ttl=args.pending_upload_ttl,
            inline_lookups=addrs.path_info.split("://", 1)[0] in ("memory", "sqlite"),
        )
        log.info("store opened", blob_service=addrs.blob, directory_service=addrs.directory,
                 path_info_service=addrs.path_info)
        serve(app, listen, max_connections=args.max_connections, threads=args.threads, ready=_notify_ready,
              stopping=_notify_stopping)
    finally:
        store.close()
    return 0


def _notify_ready(port: int) -> None:
    """Tell systemd (Type=notify) that we serve (a no-op outside systemd)."""
    from tvixd import sdnotify

    sdnotify.ready(f"serving HTTP on port {port}")


def _notify_stopping() -> None:
    from tvixd import sdnotify

    sdnotify.stopping()
