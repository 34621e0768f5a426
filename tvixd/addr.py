"""Parsing of service addresses (URLs), shared by the three ``from_addr`` modules.

The rules are the reference's (SPEC Part B §7.1) translated to our schemes;
``urllib.parse.urlsplit`` gives the same scheme/host/path split as rust-url for
every form we accept (netloc ``''`` means "no host"). Paths are taken literally
(no percent-decoding): addresses come from the operator, and
``StoreAddrs.embedded`` builds them by plain string formatting.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

from tvixd.errors import InvalidRequest


class Url(NamedTuple("Url", [("scheme", str), ("netloc", str), ("path", str), ("query", str), ("fragment", str)])):
    """The five parts of ``urllib.parse.urlsplit``'s result (all that the checks here read).

    The functional form, as ``StoreAddrs``: the class form compiles each field's type at import.
    """

    __slots__ = ()


_LOCAL_SCHEMES = frozenset(("fs", "sqlite", "memory"))
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-._~+,=@:")
"""Characters urlsplit neither strips, removes nor treats specially (no ``?``, ``#``, ``[``, ``%``, spaces)."""


def parse(addr: str) -> Url:
    """Split ``addr``; a string without a scheme (e.g. ``foo``) is refused, as the reference does."""
    url = _split_plain(addr)
    if url is not None:
        return url
    from urllib.parse import urlsplit  # ~3 ms of start-up (with ipaddress) that a plain local address skips

    try:
        url = Url._make(urlsplit(addr))
    except ValueError as e:
        raise InvalidRequest(f"unable to parse url {addr!r}: {e}") from e
    if not url.scheme:
        raise InvalidRequest(f"unable to parse url {addr!r}: relative URL without a base (no scheme)")
    return url


def _split_plain(addr: str) -> Url | None:
    """urlsplit's result for a local address of plain characters (``fs:///var/lib/tvixd/blobs``), else None."""
    scheme, colon, rest = addr.partition(":")
    if not colon or scheme not in _LOCAL_SCHEMES or not _PLAIN.issuperset(rest):
        return None
    netloc = ""
    if rest.startswith("//"):
        netloc, slash, path = rest[2:].partition("/")
        rest = slash + path
    return Url(scheme, netloc, rest, "", "")


def _no_query(addr: str, url: Url) -> None:
    if url.query or url.fragment:
        raise InvalidRequest(f"invalid url {addr!r}: query and fragment are not supported")


def check_memory(addr: str, url: Url) -> None:
    """``memory://`` or ``memory:``: no host, empty path (so ``memory:///`` is refused)."""
    if url.netloc:
        raise InvalidRequest(f"invalid url {addr!r}: memory:// takes no host ({url.netloc!r})")
    if url.path:
        raise InvalidRequest(f"invalid url {addr!r}: memory:// takes no path ({url.path!r})")
    _no_query(addr, url)


def fs_path(addr: str, url: Url) -> str:
    """``fs:///abs/dir``: no host, an absolute path other than ``/``."""
    if url.netloc:
        raise InvalidRequest(f"invalid url {addr!r}: invalid host {url.netloc!r} (use fs:///absolute/path)")
    _no_query(addr, url)
    if not url.path.startswith("/"):
        raise InvalidRequest(f"invalid url {addr!r}: fs:// needs an absolute directory path (fs:///abs/dir)")
    if url.path.strip("/") == "":
        raise InvalidRequest(f"invalid url {addr!r}: cowardly refusing to use / as the blob directory")
    return url.path


def sqlite_path(addr: str, url: Url) -> str | None:
    """``sqlite:///abs/file`` → the path; ``sqlite://`` / ``sqlite:`` → ``None`` (a temporary database)."""
    if url.netloc:
        raise InvalidRequest(f"invalid url {addr!r}: invalid host {url.netloc!r} (use sqlite:///absolute/path)")
    _no_query(addr, url)
    if not url.path:
        return None
    if not url.path.startswith("/"):
        raise InvalidRequest(f"invalid url {addr!r}: sqlite:// needs an absolute file path (sqlite:///abs/file)")
    if url.path.endswith("/"):
        raise InvalidRequest(f"invalid url {addr!r}: cowardly refusing to open a directory as a database")
    return url.path


def grpc_from_url(service_package: str, addr: str) -> Any:
    """Build the gRPC client backend of ``tvixd.<service_package>.grpc`` (imported lazily: grpcio is heavy)."""
    module = importlib.import_module(f"tvixd.{service_package}.grpc")
    return module.from_url(addr)


def unknown_scheme(addr: str, url: Url, accepted: str) -> InvalidRequest:
    """The error for a scheme this service has no backend for."""
    return InvalidRequest(f"unknown scheme {url.scheme!r} in {addr!r} (accepted: {accepted})")
