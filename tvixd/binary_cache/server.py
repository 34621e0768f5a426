"""Serve the binary cache WSGI app with gevent's pywsgi (only ever in the ``tvixd binary-cache`` process).

Concurrency model: pywsgi runs one greenlet per connection (at most
``max_connections``, a ``gevent.pool.Pool``); the greenlets only parse HTTP
and move bytes between sockets. Everything that blocks — SQLite lookups,
blob file reads, blake3 verification, zstd, decompressing and parsing uploads,
gRPC calls to a remote store — runs in the hub's thread pool
(``gevent.get_hub().threadpool``, ``threads`` native threads), one call per
narinfo and one call per ~1 MiB chunk of a NAR. File I/O, hashlib, blake3 and
zstandard release the GIL, so two big downloads really run side by side and
the event loop keeps answering narinfo lookups meanwhile.

No monkey-patching at all: pywsgi uses gevent's own sockets natively, and
the store code (and grpcio, for ``grpc+`` store addresses) keeps real threads
and real locks, because it only ever runs on the pool's native threads.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import structlog

from tvixd.binary_cache.app import BinaryCacheApp

log = structlog.get_logger("tvixd.binary_cache")


def parse_listen_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` → (host, port); a bare ``:PORT`` is refused (say which interface)."""
    from tvixd.errors import InvalidRequest

    host, colon, port = addr.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidRequest(f"invalid listen address {addr!r}: expected HOST:PORT, e.g. localhost:9000 or [::]:9000")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _make_handler_class() -> type:
    import socket

    from gevent.pywsgi import WSGIHandler

    class Handler(WSGIHandler):
        """Log unexpected errors (e.g. a NAR aborted mid-stream) through structlog, not gevent's stderr printer."""

        def handle(self) -> None:
            # pywsgi sends the headers and the body in two writes: with Nagle's algorithm on, the body
            # then waits for the client's delayed ACK (40 ms per keep-alive narinfo lookup, measured).
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not a TCP socket
            super().handle()

        def finalize_headers(self) -> None:
            """A HEAD answer without a Content-Length of its own (a compressed NAR) gets none.

            pywsgi would add ``Content-Length: 0`` for the empty body list (false: the GET's body is
            not empty) or, for an iterator, ``Transfer-Encoding: chunked`` and then send the chunked
            terminator as if it were a body, which the client would read as the next response.
            RFC 9110 §9.3.2 lets a HEAD answer omit what is known only by producing the content.
            """
            provided = self.provided_content_length is not None
            super().finalize_headers()
            if self.command == "HEAD" and not provided:
                self.response_use_chunked = False
                self.response_headers = [(k, v) for k, v in self.response_headers
                                         if k.lower() not in (b"content-length", b"transfer-encoding")]

        def _log_error(self, t: Any, v: Any, tb: Any) -> None:
            from greenlet import GreenletExit

            if not issubclass(t, GreenletExit):
                log.error("connection aborted", path=self.path, error=str(v), error_type=t.__name__)

    return Handler


def _capture(fn: Any, args: tuple) -> tuple[bool, Any]:
    try:
        return True, fn(*args)
    except Exception as e:
        return False, e


def serve(
    app: BinaryCacheApp,
    listen_address: str,
    max_connections: int = 256,
    threads: int = 8,
    ready: Any = None,
    stopping: Any = None,
) -> None:
    """Bind, then serve until SIGTERM/SIGINT.

    ``ready(port)`` is called once listening and ``stopping()`` when a signal arrived (sd_notify).
    """
    import gevent
    from gevent.event import Event
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer

    host, port = parse_listen_address(listen_address)
    hub = gevent.get_hub()
    pool = hub.threadpool
    pool.maxsize = threads

    def offload(fn: Any, *args: Any) -> Any:
        # Exceptions travel back as values: a failing task must not make gevent print a traceback
        # (logs are JSON lines); the caller re-raises it in its greenlet.
        ok, value = pool.apply(_capture, (fn, args))
        if not ok:
            raise value
        return value

    app.offload = offload
    server = WSGIServer(
        (host, port),
        app,
        spawn=Pool(max_connections),
        log=logging.getLogger("tvixd.binary_cache.access"),
        error_log=logging.getLogger("tvixd.binary_cache.http"),
        handler_class=_make_handler_class(),
    )
    # Signal handlers first: a SIGTERM right after READY=1 must already mean "drain", not death.
    stop = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop.set)
    server.start()
    bound = server.server_port
    log.info("binary cache listening", address=f"{host}:{bound}", host=host, port=bound,
             signing_keys=[k.name for k in app.signing_keys], threads=threads, max_connections=max_connections)
    if ready is not None:
        ready(bound)
    stop.wait()
    log.info("binary cache stopping")
    if stopping is not None:
        stopping()
    server.stop(timeout=5)
    app.close()
