"""The NAR writer: streaming, constant memory, exactly the bytes of SPEC Part B §5.2.

NAR is a sequence of "strings" (8-byte little-endian length, bytes, zero padding to a
multiple of 8). Everything except file contents, symlink targets and entry names is
one of a handful of fixed token runs, pre-built here once; a node costs one or two
``sink`` calls, and file contents go straight through to the sink without copying.

Small writes are collected in a buffer (at most ``buffer_size`` bytes) so a tree of
many tiny files does not become thousands of tiny writes on a socket or pipe; the
buffer is flushed when the root node is closed, when it fills, and before any
file chunk of 4 KiB or more (which is written through).

The writer is driven in NAR order by the renderer (``tvixd.nar``) and the importer::

    w = NarWriter(sink)
    w.directory_start()
    w.entry_start(b"a"); w.file(3, False, [b"abc"]); w.entry_end()
    w.entry_start(b"b"); w.symlink(b"a"); w.entry_end()
    w.directory_end()

A file or symlink entry whose contents are at hand can be written in one call,
``w.entry_file(b"a", b"abc", False)`` / ``w.entry_symlink(b"b", b"a")`` (same bytes,
same checks): the renderer's per-entry fast path, ~2.4 µs instead of ~6 µs per entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tvixd.errors import DataLoss, InvalidRequest, StorageError

Sink = Callable[[bytes], object]


def nar_string(token: bytes) -> bytes:
    """One NAR string: u64 LE length, the bytes, zero padding to a multiple of 8."""
    return len(token).to_bytes(8, "little") + token + b"\0" * (-len(token) % 8)


def _strs(*tokens: bytes) -> bytes:
    return b"".join(nar_string(t) for t in tokens)


# The constant runs of nix-compat's writer (SPEC §5.2), with their lengths as checked by the tests.
TOK_START = _strs(b"nix-archive-1", b"(", b"type")  # 56: the NAR header and the root's "( type"
TOK_REG = _strs(b"regular", b"contents")  # 32
TOK_EXE = _strs(b"regular", b"executable", b"", b"contents")  # 64
TOK_SYM = _strs(b"symlink", b"target")  # 32
TOK_DIR = _strs(b"directory")  # 24
TOK_ENTRY = _strs(b"entry", b"(", b"name")  # 48
TOK_NODE = _strs(b"node", b"(", b"type")  # 48
TOK_PAR = _strs(b")")  # 16

_PAD = [b"\0" * i for i in range(8)]
# Padding plus the node's ")" in one write, for each content length mod 8.
_PAD_CLOSE = [_PAD[-i % 8] + TOK_PAR for i in range(8)]
# The same plus the enclosing entry's ")": the end of a whole file or symlink entry.
_PAD_CLOSE_ENTRY = [p + TOK_PAR for p in _PAD_CLOSE]

WRITE_THROUGH = 4096
"""File chunks at least this long skip the buffer and go to the sink as they are."""

# Per-directory states.
_IDLE, _AWAITING_NODE, _NODE_DONE = 0, 1, 2


class NarError(InvalidRequest):
    """The tree cannot be written as a NAR: an invalid entry name, or names not strictly increasing."""


class NarSizeError(DataLoss):
    """A file's contents did not have the size that was declared for it (the FileNode's ``size``).

    ``expected`` is the declared size; ``actual`` the bytes seen (for "too long", the
    count at the moment the excess showed, a lower bound).
    """

    def __init__(self, message: str, expected: int, actual: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class NarStateError(StorageError):
    """The writer was driven out of NAR order (a bug in the caller, not bad data)."""


class NarWriter:
    """Writes one NAR to ``sink`` (a callable taking bytes), node by node in NAR order.

    Only the root node has no ``entry_start``; every node inside a directory is
    wrapped in ``entry_start(name)`` ... ``entry_end()``, names strictly increasing
    bytewise. Files are written with :meth:`file` or, when the caller produces the
    contents piecewise, :meth:`file_start` / :meth:`file_chunk` / :meth:`file_end`;
    either way the contents must be exactly the declared size (:class:`NarSizeError`).
    """

    __slots__ = ("_buf", "_buffer_size", "_done", "_expected", "_remaining", "_sink", "_stack", "_started")

    def __init__(self, sink: Sink, buffer_size: int = 64 * 1024) -> None:
        self._sink = sink
        self._buffer_size = buffer_size
        self._buf = bytearray()
        # One [last entry name, state] per open directory, innermost last.
        self._stack: list[list] = []
        self._started = False
        self._done = False
        self._remaining: int | None = None  # bytes still due for the open file, None outside a file
        self._expected = 0

    # --- output -------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if len(buf) >= self._buffer_size:
            self.flush()

    def flush(self) -> None:
        """Hand everything buffered to the sink (done automatically when the root node closes)."""
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._sink(data)

    @property
    def finished(self) -> bool:
        """True once the root node is closed: the NAR is complete and flushed."""
        return self._done

    # --- node bookkeeping ---------------------------------------------------------------------------

    def _begin_node(self, what: str) -> None:
        if self._remaining is not None:
            raise NarStateError(f"NAR writer: {what} while a file is still open")
        if self._stack:
            frame = self._stack[-1]
            if frame[1] != _AWAITING_NODE:
                raise NarStateError(f"NAR writer: {what} inside a directory without entry_start()")
            frame[1] = _NODE_DONE
            return  # entry_start() already wrote "node ( type"
        if self._started:
            raise NarStateError(f"NAR writer: {what} after the root node was written")
        self._started = True
        self._write(TOK_START)

    def _node_closed(self) -> None:
        if not self._stack:
            self._done = True
            self.flush()

    # --- nodes --------------------------------------------------------------------------------------

    def symlink(self, target: bytes) -> None:
        """A symlink node. The target is written as given (the reference does not check it either)."""
        self._begin_node("symlink")
        n = len(target)
        self._write(TOK_SYM + n.to_bytes(8, "little") + target + _PAD_CLOSE[n & 7])
        self._node_closed()

    def file(self, size: int, executable: bool, chunks: Iterable[bytes]) -> None:
        """A regular file of exactly ``size`` bytes, given as ``chunks``."""
        self.file_start(size, executable)
        for chunk in chunks:
            self.file_chunk(chunk)
        self.file_end()

    def file_start(self, size: int, executable: bool) -> None:
        """Open a regular file node of ``size`` bytes; contents follow via :meth:`file_chunk`."""
        if size < 0 or size >= 1 << 64:
            raise NarError(f"invalid NAR file size {size}")
        self._begin_node("file")
        self._write((TOK_EXE if executable else TOK_REG) + size.to_bytes(8, "little"))
        self._remaining = self._expected = size

    def file_chunk(self, data: bytes) -> None:
        """The next piece of the open file's contents (any length, may be empty)."""
        remaining = self._remaining
        if remaining is None:
            raise NarStateError("NAR writer: file_chunk() without file_start()")
        n = len(data)
        if n > remaining:
            self._remaining = None
            seen = self._expected - remaining + n
            raise NarSizeError(
                f"file contained more data than declared: declared {self._expected} bytes, got at least {seen}",
                self._expected,
                seen,
            )
        self._remaining = remaining - n
        if n >= WRITE_THROUGH:
            self.flush()
            self._sink(data)
        elif n:
            self._write(data)

    def file_end(self) -> None:
        """Close the open file; raises :class:`NarSizeError` if fewer bytes came than declared."""
        remaining = self._remaining
        if remaining is None:
            raise NarStateError("NAR writer: file_end() without file_start()")
        self._remaining = None
        if remaining:
            got = self._expected - remaining
            raise NarSizeError(
                f"file is shorter than declared: declared {self._expected} bytes, got {got}", self._expected, got
            )
        self._write(_PAD_CLOSE[self._expected & 7])
        self._node_closed()

    def directory_start(self) -> None:
        """Open a directory node; its entries follow, then :meth:`directory_end`."""
        self._begin_node("directory")
        self._write(TOK_DIR)
        self._stack.append([None, _IDLE])

    def _next_entry(self, name: bytes, what: str) -> list:
        """Check that an entry ``name`` may start now (state, name, order); record it; return its frame."""
        stack = self._stack
        if not stack or self._remaining is not None:
            raise NarStateError(f"NAR writer: {what} outside a directory")
        frame = stack[-1]
        if frame[1] != _IDLE:
            raise NarStateError(f"NAR writer: {what} before the previous entry_end()")
        # Inline (once per entry), and "/" and NUL tested as ints: ``b"/" in name`` makes CPython try the bytes
        # as an int first and format a TypeError it then drops, ~0.9 µs per test (~10% of rendering a small file).
        if not name or 0x2F in name or 0 in name or name in (b".", b".."):
            raise NarError(f"invalid NAR entry name {bytes(name)!r}")
        previous = frame[0]
        if previous is not None and name <= previous:
            raise NarError(f"NAR entry names must strictly increase: {bytes(name)!r} after {previous!r}")
        frame[0] = bytes(name)
        return frame

    def entry_start(self, name: bytes) -> None:
        """Start the entry ``name`` of the open directory; exactly one node must follow."""
        self._next_entry(name, "entry_start()")[1] = _AWAITING_NODE
        n = len(name)
        self._write(TOK_ENTRY + n.to_bytes(8, "little") + name + _PAD[-n & 7] + TOK_NODE)

    def entry_file(self, name: bytes, data: bytes, executable: bool) -> None:
        """A whole entry holding a regular file whose contents are all in ``data``.

        The bytes of ``entry_start(name)``, ``file(len(data), executable, [data])``,
        ``entry_end()``, with one check and one buffer append instead of six calls:
        most store files are small, and per-entry work bounds rendering trees of them.
        """
        self._next_entry(name, "entry_file()")
        n = len(name)
        size = len(data)
        buf = self._buf
        buf += TOK_ENTRY + n.to_bytes(8, "little") + name + _PAD[-n & 7] + TOK_NODE
        buf += (TOK_EXE if executable else TOK_REG) + size.to_bytes(8, "little")
        if size >= WRITE_THROUGH:
            self.flush()
            self._sink(data)
        else:
            buf += data
        buf += _PAD_CLOSE_ENTRY[size & 7]
        if len(buf) >= self._buffer_size:
            self.flush()

    def entry_symlink(self, name: bytes, target: bytes) -> None:
        """A whole entry holding a symlink: ``entry_start(name)``, ``symlink(target)``, ``entry_end()`` in one call."""
        self._next_entry(name, "entry_symlink()")
        n = len(name)
        t = len(target)
        self._write(
            TOK_ENTRY + n.to_bytes(8, "little") + name + _PAD[-n & 7] + TOK_NODE
            + TOK_SYM + t.to_bytes(8, "little") + target + _PAD_CLOSE_ENTRY[t & 7]
        )  # fmt: skip

    def entry_end(self) -> None:
        """Close the current entry (after its node)."""
        if not self._stack or self._stack[-1][1] != _NODE_DONE or self._remaining is not None:
            raise NarStateError("NAR writer: entry_end() without a completed entry node")
        self._stack[-1][1] = _IDLE
        self._write(TOK_PAR)

    def directory_end(self) -> None:
        """Close the innermost open directory."""
        if not self._stack or self._stack[-1][1] != _IDLE or self._remaining is not None:
            raise NarStateError("NAR writer: directory_end() with no open directory or inside an entry")
        self._stack.pop()
        self._write(TOK_PAR)
        self._node_closed()


class NarHashSink:
    """A sink counting bytes and feeding sha256: the NAR size and hash without keeping the NAR."""

    __slots__ = ("_hash", "size")

    def __init__(self) -> None:
        import hashlib  # here: `dump-path` never hashes a NAR, and _hashlib costs ~3 ms of its start-up

        self.size = 0
        self._hash = hashlib.sha256()

    def __call__(self, data: bytes) -> None:
        self.size += len(data)
        self._hash.update(data)

    def sha256(self) -> bytes:
        """The 32-byte sha256 of everything written so far."""
        return self._hash.digest()

    def result(self) -> tuple[int, bytes]:
        """``(nar_size, nar_sha256)``, as CalculateNAR answers."""
        return self.size, self._hash.digest()
