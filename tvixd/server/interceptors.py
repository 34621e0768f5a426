"""The server interceptor that observes every RPC: one access-log line and the Prometheus metrics.

Per call it records the method, the peer, the final status code, the duration, and the bytes and
messages in each direction. Bytes are counted exactly and for free: ``intercept_service`` runs once
per call, so the call gets its own wrappers around the method's request deserializer (which is
handed the raw wire bytes of each request message) and response serializer (which returns the
bytes of each response message) — streaming calls included, without serializing anything twice.

The request id is the client's ``x-request-id`` metadata when present (so a proxy's id survives),
else 128 fresh random bits as 32 hex digits (the form of a uuid4's hex, at a third of its cost); it is
bound into structlog's context while the servicer runs, so every log line the call causes carries it.

The status, duration and metrics are settled when the servicer is done (for a unary response: when
it is serialized), and the call's record is then queued for the access log, exactly once. The line
is rendered and written later by one log thread (:class:`AccessLogWriter`), so rendering is not part
of the latency the client sees (it used to run between serializing a response and sending it:
~100 µs of a ~0.7 ms Stat), nor of grpcio's single polling thread, which handles every call's events
(rendering in a termination callback there took 21% of the daemon's GIL time during an import
through the daemon). No termination callback is registered at all any more: it cost a lock and a
callback on that polling thread per call, and bought nothing once lines were written elsewhere.
Servicers finish before the server's stop completes, and ``close()`` drains the queue after that.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

import grpc
import structlog

from tvixd.server.servicers import THREAD_POOL_ATTR

_access = structlog.get_logger("tvixd.access")

# Codes that mean a bug or corruption on our side: logged at error level, the rest at info.
_ERROR_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS})


class CallRecord:
    """What one RPC did; filled in while it runs, reported once when it ends."""

    __slots__ = ("bytes_in", "bytes_out", "code", "context", "done", "duration", "messages_in", "messages_out",
                 "method", "peer", "request_id", "start")

    def __init__(self, method: str, request_id: str) -> None:
        self.method = method
        self.request_id = request_id
        self.peer = ""
        self.start = time.perf_counter()
        self.duration = 0.0
        self.bytes_in = self.bytes_out = self.messages_in = self.messages_out = 0
        self.code = grpc.StatusCode.OK
        self.done = False
        self.context: grpc.ServicerContext | None = None


class Observer:
    """Something told about every finished call (the metrics); ``started`` when a call begins."""

    def started(self, call: CallRecord) -> None:  # pragma: no cover - interface
        """A call entered its servicer."""

    def finished(self, call: CallRecord) -> None:  # pragma: no cover - interface
        """A call ended (``call.code`` is final)."""


def render_access_line(call: CallRecord, level: str, pid: int, timestamp: str) -> str:
    """The access line of ``call`` as structlog's JSON renderer writes it (same keys, order and values).

    Built with one f-string instead of structlog's processor chain and ``json.dumps`` of a dict: that
    chain was 24% of a daemon's GIL time under an 8-client Stat load (py-spy ``--gil``), the largest
    cost of ours per call. Strings a client controls are escaped by json's own encoder.
    """
    return (f'{{"method": {_quote(call.method)}, "peer": {_quote(call.peer)}, "code": "{call.code.name}", '
            f'"duration_ms": {round(call.duration * 1000, 3)!r}, "bytes_in": {call.bytes_in}, '
            f'"bytes_out": {call.bytes_out}, "messages_in": {call.messages_in}, '
            f'"messages_out": {call.messages_out}, "request_id": {_quote(call.request_id)}, "pid": {pid}, '
            f'"event": "rpc", "level": "{level}", "logger": "tvixd.access", "timestamp": "{timestamp}"}}')


class _UtcTimestamps:
    """Times as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes them, formatting the date once a second.

    ``datetime.now(tz=UTC).isoformat()`` per line was 9% of the daemon's GIL time under load.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, time_ns: int) -> str:
        second, ns = divmod(time_ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micros = ns // 1000
        return f"{self._prefix}.{micros:06d}Z" if micros else f"{self._prefix}Z"  # isoformat drops .000000


class AccessLogWriter:
    """Renders and writes access lines on one thread of its own, in the order the calls ended.

    The thread wakes every ``FLUSH_INTERVAL`` seconds and writes what was queued meanwhile, rather
    than being woken for every call: under load each wake-up was a GIL hand-over that stalled
    grpcio's polling thread. Lines are rendered by :func:`render_access_line` when logs are JSON
    lines (else through structlog), stamped with the time the call ended (``submit``), and written
    together, up to ``BATCH_BYTES`` per write. Batches stay below PIPE_BUF, so a write to a pipe is
    atomic and the lines of several serving processes sharing one stderr never interleave.
    ``close()`` writes what is queued and stops the thread (call it after the server has stopped,
    so no line is due any more).
    """

    BATCH_BYTES = 4000
    """Below PIPE_BUF (4096 on Linux): a write of a batch to a pipe is atomic."""
    FLUSH_INTERVAL = 0.05
    """Seconds a line may wait to be written (at most ~one batch per interval and process)."""

    def __init__(self) -> None:
        self._pid = os.getpid()  # which serving process answered (daemon.processes > 1)
        self._pending: collections.deque[tuple[CallRecord, int]] = collections.deque()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="tvixd-access-log", daemon=True)  # fmt: skip
        self._thread.start()

    def submit(self, call: CallRecord) -> None:
        """Queue the line of a finished call (deque.append: thread-safe, wakes nobody)."""
        self._pending.append((call, time.time_ns()))

    def _run(self) -> None:
        from tvixd import log

        # Per level: write JSON lines ourselves, or None (console format, or filtered out). A level
        # passing implies error passes, so ``out`` (the error writer) can write any batch.
        writers = {"info": log.json_line_writer(log.INFO), "error": log.json_line_writer(log.ERROR)}
        out = writers["error"]
        pop = self._pending.popleft
        stamp = _UtcTimestamps().format
        closing = False
        while not closing:
            closing = self._closing.wait(self.FLUSH_INTERVAL)
            batch: list[str] = []
            size = 0
            while True:
                try:
                    call, ended = pop()
                except IndexError:
                    break
                level = "error" if call.code in _ERROR_CODES else "info"
                if writers[level] is None:  # console format, or the level filters it: structlog decides
                    (_access.error if level == "error" else _access.info)(
                        "rpc", method=call.method, peer=call.peer, code=call.code.name,
                        duration_ms=round(call.duration * 1000, 3), bytes_in=call.bytes_in,
                        bytes_out=call.bytes_out, messages_in=call.messages_in, messages_out=call.messages_out,
                        request_id=call.request_id, pid=self._pid)
                    continue
                line = render_access_line(call, level, self._pid, stamp(ended))
                if batch and size + len(line) >= self.BATCH_BYTES:
                    out("\n".join(batch))  # type: ignore[misc]
                    batch, size = [], 0
                batch.append(line)
                size += len(line) + 1
            if batch:
                out("\n".join(batch))  # type: ignore[misc]

    def close(self) -> None:
        """Write every queued line, then stop the thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._closing.set()
            thread.join()


class ObservingInterceptor(grpc.ServerInterceptor):
    """Access log (``access_log``) and observers (e.g. :class:`tvixd.metrics.Metrics`) for every RPC.

    ``close()`` (after the server stopped) writes the access lines still queued.
    """

    def __init__(self, access_log: bool = True, observers: tuple[Observer, ...] = ()) -> None:
        self.access_log = access_log
        self.observers = observers
        self._lines = AccessLogWriter() if access_log else None

    def close(self) -> None:
        """Write the queued access lines (the server must have stopped: no call may end after this)."""
        if self._lines is not None:
            self._lines.close()

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return None
        request_id = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "x-request-id" and isinstance(value, str) and value:
                request_id = value[:128]  # a client-chosen string: bounded before it reaches the log
                break
        call = CallRecord(handler_call_details.method, request_id or os.urandom(16).hex())
        return self._wrap(handler, call)

    # -- wrapping -------------------------------------------------------------------------------

    def _wrap(self, handler: Any, call: CallRecord) -> Any:
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer
        unary_response = not handler.response_streaming

        def request_deserializer(data: bytes) -> Any:
            call.bytes_in += len(data)
            call.messages_in += 1
            return deserialize(data) if deserialize is not None else data

        def response_serializer(message: Any) -> bytes:
            try:
                data = serialize(message) if serialize is not None else message
                call.bytes_out += len(data)
                call.messages_out += 1
                return data
            finally:
                if unary_response:  # the single response is serialized after the servicer returned
                    self._finish(call, None, None)

        if handler.request_streaming and handler.response_streaming:
            behavior, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        elif handler.request_streaming:
            behavior, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        elif handler.response_streaming:
            behavior, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        else:
            behavior, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler

        if unary_response:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                self._begin(call, context)
                try:
                    return behavior(request, context)
                except BaseException as e:
                    self._finish(call, context, e)
                    raise
                finally:
                    structlog.contextvars.unbind_contextvars("request_id")
        else:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._begin(call, context)
                error: BaseException | None = None
                try:
                    yield from behavior(request, context)
                except BaseException as e:
                    error = e
                    raise
                finally:
                    self._finish(call, context, error)
                    structlog.contextvars.unbind_contextvars("request_id")

        pool = getattr(behavior, THREAD_POOL_ATTR, None)
        if pool is not None:  # the servicer's choice of thread pool (servicers.quick_pool) applies to the wrapper
            setattr(wrapped, THREAD_POOL_ATTR, pool)
        return factory(wrapped, request_deserializer=request_deserializer, response_serializer=response_serializer)

    def _begin(self, call: CallRecord, context: grpc.ServicerContext) -> None:
        call.context = context
        call.peer = context.peer()
        structlog.contextvars.bind_contextvars(request_id=call.request_id)
        for observer in self.observers:
            observer.started(call)

    def _finish(self, call: CallRecord, context: grpc.ServicerContext | None, error: BaseException | None) -> None:
        """Settle the status code and report the call, exactly once."""
        if call.done:
            return
        call.done = True
        call.duration = time.perf_counter() - call.start
        context = context or call.context
        call.context = None  # no reference cycles through the finished call
        code = context.code() if context is not None else None
        if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
            call.code = code  # set_code() or abort() by the servicer
        elif context is not None and not context.is_active():
            call.code = grpc.StatusCode.CANCELLED  # the client went away (or the deadline passed)
        elif error is not None:
            call.code = grpc.StatusCode.UNKNOWN  # what grpc answers for an exception without a code
        for observer in self.observers:
            observer.finished(call)
        if self._lines is not None:
            self._lines.submit(call)


class DaemonObservability:
    """What ``tvixd daemon`` adds around its server: the interceptor, and the metrics endpoint if configured.

    ``interceptors`` goes to ``build_server``; ``close()`` stops the metrics endpoint.
    """

    def __init__(self, cfg: Any, store: Any) -> None:
        from tvixd.errors import TvixError

        self.metrics_server: Any = None
        self.metrics: Any = None
        self.metrics_address: str | None = None
        observers: tuple[Observer, ...] = ()
        address = cfg.metrics.listen_address
        if address:
            from tvixd.metrics import Metrics

            metrics = Metrics(store, store_stats_interval=cfg.metrics.store_stats_interval)
            try:
                self.metrics_server, self.metrics_address = metrics.serve(address)
            except OSError as e:
                raise TvixError(f"cannot serve metrics on {address}: {e.strerror or e}") from None
            structlog.get_logger("tvixd.metrics").info(
                "metrics listening", address=self.metrics_address, url=f"http://{self.metrics_address}/metrics")
            observers = (metrics,)
            self.metrics = metrics
        self.interceptors = [ObservingInterceptor(access_log=cfg.log.access_log, observers=observers)]

    def close(self) -> None:
        """Drain the access log, stop the metrics endpoint; safe to call twice."""
        for interceptor in self.interceptors:
            interceptor.close()
        if self.metrics is not None and self.metrics.store_collector is not None:
            self.metrics.store_collector.close()
        self.metrics = None
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
