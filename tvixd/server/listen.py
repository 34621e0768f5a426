"""Listen addresses without grpc: parsing ``-l`` values, and probing TCP ports before serving.

Kept free of grpc so the multi-process supervisor (:mod:`tvixd.server.supervisor`) can check and
resolve its addresses before it forks the serving processes (grpc is not fork-safe once initialised).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from tvixd import errors


@dataclass(frozen=True)
class BindSpec:
    """One socket to bind: ``address`` as grpcio takes it; ``optional`` ones may fail (a missing IP family)."""

    address: str
    optional: bool = False
    all_interfaces: bool = False


def parse_listen_address(value: str) -> list[BindSpec]:
    """Turn one ``-l`` value into sockets to bind.

    ``localhost:PORT`` means both loopbacks (127.0.0.1 and [::1]; a host without
    one of the families still starts); ``IP:PORT`` and ``[IPv6]:PORT`` bind that
    address (``0.0.0.0`` / ``[::]`` = all interfaces); ``unix:/path`` a Unix
    socket. Port 0 picks a free port (logged in the "listening" line).
    """
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise errors.InvalidRequest(f"listen address {value!r}: empty unix socket path")
        return [BindSpec(f"unix:{path}")]
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise errors.InvalidRequest(f"listen address {value!r}: expected HOST:PORT, [IPv6]:PORT or unix:/path")
    try:
        port = int(port_s)
    except ValueError:
        raise errors.InvalidRequest(f"listen address {value!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise errors.InvalidRequest(f"listen address {value!r}: port {port} out of range")
    if host == "localhost":
        return [BindSpec(f"127.0.0.1:{port}", optional=True), BindSpec(f"[::1]:{port}", optional=True)]
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        if ":" in bare or not bare.replace("-", "").replace(".", "").isalnum():
            raise errors.InvalidRequest(f"listen address {value!r}: invalid host {host!r}") from None
        return [BindSpec(f"{host}:{port}")]  # a host name: grpcio resolves it
    if ip.version == 6 and not host.startswith("["):
        raise errors.InvalidRequest(f"listen address {value!r}: put IPv6 addresses in brackets, e.g. [::1]:8000")
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    return [BindSpec(f"{shown}:{port}", all_interfaces=ip.is_unspecified)]


def family_available(address: str) -> bool:
    """Whether this host can bind the loopback of ``address``'s IP family at all (IPv6 may be disabled)."""
    family, host = (socket.AF_INET6, "::1") if address.startswith("[") else (socket.AF_INET, "127.0.0.1")
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


def _sockaddr(address: str) -> tuple[int, tuple]:
    """``(family, sockaddr)`` to bind for a ``host:port`` / ``[v6]:port`` BindSpec address."""
    host, _, port_s = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    info = socket.getaddrinfo(host, int(port_s), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = info[0]
    return family, sockaddr


def probe_port(address: str) -> int:
    """Bind ``address`` once without SO_REUSEPORT and return the port it got (a port 0 becomes a free one).

    SO_REUSEADDR is set as grpc sets it, so only a listener (anyone's, our own serving processes
    included) makes this fail, not connections of a previous daemon in TIME_WAIT. Raises
    ``InvalidRequest`` "cannot listen on ADDRESS: ..." like ``build_server``.
    """
    try:
        family, sockaddr = _sockaddr(address)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
            return probe.getsockname()[1]
    except OSError as e:
        raise errors.InvalidRequest(f"cannot listen on {address}: {e.strerror or e} (address in use?)") from None


def resolve_shared(listen_addresses: list[str]) -> list[str]:
    """The concrete TCP addresses several serving processes bind together (with SO_REUSEPORT).

    Each address is probed first (:func:`probe_port`), so a port something already listens on
    fails here with the single-process daemon's "cannot listen on" error instead of being shared
    silently; port 0 is resolved once, so every process binds the same free port (``localhost:0``:
    the same one on both loopbacks). ``unix:`` sockets cannot be shared by several processes:
    refused, naming the setting.
    """
    out: list[str] = []
    for value in listen_addresses:
        localhost_port = 0
        for spec in parse_listen_address(value):
            if spec.address.startswith("unix:"):
                raise errors.InvalidRequest(
                    f"listen address {value!r}: a unix socket cannot be shared by several serving processes; "
                    "use daemon.processes = 1 (--processes 1) or TCP addresses only")
            address = spec.address
            if spec.optional and localhost_port and address.endswith(":0"):
                address = f"{address[:-2]}:{localhost_port}"
            if spec.optional and not family_available(address):
                continue  # e.g. [::1] with IPv6 off, as build_server does
            port = probe_port(address)
            if spec.optional:
                localhost_port = port
            out.append(f"{address.rsplit(':', 1)[0]}:{port}")
    if not out:
        raise errors.InvalidRequest(f"could not bind any of {', '.join(listen_addresses)}")
    return out
