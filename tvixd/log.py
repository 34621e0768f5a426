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

LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "warn": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": logging.DEBUG}

_handler: logging.StreamHandler | None = None


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
    global _handler
    stream = stream or sys.stderr
    lvl = LEVELS.get((level or "info").lower(), logging.INFO)
    if fmt in (None, "auto"):
        fmt = "console" if stream.isatty() else "json"
    if fmt == "json":
        # dict_tracebacks: the exception as data (type, value, frames), still one line.
        final: list[Any] = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _normalize_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    _handler = handler
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
        if _handler is None or self._thread is not None:
            return self
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._out = os.fdopen(self._saved, "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
        self._previous = _handler.setStream(self._out)
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
        if self._thread is None or _handler is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the pump sees EOF
        self._thread.join(timeout=5)
        _handler.setStream(self._previous)
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
