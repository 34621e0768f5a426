"""Logging: structlog everywhere, rendered as JSON lines (or for a console) on stderr.

One pipeline for everything: structlog loggers, the standard library's ``logging`` records
(grpc's Python side logs there), ``warnings``, uncaught exceptions in any thread, and — in the
daemon, via :func:`capture_stderr` — even the raw lines grpc's C core writes to file descriptor 2.
In JSON mode each line is one object with ``timestamp`` (ISO 8601 UTC), ``level``, ``event`` and
``logger``; exceptions become structured fields (``exception``: a list of dicts with type, value,
frames) instead of a multi-line traceback. Nothing is ever written to stdout.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
import structlog.tracebacks

LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "warn": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": logging.DEBUG}

class _Sink:
    """The one place log lines are written: one lock, one stream, whole lines (never interleaved)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self._owner: int | None = None
        self._pending: list[str] = []

    def write_line(self, line: str) -> None:
        if self._owner == threading.get_ident():
            # Re-entered by a signal handler that logs while this thread is inside write(): writing now
            # would raise "reentrant call inside BufferedWriter"; the interrupted write emits it next.
            self._pending.append(line)
            return
        with self.lock:
            self._owner = threading.get_ident()
            try:
                self.stream.write(line + "\n")
                while self._pending:
                    self.stream.write(self._pending.pop(0) + "\n")
                self.stream.flush()
            finally:
                self._owner = None


class _Logger:
    """structlog's final logger: hands the rendered line to the sink (``name`` feeds the ``logger`` field).

    structlog events skip the stdlib ``logging`` machinery (LogRecord, a second formatter pass): measured
    135 -> ~25 µs per access-log line (bench/ops_bench.py).
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        if _sink is not None:
            _sink.write_line(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _logger_factory(*args: Any) -> _Logger:
    return _Logger(args[0] if args and isinstance(args[0], str) else "tvixd")


class _SinkHandler(logging.Handler):
    """The stdlib side: records of grpc, warnings and any library, formatted by structlog, into the sink."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if _sink is not None:
                _sink.write_line(line)
        except Exception:
            self.handleError(record)


_sink: _Sink | None = None


def _normalize_level(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """``warn`` -> ``warning`` and lower case, so pipelines can match one spelling."""
    level = event.get("level")
    if isinstance(level, str):
        event["level"] = "warning" if level.lower() == "warn" else level.lower()
    return event


def configure(level: str | None = None, fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Route structlog, stdlib logging, warnings and uncaught exceptions to stderr, one event per line.

    ``fmt``: ``json``, ``console``, or ``auto``/``None`` (console on a terminal, else json).
    """
    global _sink
    stream = stream or sys.stderr
    lvl = LEVELS.get((level or "info").lower(), logging.INFO)
    if fmt in (None, "auto"):
        fmt = "console" if stream.isatty() else "json"
    if fmt == "json":
        # The exception as data (type, value, frames), still one line. Without local
        # variables: they bloat every error line and can carry request bytes into logs.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        final: list[Any] = [tracebacks, structlog.processors.JSONRenderer()]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _normalize_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _sink = _Sink(stream)
    structlog.configure(
        processors=[*shared, *final],
        logger_factory=_logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        cache_logger_on_first_use=True,
    )
    handler = _SinkHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    logging.captureWarnings(True)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


def _excepthook(tp: type[BaseException], value: BaseException, tb: Any) -> None:
    if issubclass(tp, KeyboardInterrupt):
        sys.__excepthook__(tp, value, tb)
        return
    structlog.get_logger("tvixd").critical("uncaught exception", exc_info=(tp, value, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    structlog.get_logger("tvixd").error(
        "uncaught exception in thread", thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


_CORE_LEVELS = {"E": logging.ERROR, "W": logging.WARNING, "I": logging.INFO, "F": logging.CRITICAL,
                "D": logging.DEBUG}


class StderrCapture:
    """Turn every foreign line written to file descriptor 2 into a log event, between start() and stop().

    grpc's C core (and anything else below Python) writes plain lines such as
    ``E1125 08:42:05.370422 22637 add_port.cc:83] Failed to add port ...`` straight to fd 2,
    which would break a JSON-lines consumer. While started, fd 2 is a pipe read by a thread
    that logs each line (logger ``stderr``, level from the glog-style prefix, else warning),
    and our own handler writes to a duplicate of the original stderr. ``stop()`` restores fd 2
    after every captured line has been logged. A hard crash can lose the last unread lines:
    the trade for having no non-JSON output.
    """

    def __init__(self) -> None:
        self._saved: int | None = None
        self._out: TextIO | None = None
        self._previous: TextIO | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StderrCapture:
        """Begin capturing (a no-op unless :func:`configure` ran)."""
        if _sink is None or self._thread is not None:
            return self
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._out = os.fdopen(self._saved, "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
        with _sink.lock:
            self._previous, _sink.stream = _sink.stream, self._out
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), name="stderr-capture", daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _pump(read_fd: int) -> None:
        logger = logging.getLogger("stderr")
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.strip():
                    level = _CORE_LEVELS.get(line[:1], logging.WARNING) if line[1:5].isdigit() else logging.WARNING
                    logger.log(level, line)

    def stop(self) -> None:
        """Restore fd 2 once every captured line is logged."""
        if self._thread is None or _sink is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the pump sees EOF
        self._thread.join(timeout=5)
        with _sink.lock:
            _sink.stream = self._previous
        self._out.close()
        self._thread = None


@contextmanager
def capture_stderr() -> Iterator[None]:
    """:class:`StderrCapture` for the duration of a ``with`` block."""
    capture = StderrCapture().start()
    try:
        yield
    finally:
        capture.stop()
