"""Read-side commands named like Nix's: ``dump-path``, ``path-info``, ``ls``, ``cat``.

Paths inside a store path are resolved like Nix's store accessor does: the whole
path is canonicalised first (``.``, ``..``, repeated ``/``), symlinks in the middle
of a path are followed (relative ones inside their directory, absolute ones into
whatever store path they name), the last component is never followed.

On a SQLite store none of these commands imports protobuf (~50 ms of start-up): path infos
and directories are read as plain values and entry tuples (``tvixd.castore.entries``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from tvixd.cli.common import add_store_args
from tvixd.store import StoreAddrs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tvixd.blobservice.base import BlobReader, VerifiedBlob
    from tvixd.castore.entries import Entry, PathInfoParts
    from tvixd.castore.storepath import StorePath
    from tvixd.store import Store

MAX_SYMLINK_HOPS = 40
"""Like the kernel's ELOOP limit: a chain of symlinks longer than this is an error."""

OUT_BUFFER = 1 << 20
"""stdout is written in pieces of this size (NARs and file contents are streamed)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``dump-path``, ``path-info``, ``ls`` and ``cat``."""
    p = subparsers.add_parser(
        "dump-path",
        help="write the NAR of a store path to stdout",
        description="Write the NAR serialisation of STORE_PATH (or of a path inside it) to stdout, "
        "like `nix store dump-path` / `nix-store --dump`.",
    )
    p.add_argument("path", metavar="STORE_PATH")
    add_store_args(p, StoreAddrs.daemon())
    p.set_defaults(func=run_dump_path)

    p = subparsers.add_parser(
        "path-info",
        help="show the metadata of store paths",
        description="Print each STORE_PATH (plain), or like `nix path-info --json` a JSON list of "
        "objects with path, narHash, narSize and references. Exit status 1 if any path is missing.",
    )
    p.add_argument("paths", nargs="*", metavar="STORE_PATH")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--all", action="store_true", help="all paths in the store")
    add_store_args(p, StoreAddrs.daemon())
    p.set_defaults(func=run_path_info)

    p = subparsers.add_parser(
        "ls",
        help="list a directory inside a store path",
        description="List STORE_PATH[/sub/path] like `nix store ls`.",
    )
    p.add_argument("path", metavar="STORE_PATH[/sub/path]")
    p.add_argument("-l", "--long", action="store_true", help="show type, permissions and size")
    p.add_argument("-R", "--recursive", action="store_true", help="list subdirectories recursively")
    p.add_argument("-d", "--directory", action="store_true", help="show directories rather than their contents")
    p.add_argument("--json", action="store_true", help="print a JSON object (like `nix store ls --json`)")
    add_store_args(p, StoreAddrs.daemon())
    p.set_defaults(func=run_ls)

    p = subparsers.add_parser(
        "cat",
        help="print a file inside a store path",
        description="Write the contents of the regular file STORE_PATH/sub/file to stdout, like `nix store cat`.",
    )
    p.add_argument("path", metavar="STORE_PATH/sub/file")
    add_store_args(p, StoreAddrs.daemon())
    p.set_defaults(func=run_cat)


# --- resolution -------------------------------------------------------------------------------------


def lookup_path_info(store: Store, path: str) -> tuple[PathInfoParts, str]:
    """The PathInfo (as plain values) of the store path that ``path`` starts with, and the rest of ``path``.

    ``NotFound`` if the store path is not in the store (also when a path info is stored
    under the digest but for a different name: that is a different store path).
    """
    from tvixd.castore.storepath import StorePath

    store_path, rest = StorePath.from_absolute_path_full(path)
    parts = store.path_info.get_parts(store_path.digest)
    _stored_root(store_path, None if parts is None else parts.root)
    assert parts is not None
    return parts, rest


def _stored_root(store_path: StorePath, root: Entry | None) -> Entry:
    """``root`` if it is the root of ``store_path`` (a path info stored under the digest for another name
    is another store path), else ``NotFound``."""
    from tvixd.errors import NotFound

    if root is None or root[1] != str(store_path).encode():
        raise NotFound(f"path '{store_path.absolute()}' is not in the store")
    return root


