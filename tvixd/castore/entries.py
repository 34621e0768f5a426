"""Directory entries as plain tuples, decoded from (and a PathInfo encoded to) canonical protobuf bytes
without the protobuf library.

Why: ``tvixd dump-path`` on a SQLite store reads only canonical rows (the putter stored
``canonical_bytes``, and a row is used only if it hashes to its digest), and importing
``google.protobuf`` costs ~50 ms of its start-up (even with upb, ``descriptor_pool``
imports the pure-Python ``python_message`` and ``text_format``), a third of what nix takes
for a whole NAR of /usr/share/doc. Decoding a canonical row here costs about what upb's
decode plus reading the attributes costs (~0.9 µs per entry, measured on /usr/share/doc).

An entry is ``(kind, name, ref, size, executable)``:

- ``(DIRECTORY, name, digest, size, False)``: a DirectoryNode (``size``: its element count);
- ``(FILE, name, digest, size, executable)``: a FileNode;
- ``(SYMLINK, name, target, 0, False)``: a SymlinkNode.

The decoders accept exactly the canonical encoding of SPEC Part B §1.4 (fields in
order, defaults omitted, no unknown fields) and return ``None`` for anything else,
so the caller falls back to protobuf, which reads every valid wire form. The
encoder writes that same form (:func:`encode_imported_path_info`: what a one-file
``tvixd import`` stores, so it imports no protobuf either).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from tvixd.errors import InvalidRequest

if TYPE_CHECKING:

    from tvixd.castore.directory import AnyNode
    from tvixd.proto.castore_pb2 import Directory
    from tvixd.proto.pathinfo_pb2 import Node, PathInfo

DIRECTORY, FILE, SYMLINK = 0, 1, 2

Entry = tuple[int, bytes, bytes, int, bool]
T = TypeVar("T")


class PathInfoParts(
    NamedTuple(
        "PathInfoParts",
        [("root", Entry | None), ("references", list[bytes]), ("narinfo", tuple[int, bytes, list[str]] | None)],
    )
):
    """A PathInfo as plain values: the root node's entry (None: unset), the references, and the
    narinfo's ``(nar_size, nar_sha256, reference_names)`` (None: unset; signatures are left out).

    What `tvixd path-info` prints, read from a SQLite row without protobuf (:func:`decode_path_info`)
    and checked by ``tvixd.castore.pathinfo.validate_parts`` as the message would be.
    """

    __slots__ = ()

_DIGEST_LEN = 32
_TAG_KIND = {0x0A: DIRECTORY, 0x12: FILE, 0x1A: SYMLINK}
"""Directory.directories/files/symlinks and Node.directory/file/symlink share field numbers 1, 2, 3."""
_KIND_TAG = {kind: tag for tag, kind in _TAG_KIND.items()}


class _NotCanonical(Exception):
    """Internal: the bytes are not the canonical encoding (the public functions return None)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _NotCanonical


def _node(data: bytes, pos: int, stop: int, kind: int) -> Entry:
    """The node message ``data[pos:stop]`` of ``kind``: name (1), then digest (2) and size (3) and
    executable (4), or target (2) for a symlink, each present only if not the default.

    One-byte lengths and sizes (nearly all) are read inline: ~20% of decoding a directory.
    """
    if data[pos] != 0x0A:
        raise _NotCanonical  # a valid node always has a name
    n = data[pos + 1]
    if n & 0x80:
        n, pos = _varint(data, pos + 1)
    else:
        pos += 2
    name = data[pos : pos + n]
    pos += n
    if kind == SYMLINK:
        target = b""
        if pos < stop:
            if data[pos] != 0x12:
                raise _NotCanonical
            n, pos = _varint(data, pos + 1)
            target = data[pos : pos + n]
            pos += n
        if pos != stop or not name:
            raise _NotCanonical
        return (SYMLINK, name, target, 0, False)
    if data[pos] != 0x12 or data[pos + 1] != _DIGEST_LEN or pos + 2 + _DIGEST_LEN > stop:
        raise _NotCanonical
    digest = data[pos + 2 : pos + 2 + _DIGEST_LEN]
    pos += 2 + _DIGEST_LEN
    size = 0
    executable = False
    if pos < stop:
        if data[pos] == 0x18:
            size = data[pos + 1]
            if size & 0x80:
                size, pos = _varint(data, pos + 1)
            elif size:
                pos += 2
            else:
                raise _NotCanonical  # a default value is omitted, never written
        if kind == FILE and pos < stop and data[pos] == 0x20:
            if data[pos + 1] != 1:
                raise _NotCanonical
            executable = True
            pos += 2
    if pos != stop or not name:
        raise _NotCanonical
    return (kind, name, digest, size, executable)


