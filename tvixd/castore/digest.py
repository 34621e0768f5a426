"""B3Digest: the 32-byte blake3 digest that names blobs and directories."""

from __future__ import annotations

import binascii

import blake3

DIGEST_LEN = 32


class B3Digest(bytes):
    """A blake3-256 digest: ``bytes`` of length exactly 32.

    A ``bytes`` subclass so it can be stored in protobuf fields, used as a dict
    key and compared with plain bytes at no cost; constructing one is the
    length check. ``str()`` gives ``b3:<base64>``, the form used in every error
    message and log line (as the reference does).
    """

    __slots__ = ()

    def __new__(cls, value: bytes) -> B3Digest:
        if isinstance(value, B3Digest):
            return value
        if len(value) != DIGEST_LEN:
            from tvixd.errors import InvalidRequest

            raise InvalidRequest(f"invalid digest length: {len(value)}")
        return super().__new__(cls, value)

    @classmethod
    def of(cls, data: bytes) -> B3Digest:
        """The blake3 digest of ``data``."""
        return super().__new__(cls, blake3.blake3(data).digest())

    def __str__(self) -> str:
        # base64.b64encode is this call; the base64 module (with struct) was ~1 ms of every command's start-up
        return "b3:" + binascii.b2a_base64(self, newline=False).decode()

    def __repr__(self) -> str:
        return f"B3Digest({self})"


EMPTY_DIGEST = B3Digest.of(b"")
"""blake3 of the empty string: both the empty blob and the empty Directory."""


def display_digest(value: bytes) -> str:
    """``b3:<base64>`` for a 32-byte digest, a descriptive fallback for anything else.

    Used in error messages about digests that may be malformed.
    """
    if len(value) == DIGEST_LEN:
        return str(B3Digest(value))
    return f"<invalid digest of {len(value)} bytes: {value.hex()}>"