def _canon(path: str) -> str:
    import posixpath

    if not path.startswith("/"):
        from tvixd.errors import InvalidRequest

        raise InvalidRequest(f"'{path}' is not an absolute path")
    path = posixpath.normpath(path)
    return path[1:] if path.startswith("//") else path  # POSIX keeps a leading "//"; Nix doesn't


def _children(store: Store, directory: Entry) -> list[Entry]:
    """The entries of the directory entry ``directory``, in NAR order (read without protobuf from SQLite)."""
    from tvixd.castore.digest import B3Digest
    from tvixd.errors import NotFound

    entries = store.directory.get_entries(directory[2])
    if entries is None:
        raise NotFound(f"directory {B3Digest(directory[2])} is missing from the store")
    return entries


def resolve(store: Store, path: str, hops: int = 0) -> Entry | None:
    """The entry at ``path`` (``/nix/store/<hash>-<name>[/sub...]``), or ``None`` if nothing is there.

    Intermediate symlinks are followed as Nix's accessor does; the last component is not.
    """
    import os

    from tvixd.castore.entries import DIRECTORY, SYMLINK
    from tvixd.castore.storepath import STORE_DIR
    from tvixd.errors import InvalidRequest

    path = _canon(path)
    parts, rest = lookup_path_info(store, path)
    assert parts.root is not None  # checked by lookup_path_info
    entry = parts.root
    store_root = f"{STORE_DIR}/{entry[1].decode()}"
    components = [os.fsencode(c) for c in rest.split("/") if c]
    for i, name in enumerate(components):
        if entry[0] == SYMLINK:
            if hops >= MAX_SYMLINK_HOPS:
                raise InvalidRequest(f"{path}: too many levels of symbolic links")
            target = os.fsdecode(entry[2])
            # The link sits at components[i - 1] (or is the store path itself, when i == 0).
            parent = "/".join([store_root, *(os.fsdecode(c) for c in components[: i - 1])]) if i else STORE_DIR
            remaining = "/".join(os.fsdecode(c) for c in components[i:])
            new = (target if target.startswith("/") else f"{parent}/{target}") + "/" + remaining
            return resolve(store, new, hops + 1)
        if entry[0] != DIRECTORY:
            return None
        child = next((e for e in _children(store, entry) if e[1] == name), None)
        if child is None:
            return None
        entry = child
    return entry


def _resolve_existing(store: Store, path: str) -> Entry:
    from tvixd.errors import NotFound

    entry = resolve(store, path)
    if entry is None:
        raise NotFound(f"path '{path}' does not exist")
    return entry


def _stdout() -> object:
    """A large-buffered binary stdout (writes of at least OUT_BUFFER go straight through)."""
    return open(sys.stdout.fileno(), "wb", buffering=OUT_BUFFER, closefd=False)


def _stdout_sink() -> Callable[[bytes | memoryview], None]:
    """A sink writing straight to fd 1, for a writer that buffers small pieces itself (the NAR writer).

    Why not :func:`_stdout`: a BufferedWriter copies every write smaller than its buffer into it,
    so each file's contents were copied once more (memcpy was 11% of `dump-path`'s instructions
    on /usr/share/doc). A short write (a pipe interrupted by a signal) is continued.
    """
    import os

    fd, write = sys.stdout.fileno(), os.write

    def sink(data: bytes | memoryview) -> None:
        n = write(fd, data)
        if n != len(data):
            rest = memoryview(data)[n:]
            while rest:
                rest = rest[write(fd, rest) :]

    return sink


