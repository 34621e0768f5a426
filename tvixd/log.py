"""Logging: structlog everywhere, rendered as JSON lines (or for a console) on stderr."""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "warn": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG}


def configure(level: str | None = None, fmt: str | None = None) -> None:
    """Route structlog and stdlib logging to stderr as one event per line.

    ``fmt``: ``json``, ``console``, or ``auto``/``None`` (console on a terminal).
    """
    lvl = LEVELS.get((level or "info").lower(), logging.INFO)
    if fmt in (None, "auto"):
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
