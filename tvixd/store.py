"""A Store bundles the three services, built from their addresses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tvixd.errors import TvixError

if TYPE_CHECKING:  # the service ABCs pull in protobuf and blake3: not at start-up (`tvixd --help`)
    from tvixd.blobservice.base import BlobService
    from tvixd.directoryservice.base import DirectoryService
    from tvixd.pathinfoservice.base import PathInfoService

DAEMON_ADDR = "grpc+http://[::1]:8000"
"""Where the client commands (import, dump-path, ...) find the daemon by default."""


class StateDirError(TvixError):
    """The state directory cannot be created or written (the message is one line)."""


def default_state_dir() -> Path:
    """Where the embedded store lives when nothing else is configured.

    ``$STATE_DIRECTORY`` under systemd (``StateDirectory=tvixd``), ``/var/lib/tvixd``
    for root, else ``$XDG_DATA_HOME/tvixd`` (``~/.local/share/tvixd``).
    """
    if state := os.environ.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(state.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/tvixd")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "tvixd"


def ensure_state_dir(path: Path) -> Path:
    """Create the state directory (mode 0700: the store is private to its user) and prove it writable.

    An existing directory keeps its mode (the operator's or systemd's ``StateDirectoryMode=``).
    Raises :class:`StateDirError` with a one-line message when it cannot be created or written.
    """
    import tempfile

    hint = "(set [store] state_dir, $TVIXD_STATE_DIR or $STATE_DIRECTORY, or the --*-service-addr flags)"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A real write, not os.access(): root passes access() on read-only file systems.
        with tempfile.TemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        raise StateDirError(f"state directory {path} is not usable: {e.strerror or e} {hint}") from None
    return path


@dataclass(frozen=True)
class StoreAddrs:
    """The three service addresses (URLs) of one store."""

    blob: str
    directory: str
    path_info: str

    @classmethod
    def embedded(cls, state_dir: Path) -> StoreAddrs:
        """The embedded store in ``state_dir``: a blob directory plus one SQLite file for the rest."""
        db = f"sqlite://{state_dir / 'store.sqlite'}"
        return cls(blob=f"fs://{state_dir / 'blobs'}", directory=db, path_info=db)

    @classmethod
    def daemon(cls, addr: str = DAEMON_ADDR) -> StoreAddrs:
        """All three services of the daemon at ``addr``."""
        return cls(blob=addr, directory=addr, path_info=addr)


@dataclass
class Store:
    """The three services of one store; ``close()`` releases all of them."""

    blob: BlobService
    directory: DirectoryService
    path_info: PathInfoService

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
