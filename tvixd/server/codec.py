"""Hand-rolled BlobChunk encoding: the one message that carries bulk bytes.

``BlobChunk`` is a single ``bytes data = 1`` field, so its wire form is
``0x0a <varint len> <data>`` (nothing at all for empty data). Going through
the protobuf runtime costs two extra copies of every chunk on each side
(build the message, serialize it; parse it, read ``.data``); encoding by hand
costs one concatenation, decoding costs none (a memoryview slice). Anything
that is not exactly that shape (unknown fields, repeated ``data`` fields,
which protobuf merges by "last one wins") goes through the protobuf runtime,
so the result is always what ``BlobChunk.FromString`` would give.
Measured effect: see BENCHMARKS.md (grpc section).
"""

from __future__ import annotations

from tvixd.proto.rpc_blobstore_pb2 import BlobChunk

_TAG_DATA = 0x0A  # field 1, wire type 2 (length-delimited)


class Chunk:
    """A BlobChunk as the fast paths use it: just ``.data`` (a memoryview or bytes)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data


def serialize_blob_chunk(chunk: Chunk | BlobChunk) -> bytes:
    """gRPC response/request serializer for BlobChunk that takes a :class:`Chunk` or a real message."""
    return encode_blob_chunk(chunk.data)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_blob_chunk(data: bytes | bytearray | memoryview) -> bytes:
    """The serialized BlobChunk carrying ``data`` (identical to ``BlobChunk(data=data).SerializeToString()``)."""
    if not len(data):
        return b""
    return b"".join((bytes((_TAG_DATA,)), _varint(len(data)), data))


def decode_blob_chunk(raw: bytes) -> memoryview:
    """The ``data`` of a serialized BlobChunk, without copying when it has the usual shape.

    Raises ``google.protobuf.message.DecodeError`` for malformed input, like ``FromString``.
    """
    view = memoryview(raw)
    if not raw:
        return view
    if raw[0] == _TAG_DATA:
        length, shift, pos = 0, 0, 1
        while pos < len(raw) and pos < 11:
            b = raw[pos]
            length |= (b & 0x7F) << shift
            pos += 1
            if not b & 0x80:
                if pos + length == len(raw):
                    return view[pos:]
                break
            shift += 7
    return memoryview(BlobChunk.FromString(raw).data)
