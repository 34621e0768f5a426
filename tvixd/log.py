"""Logging: structlog everywhere, rendered as JSON lines (or for a console) on stderr.

One pipeline for everything: structlog loggers, the standard library's ``logging`` records
(grpc's Python side logs there), ``warnings``, uncaught exceptions in any thread, and — in the
daemon, via :func:`capture_stderr` — even the raw lines grpc's C core writes to file descriptor 2.
In JSON mode each line is one object with ``timestamp`` (ISO 8601 UTC), ``level``, ``event`` and
``logger``; exceptions become structured fields (``exception``: a list of dicts with type, value,
frames) instead of a multi-line traceback. Nothing is ever written to stdout.

Start-up cost: importing structlog costs 70-140 ms (its ``__init__`` imports asyncio through
``structlog.stdlib``, and colorama), ``logging`` ~10 ms, and most one-shot commands (``import``,
``dump-path``, ``path-info``, ``cat``) log nothing. So :func:`configure` imports neither: it records
the settings, and structlog (or ``logging``) is configured the moment anything imports it — an
``import structlog`` anywhere, a library that logs, the first warning or uncaught exception.
:func:`get_logger` is for code on a start-up path: it drops events below the level without
importing structlog.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

CRITICAL, ERROR, WARNING, INFO, DEBUG = 50, 40, 30, 20, 10
"""The standard library's level numbers (``logging.ERROR`` ...), without importing ``logging``."""

LEVELS = {"error": ERROR, "warning": WARNING, "warn": WARNING, "info": INFO, "debug": DEBUG, "trace": DEBUG}

_METHOD_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "warn": WARNING, "error": ERROR,
                  "exception": ERROR, "critical": CRITICAL, "fatal": CRITICAL}  # fmt: skip


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


_sink: _Sink | None = None
_level = 0
"""The configured threshold (0 until :func:`configure`: then structlog's own defaults decide)."""
_fmt = "json"
_stdlib_formatter: Any = None
"""structlog's ProcessorFormatter for stdlib records, built with the structlog configuration."""


