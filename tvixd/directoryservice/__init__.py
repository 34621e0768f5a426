"""Directory services: ``base`` is the contract, one module per backend, ``from_addr`` builds one from a URL."""

from tvixd.directoryservice.base import DirectoryPutter, DirectoryService

__all__ = ["DirectoryPutter", "DirectoryService"]
