"""A Store bundles the three services, built from their addresses.

No ``dataclasses`` or ``pathlib`` here: every command imports this module at start-up, and
``dataclasses`` (which imports ``inspect``) and ``pathlib`` cost 12-17 ms and ~5 ms of it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from tvixd.errors import TvixError

if TYPE_CHECKING:  # the service ABCs pull in protobuf and blake3: not at start-up (`tvixd --help`)
    from os import PathLike

    from tvixd.blobservice.base import BlobService
    from tvixd.directoryservice.base import DirectoryService
    from tvixd.pathinfoservice.base import PathInfoService

    StrPath = str | PathLike[str]

DAEMON_ADDR = "grpc+http://[::1]:8000"
"""Where the client commands (import, dump-path, ...) find the daemon by default."""


class StateDirError(TvixError):
    """The state directory cannot be created or written (the message is one line)."""


def default_state_dir() -> str:
    """Where the embedded store lives when nothing else is configured.

    ``$STATE_DIRECTORY`` under systemd (``StateDirectory=tvixd``), ``/var/lib/tvixd``
    for root, else ``$XDG_DATA_HOME/tvixd`` (``~/.local/share/tvixd``).
    """
    if state := os.environ.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated directories; the first is ours.
        return state.split(":")[0]
    if os.geteuid() == 0:
        return "/var/lib/tvixd"
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data_home, "tvixd")


def ensure_state_dir(path: StrPath) -> StrPath:
    """Create the state directory (mode 0700: the store is private to its user) and prove it writable.

    An existing directory keeps its mode (the operator's or systemd's ``StateDirectoryMode=``).
    Raises :class:`StateDirError` with a one-line message when it cannot be created or written.
    """
    import tempfile

    hint = "(set [store] state_dir, $TVIXD_STATE_DIR or $STATE_DIRECTORY, or the --*-service-addr flags)"
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)  # the mode applies to the last directory only
        # A real write, not os.access(): root passes access() on read-only file systems.
        with tempfile.TemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        raise StateDirError(f"state directory {path} is not usable: {e.strerror or e} {hint}") from None
    return path


class StoreAddrs(NamedTuple("StoreAddrs", [("blob", str), ("directory", str), ("path_info", str)])):
    """The three service addresses (URLs) of one store: ``blob``, ``directory``, ``path_info``.

    The functional form: with ``from __future__ import annotations`` the class form hands
    NamedTuple its field types as strings, and it compiles each one (``ForwardRef``) at
    import, ~1.5 ms of every command's start-up.
    """

    __slots__ = ()

    @classmethod
    def embedded(cls, state_dir: StrPath) -> StoreAddrs:
        """The embedded store in ``state_dir``: a blob directory plus one SQLite file for the rest."""
        db = f"sqlite://{os.path.join(state_dir, 'store.sqlite')}"
        return cls(blob=f"fs://{os.path.join(state_dir, 'blobs')}", directory=db, path_info=db)

    @classmethod
    def daemon(cls, addr: str = DAEMON_ADDR) -> StoreAddrs:
        """All three services of the daemon at ``addr``."""
        return cls(blob=addr, directory=addr, path_info=addr)


class Store:
    """The three services of one store; ``close()`` releases all of them."""

    def __init__(self, blob: BlobService, directory: DirectoryService, path_info: PathInfoService) -> None:
        self.blob = blob
        self.directory = directory
        self.path_info = path_info

    @classmethod
    def open(cls, addrs: StoreAddrs) -> Store:
        """Build the three services; the path info service gets the other two."""
        from tvixd.blobservice.from_addr import from_addr as blob_from_addr
        from tvixd.directoryservice.from_addr import from_addr as directory_from_addr
        from tvixd.pathinfoservice.from_addr import from_addr as path_info_from_addr

        blob = blob_from_addr(addrs.blob)
        directory = directory_from_addr(addrs.directory)
        path_info = path_info_from_addr(addrs.path_info, blob, directory)
        return cls(blob=blob, directory=directory, path_info=path_info)

    def close(self) -> None:
        self.path_info.close()
        self.directory.close()
        self.blob.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
