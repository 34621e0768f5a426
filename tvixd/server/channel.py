"""Client channels for ``grpc+http://``, ``grpc+https://`` and ``grpc+unix://`` addresses (SPEC §7.1).

One process usually opens the three client backends on the same address
(``StoreAddrs.daemon``); they share one channel (one HTTP/2 connection,
multiplexed), reference-counted so the last ``close`` closes it. Channels are
created on first use, so building a backend never fails for lack of a daemon.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from tvixd import errors
from tvixd.server.status import error_for

# The client trusts the daemon it was pointed at: no receive cap of its own, so a
# Directory the daemon accepted under its (configurable) limit can always be read back.
CLIENT_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]

# How a client tells "nothing listens there" from an UNAVAILABLE the daemon chose to send.
_CONNECT_FAILURES = ("failed to connect", "connection refused", "dns resolution failed", "no such file",
                     "connect failed", "socket closed", "connection reset")
GRPC_TOO_LARGE = "larger than max"
"""grpcio's words (RESOURCE_EXHAUSTED) for a message over the receiver's size limit."""


@dataclass(frozen=True)
class GrpcTarget:
    """A parsed ``grpc+`` address: what grpcio dials and whether it uses TLS."""

    url: str
    target: str
    tls: bool


def parse_grpc_url(url: str) -> GrpcTarget:
    """Check a ``grpc+`` URL per SPEC §7.1 and turn it into a grpcio target.

    - ``grpc+unix:///abs/path.sock``: no host; the path is the socket (may be empty,
      which fails on first use, as in the reference).
    - ``grpc+http://host[:port]``, ``grpc+https://host[:port]``: no path (not even
      ``/``); default ports 80 and 443; https means TLS with the system roots
      (grpcio honours ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` for a private CA).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme.startswith("grpc+"):
        raise errors.InvalidRequest(f"{url!r}: invalid scheme {scheme or '(none)'!r}, expected grpc+http, "
                                    "grpc+https or grpc+unix")
    if parts.query or parts.fragment:
        raise errors.InvalidRequest(f"{url!r}: a grpc address takes no query or fragment")
    if scheme == "grpc+unix":
        if parts.netloc:
            raise errors.InvalidRequest(f"{url!r}: host may not be set for grpc+unix (use grpc+unix:///abs/path)")
        return GrpcTarget(url=url, target=f"unix:{parts.path}", tls=False)
    if scheme not in ("grpc+http", "grpc+https"):
        raise errors.InvalidRequest(f"{url!r}: unknown scheme {scheme!r}, expected grpc+http, grpc+https or "
                                    "grpc+unix")
    if parts.path:
        raise errors.InvalidRequest(f"{url!r}: path may not be set for {scheme} (got {parts.path!r})")
    if not parts.hostname:
        raise errors.InvalidRequest(f"{url!r}: missing host")
    tls = scheme == "grpc+https"
    try:
        port = parts.port
    except ValueError as e:
        raise errors.InvalidRequest(f"{url!r}: invalid port: {e}") from None
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    return GrpcTarget(url=url, target=f"{host}:{port or (443 if tls else 80)}", tls=tls)


class SharedChannel:
    """A lazily opened channel shared by every client backend on the same address."""

    _registry: dict[GrpcTarget, SharedChannel] = {}
    _registry_lock = threading.Lock()

    def __init__(self, target: GrpcTarget) -> None:
        self.target = target
        self._channel: grpc.Channel | None = None
        self._users = 0
        self._lock = threading.Lock()
        self.blob_batch = True
        """Whether the server has tvixd's BlobBatchService: assumed until it answers UNIMPLEMENTED."""

    @classmethod
    def acquire(cls, url: str) -> SharedChannel:
        """The shared channel for ``url`` (validated now, connected on first use)."""
        target = parse_grpc_url(url)
        with cls._registry_lock:
            shared = cls._registry.get(target)
            if shared is None:
                shared = cls._registry[target] = cls(target)
            shared._users += 1
            return shared

    def get(self) -> grpc.Channel:
        """The grpcio channel, opened on first call."""
        channel = self._channel
        if channel is None:
            with self._lock:
                if self._channel is None:
                    if self.target.tls:
                        creds = grpc.ssl_channel_credentials()
                        self._channel = grpc.secure_channel(self.target.target, creds, options=CLIENT_OPTIONS)
                    else:
                        self._channel = grpc.insecure_channel(self.target.target, options=CLIENT_OPTIONS)
                channel = self._channel
        return channel

    def release(self) -> None:
        """Drop one user; the last one closes the channel."""
        with self._registry_lock:
            self._users -= 1
            if self._users > 0:
                return
            if SharedChannel._registry.get(self.target) is self:
                del SharedChannel._registry[self.target]
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def error(self, exc: BaseException) -> errors.TvixError:
        """The tvixd error for a failed call on this channel (one line, naming the address when unreachable)."""
        if isinstance(exc, errors.TvixError):
            return exc
        if not isinstance(exc, grpc.RpcError):
            return errors.StorageError(f"{self.target.url}: {type(exc).__name__}: {exc}")
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE and any(s in (details or "").lower() for s in _CONNECT_FAILURES):
            why = " ".join((details or "").split())
            if "connection refused" in why.lower():
                why = "connection refused"
            return errors.Unavailable(
                f"no tvixd daemon reachable at {self.target.url} ({why}); start one with `tvixd daemon`, "
                "or use an embedded store: --blob-service-addr fs:///DIR/blobs --directory-service-addr "
                "sqlite:///DIR/store.sqlite --path-info-service-addr sqlite:///DIR/store.sqlite "
                "(or the env vars BLOB_SERVICE_ADDR, DIRECTORY_SERVICE_ADDR, PATH_INFO_SERVICE_ADDR)"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and GRPC_TOO_LARGE in (details or ""):
            details = f"{details} (over the daemon's message size limit, tvixd daemon --max-message-size)"
        return error_for(code, details)
