"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per state change.

With ``Type=notify`` systemd starts dependent units, and ``systemctl start`` returns, only once
the daemon sends ``READY=1``; ``STOPPING=1`` tells it a shutdown is in progress (so it waits for
``TimeoutStopSec=`` rather than treating the slow exit as a hang). Outside systemd
``$NOTIFY_SOCKET`` is unset and every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog


def _address(value: str) -> str | None:
    """The ``AF_UNIX`` address of ``$NOTIFY_SOCKET``: a path, or ``@name`` in the abstract namespace."""
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract socket: leading NUL instead of '@'
    if value.startswith("/"):
        return value
    return None  # vsock:... and other forms are not supported here


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, newline-separated assignments) to ``$NOTIFY_SOCKET``.

    Returns True if a datagram was sent. Never raises: a service manager that went away must not
    take the daemon down; the failure is logged as a warning.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("NOTIFY_SOCKET")
    if not value:
        return False
    addr = _address(value)
    log = structlog.get_logger("tvixd.sdnotify")
    if addr is None:
        log.warning("unsupported NOTIFY_SOCKET address", notify_socket=value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode("utf-8"))
    except OSError as e:
        log.warning("sd_notify failed", notify_socket=value, state=state, error=str(e))
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Tell systemd the daemon is listening (``READY=1``, plus an optional ``STATUS=`` line)."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str | None = None) -> bool:
    """Tell systemd a shutdown has begun (``STOPPING=1``)."""
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))