def configure(level: str | None = None, fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Route structlog, stdlib logging, warnings and uncaught exceptions to stderr, one event per line.

    ``fmt``: ``json``, ``console``, or ``auto``/``None`` (console on a terminal, else json).
    structlog and ``logging`` are configured now if already imported, else when first imported.
    """
    global _sink, _level, _fmt
    stream = stream or sys.stderr
    _level = LEVELS.get((level or "info").lower(), INFO)
    if fmt in (None, "auto"):
        fmt = "console" if stream.isatty() else "json"
    _fmt = fmt
    _sink = _Sink(stream)
    _after_import("logging", _configure_stdlib)
    _after_import("structlog", _configure_structlog)
    if "logging" not in sys.modules:
        warnings.showwarning = _showwarning  # becomes logging's (captureWarnings) once logging is imported
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


def _configure_structlog() -> None:
    """Apply the recorded settings to structlog (run by :func:`configure` or when structlog is imported)."""
    global _stdlib_formatter
    import structlog
    import structlog.tracebacks

    if _fmt == "json":
        # The exception as data (type, value, frames), still one line. Without local
        # variables: they bloat every error line and can carry request bytes into logs.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        final: list[Any] = [tracebacks, structlog.processors.JSONRenderer()]
    else:
        isatty = _sink is not None and _sink.stream.isatty()
        final = [structlog.dev.ConsoleRenderer(colors=isatty)]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _normalize_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, *final],
        logger_factory=_logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        cache_logger_on_first_use=True,
    )
    _stdlib_formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )


def _configure_stdlib() -> None:
    """Send stdlib records (and warnings) to the sink (run by :func:`configure` or when logging is imported)."""
    import logging

    class SinkHandler(logging.Handler):
        """Records of grpc, warnings and any library, formatted by structlog, into the sink."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                if _stdlib_formatter is None:
                    import structlog  # noqa: F401 (importing it configures it and builds the formatter)
                line = _stdlib_formatter.format(record)
                if _sink is not None:
                    _sink.write_line(line)
            except Exception:
                self.handleError(record)

    root = logging.getLogger()
    root.handlers[:] = [SinkHandler()]
    root.setLevel(_level)
    logging.captureWarnings(True)


def _normalize_level(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """``warn`` -> ``warning`` and lower case, so pipelines can match one spelling."""
    level = event.get("level")
    if isinstance(level, str):
        event["level"] = "warning" if level.lower() == "warn" else level.lower()
    return event


class _RunAfterImport:
    """A ``sys.meta_path`` finder that runs a callback right after a module's first import completes.

    This is what lets :func:`configure` leave structlog and ``logging`` unimported: whoever imports
    them first (``import structlog`` in a daemon module, grpc importing ``logging``) gets them configured.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Callable[[], None]] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        callback = self.pending.pop(fullname, None)
        if callback is None:
            return None
        spec = importlib.util.find_spec(fullname)  # the other finders (this one no longer claims it)
        if spec is not None and spec.loader is not None:
            spec.loader = _CallbackLoader(spec.loader, callback)
        return spec


class _CallbackLoader:
    """Wraps a module's loader: execute the module, then the callback; anything else is the wrapped loader's."""

    def __init__(self, loader: Any, callback: Callable[[], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._callback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


_finder = _RunAfterImport()


def _after_import(module: str, callback: Callable[[], None]) -> None:
    """Run ``callback`` now if ``module`` is imported, else right after its first import."""
    if module in sys.modules:
        _finder.pending.pop(module, None)
        callback()
        return
    _finder.pending[module] = callback
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def _lazy_method(method: str) -> Callable[..., None]:
    """``LazyLogger.<method>``: return at once below the level, else forward to structlog (importing it)."""

    def emit(self: LazyLogger, event: str, **kw: Any) -> None:
        if _METHOD_LEVELS[method] < _level:
            return
        import structlog

        getattr(structlog.get_logger(self.name), method)(event, **kw)

    emit.__name__ = emit.__qualname__ = method
    return emit


class LazyLogger:
    """A structlog-style logger (``.debug(event, **kw)`` ...) that imports structlog only to emit.

    Events below the configured level cost a dict lookup; the first one that is emitted imports
    structlog (~0.1 s), which configures it. For one-shot commands that rarely log.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    debug = _lazy_method("debug")
    info = _lazy_method("info")
    warning = _lazy_method("warning")
    error = _lazy_method("error")
    exception = _lazy_method("exception")
    critical = _lazy_method("critical")


def json_line_writer(level: int) -> Callable[[str], None] | None:
    """Where a hot path writes JSON lines it rendered itself (the daemon's access log), or None.

    None unless logs are JSON lines and ``level`` passes the threshold (the caller then logs through
    structlog, which renders or drops the event). The callable writes its text (whole lines joined
    by newlines, no trailing one) with one write under the sink's lock, as structlog's lines are.
    """
    if _sink is None or _fmt != "json" or level < _level:
        return None
    return _sink.write_line


def get_logger(name: str) -> LazyLogger:
    """A logger named ``name`` that does not import structlog until it emits (see :class:`LazyLogger`)."""
    return LazyLogger(name)


def _showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:  # fmt: skip
    """The first warning imports ``logging`` (which configures it: captureWarnings) and logs the warning."""
    import logging

    if warnings.showwarning is not _showwarning:  # logging's, installed by the import just now
        warnings.showwarning(message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line)  # as logging.captureWarnings
    logging.getLogger("py.warnings").warning("%s", text)


def _excepthook(tp: type[BaseException], value: BaseException, tb: Any) -> None:
    if issubclass(tp, KeyboardInterrupt):
        sys.__excepthook__(tp, value, tb)
        return
    import structlog

    structlog.get_logger("tvixd").critical("uncaught exception", exc_info=(tp, value, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    import structlog

    structlog.get_logger("tvixd").error(
        "uncaught exception in thread", thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


_CORE_LEVELS = {"E": ERROR, "W": WARNING, "I": INFO, "F": CRITICAL, "D": DEBUG}


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
        import logging

        logger = logging.getLogger("stderr")
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.strip():
                    level = _CORE_LEVELS.get(line[:1], WARNING) if line[1:5].isdigit() else WARNING
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