_ONE_BYTE_VARINTS = [bytes((n,)) for n in range(0x80)]


def _encode_varint(n: int) -> bytes:
    # One- and two-byte values (names, digests, small files: nearly all) without a loop: encoding is
    # done twice per directory of an import (its digest, then the putter's check), ~4 -> ~2 µs per entry.
    if n < 0x80:
        return _ONE_BYTE_VARINTS[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_delimited(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _encode_varint(len(value)) + value


def _encode_node(entry: Entry) -> bytes:
    """The node message of ``entry`` (no field tag): its fields in order, defaults omitted."""
    kind, name, ref, size, executable = entry
    out = b"\x0a" + _encode_varint(len(name)) + name if name else b""
    if ref:
        out += b"\x12" + _encode_varint(len(ref)) + ref  # digest, or a symlink's target
    if kind != SYMLINK:
        if size:
            out += b"\x18" + _encode_varint(size)
        if kind == FILE and executable:
            out += b"\x20\x01"
    return out


class DirectoryValidationError(InvalidRequest):
    """A directory breaks one of the rules of SPEC Part B §3.1."""


UINT32_MAX = 2**32 - 1


def show_name(name: bytes) -> str:
    """A name for an error message: UTF-8 if it decodes, else base64 (as the reference does)."""
    try:
        return repr(name.decode())
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(name).decode()


def validate_name(name: bytes) -> None:
    """Reject names a directory entry can't have: empty, ``.``, ``..``, NUL or ``/`` inside."""
    # "/" and NUL as ints: a bytes operand of ``in`` costs a formatted-and-dropped TypeError (~0.9 µs) first.
    if not name or name in (b".", b"..") or 0 in name or 0x2F in name:
        raise DirectoryValidationError(f"invalid name {show_name(name)}")


def validate_lists(lists: Iterable[tuple[str, Iterable[tuple[bytes, bytes]]]]) -> None:
    """Raise :class:`DirectoryValidationError` unless a directory's lists are valid (SPEC Part B §3.1).

    ``lists``: ("directories" | "files" | "symlinks", its (name, digest or target) pairs). Rules,
    checked list by list, entry by entry, first failure wins: a valid name; a 32-byte digest (not
    for symlinks); names sorted bytewise within each list; no name twice across all lists. No
    order is required *between* the lists; symlink targets are not checked.
    """
    seen: set[bytes] = set()
    for kind, pairs in lists:
        previous = b""
        for name, ref in pairs:
            validate_name(name)
            if kind != "symlinks" and len(ref) != _DIGEST_LEN:
                raise DirectoryValidationError(f"{kind} entry {show_name(name)}: invalid digest length {len(ref)}")
            if name < previous:
                raise DirectoryValidationError(f"{kind} entry {show_name(name)} is not sorted")
            if name in seen:
                raise DirectoryValidationError(f"{show_name(name)} is a duplicate name")
            seen.add(name)
            previous = name


def validate_directory_entries(dirs: list[Entry], files: list[Entry], links: list[Entry]) -> None:
    """``validate_directory`` of the directory with these child lists (each of one kind, in name order);
    and each size fits the uint32 of the wire (a message's always does)."""
    lists = (("directories", dirs), ("files", files), ("symlinks", links))
    validate_lists((kind, [e[1:3] for e in entries]) for kind, entries in lists)
    for kind, entries in lists[:2]:
        for entry in entries:
            if not 0 <= entry[3] <= UINT32_MAX:
                raise DirectoryValidationError(f"{kind} entry {show_name(entry[1])}: size {entry[3]} is not a uint32")


def directory_entries_size(dirs: list[Entry], files: list[Entry], links: list[Entry]) -> int:
    """``directory_size`` of these child lists (see :func:`recursive_size`)."""
    return recursive_size(len(files) + len(links), (e[3] for e in dirs))


def recursive_size(leaves: int, child_sizes: Iterable[int]) -> int:
    """A directory's recursive element count: its files and symlinks (``leaves``) + Σ(1 + child size) over
    its child directories. Raises ``InvalidRequest`` when it does not fit the uint32 the wire uses (the
    reference would wrap or panic)."""
    size = leaves + sum(1 + s for s in child_sizes)
    if size > UINT32_MAX:
        raise InvalidRequest(f"directory size {size} does not fit in uint32")
    return size


def encode_directory(dirs: list[Entry], files: list[Entry], links: list[Entry]) -> bytes:
    """The canonical encoding of the Directory with these child lists, in their order: the bytes of
    protobuf's deterministic serialisation of that message (its digest is blake3 of them)."""
    parts = []
    for tag, entries in ((b"\x0a", dirs), (b"\x12", files), (b"\x1a", links)):
        for entry in entries:
            node = _encode_node(entry)
            parts += (tag, _encode_varint(len(node)), node)
    return b"".join(parts)


def imported_parts(root: Entry, nar_size: int, nar_sha256: bytes) -> PathInfoParts:
    """The parts of an import's PathInfo: root ``root``, no references, a narinfo of the NAR only."""
    return PathInfoParts(root, [], (nar_size, nar_sha256, []))


def imported_path_info(root: Entry, nar_size: int, nar_sha256: bytes) -> PathInfo:
    """The message of :func:`imported_parts` (imports protobuf)."""
    from tvixd.proto.pathinfo_pb2 import NARInfo, PathInfo

    return PathInfo(node=entry_node(root), narinfo=NARInfo(nar_size=nar_size, nar_sha256=nar_sha256))


def encode_imported_path_info(root: Entry, nar_size: int, nar_sha256: bytes) -> bytes:
    """The canonical encoding of a PathInfo whose node is ``root``, with no references and a narinfo
    of ``nar_size`` and ``nar_sha256`` only: the bytes of protobuf's deterministic serialisation of
    that message (an import's PathInfo)."""
    tag = _KIND_TAG[root[0]]
    node = _length_delimited(tag, _encode_node(root))
    narinfo = (b"\x08" + _encode_varint(nar_size) if nar_size else b"") + (
        _length_delimited(0x12, nar_sha256) if nar_sha256 else b""
    )
    return _length_delimited(0x0A, node) + _length_delimited(0x1A, narinfo)


def _fields(data: bytes) -> Iterable[tuple[int, int, int]]:
    """``(tag, start, stop)`` of each length-delimited field of a message (else _NotCanonical)."""
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        if tag & 0x87 != 2:  # one-byte tags of length-delimited fields only: all that is read (or skipped) here
            raise _NotCanonical
        n = data[pos + 1]
        pos += 2
        if n & 0x80:
            n, pos = _varint(data, pos - 1)
        stop = pos + n
        if stop > end:
            raise _NotCanonical
        yield tag, pos, stop
        pos = stop


def decode_directory(data: bytes) -> list[Entry] | None:
    """The entries of the canonically encoded Directory ``data``, in NAR order; None if not canonical."""
    lists: tuple[list[Entry], list[Entry], list[Entry]] = ([], [], [])
    pos, end, last = 0, len(data), DIRECTORY
    try:
        while pos < end:
            kind = _TAG_KIND.get(data[pos])
            n = data[pos + 1]
            if n & 0x80:
                n, pos = _varint(data, pos + 1)
            else:
                pos += 2
            stop = pos + n
            if kind is None or kind < last or stop > end:
                raise _NotCanonical  # an unknown field, the lists out of field order, or cut short
            last = kind
            lists[kind].append(_node(data, pos, stop, kind))
            pos = stop
    except (_NotCanonical, IndexError):
        return None
    return merge(*lists)


def decode_root_node(path_info: bytes) -> Entry | None:
    """The root node of the encoded PathInfo ``path_info`` (its field 1, a Node); None if there is
    not exactly one, in canonical form. The other fields are skipped, not checked."""
    root = None
    try:
        for tag, start, stop in _fields(path_info):
            if tag != 0x0A:
                continue
            if root is not None:
                raise _NotCanonical  # a repeated message field merges: leave that to protobuf
            root = _root(path_info, start, stop)
    except (_NotCanonical, IndexError, ValueError):
        return None
    return root


def _root(data: bytes, start: int, stop: int) -> Entry:
    """The Node message ``data[start:stop]`` (a PathInfo's field 1): its one set member as an entry."""
    ((kind_tag, node_start, node_stop),) = _fields(data[start:stop])
    kind = _TAG_KIND.get(kind_tag)
    if kind is None:
        raise _NotCanonical
    return _node(data, start + node_start, start + node_stop, kind)


def decode_path_info(data: bytes) -> PathInfoParts | None:
    """The parts of the canonically encoded PathInfo ``data``; None if it is not in canonical form
    (fields in order, each at most once but the repeated ones, no unknown fields) so the caller
    falls back to protobuf (also for a row with signatures, whose fields protobuf checks). Reference
    names must be UTF-8, as protobuf requires."""
    root: Entry | None = None
    references: list[bytes] = []
    narinfo = None
    last = 0
    try:
        for tag, start, stop in _fields(data):
            if tag < last or (tag == last and tag != 0x12) or tag > 0x1A:
                raise _NotCanonical
            last = tag
            if tag == 0x0A:
                root = _root(data, start, stop)
            elif tag == 0x12:
                references.append(data[start:stop])
            else:
                narinfo = _narinfo(data[start:stop])
    except (_NotCanonical, IndexError, ValueError):
        return None
    return PathInfoParts(root, references, narinfo)


def _narinfo(data: bytes) -> tuple[int, bytes, list[str]]:
    """NARInfo: nar_size (1, varint), nar_sha256 (2), reference_names (4); signatures (3): not here."""
    nar_size, pos, end = 0, 0, len(data)
    if end and data[0] == 0x08:
        nar_size, pos = _varint(data, 1)
        if not nar_size:
            raise _NotCanonical
    nar_sha256 = b""
    names: list[str] = []
    last = 0
    for tag, start, stop in _fields(data[pos:]):
        if tag < last or (tag == last and tag == 0x12) or tag not in (0x12, 0x22):
            raise _NotCanonical
        last = tag
        if tag == 0x12:
            nar_sha256 = data[pos + start : pos + stop]
        elif tag == 0x22:
            names.append(data[pos + start : pos + stop].decode())  # UnicodeDecodeError is a ValueError
    return nar_size, nar_sha256, names


def merge(dirs: list[Entry], files: list[Entry], links: list[Entry]) -> list[Entry]:
    """The three name-sorted lists of entries as one, in NAR order (see :func:`merged`).

    A directory of one kind of child is that list as it is.
    """
    if not files and not links:
        return dirs
    if not dirs and not links:
        return files
    if not dirs and not files:
        return links
    return list(merged(dirs, files, links, _entry_name))


_entry_name = itemgetter(1)


def merged(dirs: Sequence[T], files: Sequence[T], links: Sequence[T], name: Callable[[T], bytes]) -> Iterator[T]:
    """The three name-sorted lists of a directory (``name(item)``: an item's name) as one, in ascending
    bytewise name order (NAR order): for entry tuples (:func:`merge`) and for protobuf nodes
    (:func:`tvixd.castore.directory.directory_nodes`).

    The tie rule of SPEC §5.5 (a directory comes first only when strictly smaller, etc.) keeps
    invalid input (unsorted lists, a name twice) in a predictable order for the NAR writer to
    refuse. Each list's current name is read once.
    """
    i = j = k = 0
    nd, nf, ns = len(dirs), len(files), len(links)
    d = name(dirs[0]) if nd else None
    f = name(files[0]) if nf else None
    s = name(links[0]) if ns else None
    while d is not None or f is not None or s is not None:
        if d is not None and (f is None or d < f) and (s is None or d < s):
            yield dirs[i]
            i += 1
            d = name(dirs[i]) if i < nd else None
        elif f is not None and (d is None or d >= f) and (s is None or f < s):
            yield files[j]
            j += 1
            f = name(files[j]) if j < nf else None
        else:
            yield links[k]
            k += 1
            s = name(links[k]) if k < ns else None


def node_entry(node: AnyNode) -> Entry:
    """The entry of a protobuf DirectoryNode, FileNode or SymlinkNode (told apart by their fields)."""
    descriptor = node.DESCRIPTOR
    if descriptor.name == "SymlinkNode":
        return (SYMLINK, node.name, node.target, 0, False)
    if descriptor.name == "FileNode":
        return (FILE, node.name, node.digest, node.size, node.executable)
    return (DIRECTORY, node.name, node.digest, node.size, False)


def entry_node(entry: Entry) -> Node:
    """The protobuf Node (a PathInfo's root) of ``entry``: the inverse of ``node_entry(root_node(...))``."""
    from tvixd.proto.castore_pb2 import DirectoryNode, FileNode, SymlinkNode
    from tvixd.proto.pathinfo_pb2 import Node

    kind, name, ref, size, executable = entry
    if kind == SYMLINK:
        return Node(symlink=SymlinkNode(name=name, target=ref))
    if kind == FILE:
        return Node(file=FileNode(name=name, digest=ref, size=size, executable=executable))
    return Node(directory=DirectoryNode(name=name, digest=ref, size=size))


def directory_lists(directory: Directory) -> tuple[list[Entry], list[Entry], list[Entry]]:
    """The three child lists of a protobuf Directory as entries, each in the message's order."""
    return (
        [(DIRECTORY, d.name, d.digest, d.size, False) for d in directory.directories],
        [(FILE, f.name, f.digest, f.size, f.executable) for f in directory.files],
        [(SYMLINK, s.name, s.target, 0, False) for s in directory.symlinks],
    )


def directory_entries(directory: Directory) -> list[Entry]:
    """The entries of a protobuf Directory, in NAR order (for backends that hand out messages)."""
    return merge(*directory_lists(directory))
