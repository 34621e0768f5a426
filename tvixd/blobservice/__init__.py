"""Blob services: ``base`` is the contract, one module per backend, ``from_addr`` builds one from a URL."""

from tvixd.blobservice.base import BlobReader, BlobService, BlobWriter

__all__ = ["BlobReader", "BlobService", "BlobWriter"]
