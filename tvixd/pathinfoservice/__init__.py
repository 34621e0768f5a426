"""PathInfo services: ``base`` is the contract, one module per backend, ``from_addr`` builds one from a URL."""

from tvixd.pathinfoservice.base import PathInfoService

__all__ = ["PathInfoService"]
