"""The error vocabulary shared by every layer of tvixd.

Backends, the NAR renderer and the importer raise these; the gRPC layer maps
each class to exactly one status code (SPEC Part A §1) in one table
(``tvixd.server.status``), the CLI prints ``str(exc)`` as a one-line error.
Messages always name the offending digest, name, path or field.
"""

from __future__ import annotations


class TvixError(Exception):
    """Base class of every error tvixd raises on purpose."""


class InvalidRequest(TvixError):
    """The request itself is malformed (bad digest length, unsorted names, ...). gRPC: INVALID_ARGUMENT."""


class NotFound(TvixError):
    """A requested object (blob, directory, path info) does not exist. gRPC: NOT_FOUND."""


class FailedPrecondition(TvixError):
    """A well-formed request refers to content the store lacks. gRPC: FAILED_PRECONDITION."""


class ResourceExhausted(TvixError):
    """Disk full, or a configured limit was exceeded (the message names the limit). gRPC: RESOURCE_EXHAUSTED."""


class Unavailable(TvixError):
    """Transient backend trouble, e.g. a database still locked after the busy timeout. gRPC: UNAVAILABLE."""


class DataLoss(TvixError):
    """Stored data was found corrupt (bytes no longer hash to their name). gRPC: DATA_LOSS."""


class Unimplemented(TvixError):
    """A feature the protocol names but tvixd does not provide (e.g. bao). gRPC: UNIMPLEMENTED."""


class StorageError(TvixError):
    """A backend failed for a reason not covered above (I/O error, remote failure). gRPC: INTERNAL.

    Only bugs and unclassifiable backend failures end up here; anything that can be
    classified uses one of the classes above.
    """


class AlreadyClosed(TvixError):
    """A writer or putter was used after ``close()``."""
