"""A strict, streaming NAR parser: bytes in, events out, in constant memory.

The NAR grammar is SPEC Part B §5.2. The parser accepts exactly what the
nix-compat writer (and Nix) produce and nothing else, so that a NAR we accept
re-renders to the very same bytes (and therefore the same NarHash):

- every string is framed as 8-byte little-endian length, bytes, zero padding
  to a multiple of 8 — non-zero padding is an error;
- tokens appear in exactly the writer's order (``executable`` + ``""`` before
  ``contents``; no other token orders Nix's lenient parser tolerates);
- directory entry names are valid (non-empty, not ``.``/``..``, no ``/`` or
  NUL, at most 255 bytes) and strictly increasing bytewise (so unique);
- symlink targets are non-empty, without NUL, at most 4095 bytes;
- nothing may follow the root node.

Memory use does not depend on the input: file contents are passed through in
chunks of at most ``chunk_size`` bytes, tokens and names are bounded, and the
only state is the stack of open directories (one previous name per level).

Events, in NAR order (``name`` is ``b""`` for the root node):
``DirectoryStart(name)``, ``DirectoryEnd(name)``, ``Symlink(name, target)``,
``FileStart(name, size, executable)``, then the contents as ``FileChunk(data)``
events (none for an empty file), then ``FileEnd(name)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tvixd.errors import InvalidRequest

NAME_MAX = 255
"""Longest entry name accepted (Linux NAME_MAX; the writer's limit, SPEC §5.2)."""
TARGET_MAX = 4095
"""Longest symlink target accepted (Linux PATH_MAX - 1; the writer's limit)."""
_TOKEN_MAX = 16
"""No grammar token is longer than this ("nix-archive-1" is 13 bytes)."""
DEFAULT_CHUNK_SIZE = 1 << 20
_READ_AHEAD = 64 * 1024
_ZEROS = bytes(8)


class NarParseError(InvalidRequest):
    """The byte stream is not a well-formed NAR; the message names the offset and the rule broken."""


@dataclass(frozen=True, slots=True)
class DirectoryStart:
    name: bytes


@dataclass(frozen=True, slots=True)
class DirectoryEnd:
    name: bytes


@dataclass(frozen=True, slots=True)
class Symlink:
    name: bytes
    target: bytes


@dataclass(frozen=True, slots=True)
class FileStart:
    name: bytes
    size: int
    executable: bool


@dataclass(frozen=True, slots=True)
class FileChunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class FileEnd:
    name: bytes


NarEvent = DirectoryStart | DirectoryEnd | Symlink | FileStart | FileChunk | FileEnd


class _Source:
    """Exact reads over a ``read(n)`` callable that may return short reads, with a small read-ahead buffer."""

    __slots__ = ("_buf", "_pos", "_read", "offset")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buf = b""
        self._pos = 0
        self.offset = 0  # bytes consumed by the parser so far (for error messages)

    def exact(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes, or NarParseError naming ``what`` was cut short."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            out = self._buf[self._pos : self._pos + n]
            self._pos += n
            self.offset += n
            return out
        parts = [self._buf[self._pos :]]
        need = n - avail
        self._buf, self._pos = b"", 0
        while need > 0:
            data = self._read(max(need, _READ_AHEAD))
            if not data:
                raise NarParseError(f"NAR truncated at offset {self.offset + n - need} while reading {what}")
            if len(data) > need:
                parts.append(data[:need])
                self._buf, self._pos = data, need
                need = 0
            else:
                parts.append(data)
                need -= len(data)
        self.offset += n
        return b"".join(parts)

    def upto(self, n: int, what: str) -> bytes:
        """Between 1 and ``n`` bytes (n > 0): whatever is buffered, else one read; NarParseError at EOF."""
        if self._pos < len(self._buf):
            out = self._buf[self._pos : self._pos + n]
            self._pos += len(out)
        else:
            out = self._read(n)
            if not out:
                raise NarParseError(f"NAR truncated at offset {self.offset} while reading {what}")
            if len(out) > n:  # a reader that ignored the size hint
                self._buf, self._pos = out, n
                out = out[:n]
        self.offset += len(out)
        return out

    def at_eof(self) -> bool:
        """Whether the input has ended (consumes nothing the parser could still need)."""
        if self._pos < len(self._buf):
            return False
        data = self._read(1)
        if data:
            self._buf, self._pos = data, 0
            return False
        return True


def _u64(src: _Source, what: str) -> int:
    return int.from_bytes(src.exact(8, what), "little")


def _padding(src: _Source, length: int, what: str) -> None:
    pad = -length % 8
    if pad:
        start = src.offset
        if src.exact(pad, what) != _ZEROS[:pad]:
            raise NarParseError(f"non-zero padding after {what} at offset {start}")


def _string(src: _Source, limit: int, what: str) -> bytes:
    """One framed string of at most ``limit`` bytes (checked before reading it)."""
    start = src.offset
    length = _u64(src, f"the length of {what}")
    if length > limit:
        raise NarParseError(f"{what} at offset {start} is {length} bytes long, more than the limit of {limit}")
    data = src.exact(length, what)
    _padding(src, length, what)
    return data


def _expect(src: _Source, token: bytes) -> None:
    start = src.offset
    got = _string(src, _TOKEN_MAX, f"token {token.decode()!r}")
    if got != token:
        raise NarParseError(f"expected {token.decode()!r} at offset {start}, found {_show(got)}")


def _show(data: bytes) -> str:
    return repr(data.decode("utf-8", "backslashreplace"))


def _validate_name(name: bytes, offset: int) -> None:
    # "/" and NUL as ints: a bytes operand of ``in`` costs a formatted-and-dropped TypeError (~0.9 µs) first.
    if not name or name in (b".", b"..") or 0x2F in name or 0 in name:
        raise NarParseError(f"invalid entry name {_show(name)} at offset {offset}")


def _validate_target(target: bytes, offset: int) -> None:
    if not target:
        raise NarParseError(f"empty symlink target at offset {offset}")
    if 0 in target:
        raise NarParseError(f"symlink target {_show(target)} at offset {offset} contains a NUL byte")


def parse_nar(read: Callable[[int], bytes], chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[NarEvent]:
    """Parse the NAR read through ``read(n)`` (a file's ``read``), yielding events in order.

    Raises :class:`NarParseError` (an ``InvalidRequest``) at the first byte that
    breaks the grammar; events yielded before that describe a prefix only, so a
    consumer must not commit anything until the generator is exhausted.
    """
    src = _Source(read)
    _expect(src, b"nix-archive-1")
    _expect(src, b"(")
    # An explicit stack instead of recursion: depth is bounded only by the input.
    # Each frame is [directory name, previous entry name] of an open directory.
    stack: list[list[bytes]] = []
    name = b""
    while True:
        # One node; its "(" has been consumed already (root: above; entries: "node" "(").
        _expect(src, b"type")
        type_offset = src.offset
        kind = _string(src, _TOKEN_MAX, "the node type")
        if kind == b"regular":
            tok_offset = src.offset
            tok = _string(src, _TOKEN_MAX, "'executable' or 'contents'")
            executable = tok == b"executable"
            if executable:
                empty_offset = src.offset
                if _string(src, _TOKEN_MAX, "the empty string after 'executable'") != b"":
                    raise NarParseError(f"expected an empty string after 'executable' at offset {empty_offset}")
                _expect(src, b"contents")
            elif tok != b"contents":
                raise NarParseError(f"expected 'executable' or 'contents' at offset {tok_offset}, found {_show(tok)}")
            size = _u64(src, "the file size")
            yield FileStart(name, size, executable)
            remaining = size
            while remaining:
                data = src.upto(min(remaining, chunk_size), "file contents")
                remaining -= len(data)
                yield FileChunk(data)
            _padding(src, size, "file contents")
            yield FileEnd(name)
            _expect(src, b")")
            closed = True
        elif kind == b"symlink":
            _expect(src, b"target")
            target_offset = src.offset
            target = _string(src, TARGET_MAX, "the symlink target")
            _validate_target(target, target_offset)
            yield Symlink(name, target)
            _expect(src, b")")
            closed = True
        elif kind == b"directory":
            yield DirectoryStart(name)
            stack.append([name, b""])
            closed = False
        else:
            raise NarParseError(f"unknown node type {_show(kind)} at offset {type_offset}")

        # Find the next node: inside a directory, another entry or the directory's ")".
        while stack:
            frame = stack[-1]
            if closed:  # the node just finished was an entry's child: close the entry
                _expect(src, b")")
            tok_offset = src.offset
            tok = _string(src, _TOKEN_MAX, "'entry' or ')'")
            if tok == b"entry":
                _expect(src, b"(")
                _expect(src, b"name")
                name_offset = src.offset
                name = _string(src, NAME_MAX, "an entry name")
                _validate_name(name, name_offset)
                if name <= frame[1]:
                    raise NarParseError(
                        f"entry name {_show(name)} at offset {name_offset} is not strictly greater than "
                        f"the previous entry {_show(frame[1])}"
                    )
                frame[1] = name
                _expect(src, b"node")
                _expect(src, b"(")
                break
            if tok != b")":
                raise NarParseError(f"expected 'entry' or ')' at offset {tok_offset}, found {_show(tok)}")
            stack.pop()
            yield DirectoryEnd(frame[0])
            closed = True
        if not stack:
            break
    if not src.at_eof():
        raise NarParseError(f"trailing data after the end of the NAR at offset {src.offset}")