def _broken_pipe() -> int:
    """The reader went away (``| head``): stop quietly, as cat does."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


# --- commands ---------------------------------------------------------------------------------------


def _dump_root(store: Store, path: str) -> Entry:
    """The node ``dump-path`` writes: a whole store path's root read without protobuf
    (:meth:`PathInfoService.get_root_entry`), a path inside one resolved as ``ls`` does."""
    from tvixd.castore.storepath import StorePath

    path = _canon(path)
    store_path, rest = StorePath.from_absolute_path_full(path)
    if rest:
        return _resolve_existing(store, path)
    return _stored_root(store_path, store.path_info.get_root_entry(store_path.digest))


def run_dump_path(args: argparse.Namespace) -> int:
    """Stream the NAR of a store path (or a path inside one) to stdout."""
    import gc

    from tvixd.cli.common import open_store
    from tvixd.nar import write_nar

    # The walk allocates only acyclic objects (entries, blob contents) that reference counting frees;
    # the collector would only rescan the closure's entries again and again (~1% of the instructions).
    gc.disable()
    with open_store(args) as store:
        node = _dump_root(store, args.path)
        try:
            write_nar(_stdout_sink(), node, store.blob, store.directory)
        except BrokenPipeError:
            return _broken_pipe()
    return 0


def path_info_json(parts: PathInfoParts) -> dict[str, object]:
    """One object of ``nix path-info --json``: path, narHash (sha256:<nixbase32>), narSize, references."""
    from tvixd.castore import nixbase32
    from tvixd.castore.storepath import STORE_DIR

    root, references, narinfo = parts
    assert root is not None  # checked when read
    obj: dict[str, object] = {"path": f"{STORE_DIR}/{root[1].decode()}"}
    if narinfo is not None:
        nar_size, nar_sha256, reference_names = narinfo
        obj["narHash"] = "sha256:" + nixbase32.encode(nar_sha256)
        obj["narSize"] = nar_size
        obj["references"] = [f"{STORE_DIR}/{name}" for name in reference_names]
    else:
        obj["references"] = [f"{STORE_DIR}/{nixbase32.encode(ref)}" for ref in references]
    return obj


def run_path_info(args: argparse.Namespace) -> int:
    """Print store paths (or their metadata as JSON); missing ones are errors on stderr.

    Each is read as plain values (``get_parts``): from a SQLite store without protobuf.
    """
    from tvixd.castore.storepath import STORE_DIR
    from tvixd.cli.common import open_store
    from tvixd.errors import TvixError

    failed = 0
    found: list[PathInfoParts] = []
    with open_store(args) as store:
        if args.all:
            from tvixd.castore.pathinfo import path_info_parts

            found.extend(path_info_parts(info) for info in store.path_info.list())
        for path in args.paths:
            try:
                parts, rest = lookup_path_info(store, _canon(path))
                if rest:
                    raise TvixError(f"'{path}' is a path inside a store path, not a store path")
            except TvixError as e:
                failed += 1
                print(f"tvixd path-info: error: {e}", file=sys.stderr, flush=True)
                continue
            found.append(parts)
    if args.json:
        import json  # only here: ~2 ms of a plain `path-info`

        print(json.dumps([path_info_json(parts) for parts in found]))
    else:
        for parts in found:
            assert parts.root is not None
            print(f"{STORE_DIR}/{parts.root[1].decode()}")
    return 1 if failed else 0


def _long_line(entry: Entry, rel: bytes) -> bytes:
    from tvixd.castore.entries import DIRECTORY, FILE

    kind, _, ref, size, executable = entry
    if kind == FILE:
        mode = b"-r-xr-xr-x" if executable else b"-r--r--r--"
    else:
        mode, size = (b"dr-xr-xr-x" if kind == DIRECTORY else b"lrwxrwxrwx"), 0
    line = mode + b" " + str(size).rjust(20).encode() + b" " + rel
    if kind not in (FILE, DIRECTORY):
        line += b" -> " + ref
    return line


def _ls_lines(store: Store, entry: Entry, rel: bytes, long: bool, recursive: bool, show_dir: bool) -> Iterator[bytes]:
    """Lines of ``nix store ls`` (its doPath/showFile pair, transcribed)."""
    from tvixd.castore.entries import DIRECTORY

    def show_file(e: Entry, r: bytes) -> Iterator[bytes]:
        yield _long_line(e, r) if long else r
        if recursive and e[0] == DIRECTORY:
            yield from do_path(e, r, False)

    def do_path(e: Entry, r: bytes, show_directory: bool) -> Iterator[bytes]:
        if e[0] == DIRECTORY and not show_directory:
            for child in _children(store, e):
                yield from show_file(child, r + b"/" + child[1])
        else:
            yield from show_file(e, r)

    yield from do_path(entry, rel, show_dir)


def _ls_json(store: Store, entry: Entry, recursive: bool) -> dict[str, object]:
    """The object of ``nix store ls --json`` (Nix's listNar)."""
    from tvixd.castore.entries import DIRECTORY, FILE

    kind, _, ref, size, executable = entry
    if kind == FILE:
        obj: dict[str, object] = {"type": "regular", "size": size}
        if executable:
            obj["executable"] = True
        return obj
    if kind == DIRECTORY:
        entries = {
            child[1].decode("utf-8", "surrogateescape"): (_ls_json(store, child, True) if recursive else {})
            for child in _children(store, entry)
        }
        return {"type": "directory", "entries": entries}
    return {"type": "symlink", "target": ref.decode("utf-8", "surrogateescape")}


def run_ls(args: argparse.Namespace) -> int:
    """List a node like ``nix store ls`` (plain, ``-l``, ``-R``, ``-d`` or ``--json``)."""
    import json
    import posixpath

    from tvixd.castore.entries import DIRECTORY
    from tvixd.cli.common import open_store
    from tvixd.errors import InvalidRequest

    if args.json and args.directory:
        raise InvalidRequest("'--directory' is useless with '--json'")
    with open_store(args) as store:
        node = _resolve_existing(store, args.path)
        out = _stdout()
        try:
            if args.json:
                text = json.dumps(_ls_json(store, node, args.recursive), ensure_ascii=False, separators=(",", ":"))
                out.write(text.encode("utf-8", "surrogateescape"))  # type: ignore[attr-defined]
            else:
                rel = b"." if node[0] == DIRECTORY else posixpath.basename(_canon(args.path)).encode()
                for line in _ls_lines(store, node, rel, args.long, args.recursive, args.directory):
                    out.write(line + b"\n")  # type: ignore[attr-defined]
            out.flush()  # type: ignore[attr-defined]
        except BrokenPipeError:
            return _broken_pipe()
    return 0


def run_cat(args: argparse.Namespace) -> int:
    """Stream the contents of a regular file inside a store path to stdout."""
    from tvixd.castore.digest import B3Digest
    from tvixd.castore.entries import FILE
    from tvixd.cli.common import open_store
    from tvixd.errors import InvalidRequest, NotFound

    with open_store(args) as store:
        kind, _, digest, size, _ = _resolve_existing(store, args.path)
        if kind != FILE:
            raise InvalidRequest(f"path '{args.path}' is not a regular file")
        missing = f"blob {B3Digest(digest)} of '{args.path}' is missing from the store"
        try:
            # fs://: the whole blob is verified before its first byte is written, then written from its mappings.
            blob = store.blob.open_verified(digest, size)
        except NotImplementedError:  # a remote store: its reader verifies as it streams (the last chunk last)
            reader = store.blob.open_read(digest)
            if reader is None:
                raise NotFound(missing) from None
            chunks: Iterator[bytes | memoryview] = iter(lambda: reader.read(OUT_BUFFER), b"")
            closing: VerifiedBlob | BlobReader = reader
        else:
            if blob is None:
                raise NotFound(missing)
            chunks, closing = blob.windows(), blob
        out = _stdout()
        try:
            with closing:
                for chunk in chunks:
                    out.write(chunk)  # type: ignore[attr-defined]
            out.flush()  # type: ignore[attr-defined]
        except BrokenPipeError:
            return _broken_pipe()
    return 0
