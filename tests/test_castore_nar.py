"""The NAR writer (SPEC Part B §5.1-§5.3): exact bytes, size arithmetic, padding, streaming, errors."""

from __future__ import annotations

import hashlib
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures import (
    HELLOWORLD_BLOB,
    NAR_CONTENTS_COMPLICATED,
    NAR_CONTENTS_HELLOWORLD,
    NAR_CONTENTS_SYMLINK,
)
from tvixd.castore import nar
from tvixd.castore.nar import NarError, NarHashSink, NarSizeError, NarStateError, NarWriter
from tvixd.errors import DataLoss, InvalidRequest


def frame(token: bytes) -> bytes:
    """A NAR string, written here independently of the writer."""
    return len(token).to_bytes(8, "little") + token + bytes((8 - len(token) % 8) % 8)


def frames(*tokens: bytes) -> bytes:
    return b"".join(frame(t) for t in tokens)


def pad8(n: int) -> int:
    return (n + 7) // 8 * 8


class Collect:
    """A sink keeping every write (to check both the bytes and how they were delivered)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.writes.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


# --- an independent model of a tree: grammar-based rendering and §5.3 size arithmetic ------------------


@dataclass
class File:
    contents: bytes
    executable: bool = False


@dataclass
class Link:
    target: bytes


@dataclass
class Dir:
    entries: dict[bytes, File | Link | Dir] = field(default_factory=dict)


Tree = File | Link | Dir


def grammar_tokens(node: Tree) -> list[bytes]:
    """SPEC §5.2's grammar, token by token: node := ( type body )."""
    if isinstance(node, File):
        exe = [b"executable", b""] if node.executable else []
        return [b"(", b"type", b"regular", *exe, b"contents", node.contents, b")"]
    if isinstance(node, Link):
        return [b"(", b"type", b"symlink", b"target", node.target, b")"]
    out = [b"(", b"type", b"directory"]
    for name in sorted(node.entries):
        out += [b"entry", b"(", b"name", name, b"node", *grammar_tokens(node.entries[name]), b")"]
    return [*out, b")"]


def grammar_nar(node: Tree) -> bytes:
    return frames(b"nix-archive-1", *grammar_tokens(node))


def body_size(node: Tree) -> int:
    """SPEC §5.3: the bytes between a node's "( type" and its ")"."""
    if isinstance(node, File):
        return (64 if node.executable else 32) + 8 + pad8(len(node.contents))
    if isinstance(node, Link):
        return 32 + 8 + pad8(len(node.target))
    return 24 + sum(48 + 8 + pad8(len(name)) + 48 + body_size(child) + 16 + 16 for name, child in node.entries.items())


def nar_size(node: Tree) -> int:
    return 56 + body_size(node) + 16


def write_tree(w: NarWriter, node: Tree, chunk: int = 5, whole: bool = False) -> None:
    """Drive the writer over the tree (file contents in ``chunk``-byte pieces).

    ``whole``: file and symlink entries go through ``entry_file``/``entry_symlink`` (the renderer's way).
    """
    if isinstance(node, File):
        c = node.contents
        w.file(len(c), node.executable, (c[i : i + chunk] for i in range(0, len(c), chunk)))
    elif isinstance(node, Link):
        w.symlink(node.target)
    else:
        w.directory_start()
        for name in sorted(node.entries):
            child = node.entries[name]
            if whole and isinstance(child, File):
                w.entry_file(name, child.contents, child.executable)
            elif whole and isinstance(child, Link):
                w.entry_symlink(name, child.target)
            else:
                w.entry_start(name)
                write_tree(w, child, chunk, whole)
                w.entry_end()
        w.directory_end()


def render(node: Tree, chunk: int = 5, buffer_size: int = 64 * 1024, whole: bool = False) -> bytes:
    sink = Collect()
    w = NarWriter(sink, buffer_size=buffer_size)
    write_tree(w, node, chunk, whole)
    assert w.finished
    return sink.data


def random_tree(rng: random.Random, depth: int = 0) -> Tree:
    kind = rng.random()
    if depth > 3 or kind < 0.35:
        return File(rng.randbytes(rng.choice([0, 1, 7, 8, 9, 15, 16, 17, rng.randrange(5000)])), rng.random() < 0.3)
    if kind < 0.5:
        return Link(rng.randbytes(rng.randrange(1, 40)).replace(b"\0", b"x"))
    names = {bytes(rng.choice(b"abcAB.-_ \xc3\xa9") for _ in range(rng.randrange(1, 12))) for _ in range(5)}
    names -= {b".", b".."}
    return Dir({n: random_tree(rng, depth + 1) for n in names if rng.random() < 0.8})


COMPLICATED = Dir({b".keep": File(b""), b"aa": Link(b"/nix/store/somewhereelse"), b"keep": Dir({b".keep": File(b"")})})


# --- constants ------------------------------------------------------------------------------------


def test_token_runs() -> None:
    assert nar.TOK_START == frames(b"nix-archive-1", b"(", b"type")
    assert nar.TOK_REG == frames(b"regular", b"contents")
    assert nar.TOK_EXE == frames(b"regular", b"executable", b"", b"contents")
    assert nar.TOK_SYM == frames(b"symlink", b"target")
    assert nar.TOK_DIR == frames(b"directory")
    assert nar.TOK_ENTRY == frames(b"entry", b"(", b"name")
    assert nar.TOK_NODE == frames(b"node", b"(", b"type")
    assert nar.TOK_PAR == frames(b")")
    lengths = [len(t) for t in (nar.TOK_START, nar.TOK_REG, nar.TOK_EXE, nar.TOK_SYM, nar.TOK_DIR)]
    assert lengths == [56, 32, 64, 32, 24]
    assert [len(nar.TOK_ENTRY), len(nar.TOK_NODE), len(nar.TOK_PAR)] == [48, 48, 16]
    assert frame(b"") == bytes(8)


# --- the fixtures, byte for byte ----------------------------------------------------------------------


def test_symlink_fixture() -> None:
    out = render(Link(b"/nix/store/somewhereelse"))
    assert out == NAR_CONTENTS_SYMLINK
    assert len(out) == 136
    assert hashlib.sha256(out).hexdigest() == "097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1"


def test_helloworld_fixture() -> None:
    out = render(File(HELLOWORLD_BLOB))
    assert out == NAR_CONTENTS_HELLOWORLD
    assert len(out) == 128
    assert hashlib.sha256(out).hexdigest() == "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040"


def test_complicated_fixture() -> None:
    out = render(COMPLICATED)
    assert out == NAR_CONTENTS_COMPLICATED
    assert len(out) == 840
    assert hashlib.sha256(out).hexdigest() == "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a"


def test_fixture_literal_symlink_hex() -> None:
    """The fixture itself against SPEC §5.6's hex dump (so a wrong fixture cannot hide a wrong writer)."""
    expected = bytes.fromhex(
        "0d00000000000000 6e69782d61726368 6976652d31000000 0100000000000000"
        "2800000000000000 0400000000000000 7479706500000000 0700000000000000"
        "73796d6c696e6b00 0600000000000000 7461726765740000 1800000000000000"
        "2f6e69782f73746f 72652f736f6d6577 68657265656c7365 0100000000000000"
        "2900000000000000".replace(" ", "")
    )
    assert NAR_CONTENTS_SYMLINK == expected


def test_executable_file() -> None:
    out = render(File(HELLOWORLD_BLOB, executable=True))
    assert len(out) == 160
    assert hashlib.sha256(out).hexdigest() == "3b63b97bae149b3e6650437b9077c3d75b130192145792ec94ea3af96a8c567a"


def test_empty_directory() -> None:
    out = render(Dir())
    assert out == frames(b"nix-archive-1", b"(", b"type", b"directory", b")")
    assert len(out) == 96
    assert hashlib.sha256(out).hexdigest() == "a50a5ab6d992f5598edd92105059fae9acfc192981e08bd88534c2167e92526a"


# --- §5.3 size arithmetic and padding -----------------------------------------------------------------


def test_size_arithmetic_spec_checks() -> None:
    assert nar_size(Dir()) == 96
    assert nar_size(Link(b"/nix/store/somewhereelse")) == 136
    assert nar_size(File(b"x" * 12)) == 128
    assert nar_size(File(b"x" * 12, True)) == 160
    assert nar_size(COMPLICATED) == 840 == 56 + 24 + 184 + 208 + 352 + 16


@pytest.mark.parametrize("length", range(18))
def test_padding_file_contents(length: int) -> None:
    contents = bytes(range(1, length + 1))
    for executable in (False, True):
        out = render(File(contents, executable), chunk=3)
        assert len(out) == nar_size(File(contents, executable))
        assert len(out) % 8 == 0
        header = nar.TOK_START + (nar.TOK_EXE if executable else nar.TOK_REG)
        assert out[: len(header)] == header
        rest = out[len(header) :]
        assert rest[:8] == length.to_bytes(8, "little")
        assert rest[8 : 8 + length] == contents
        assert rest[8 + length :] == bytes(pad8(length) - length) + nar.TOK_PAR


@pytest.mark.parametrize("length", range(1, 18))
def test_padding_symlink_target(length: int) -> None:
    target = b"t" * length
    out = render(Link(target))
    assert out == frames(b"nix-archive-1", b"(", b"type", b"symlink", b"target", target, b")")
    assert len(out) == nar_size(Link(target))


@pytest.mark.parametrize("length", range(1, 18))
def test_padding_entry_name(length: int) -> None:
    tree = Dir({b"n" * length: File(b"")})
    out = render(tree)
    assert out == grammar_nar(tree)
    assert len(out) == nar_size(tree)


@pytest.mark.parametrize("seed", range(40))
def test_random_trees_match_grammar_and_size(seed: int) -> None:
    rng = random.Random(seed)
    tree = Dir({b"root": random_tree(rng), b"x": random_tree(rng), b"y": random_tree(rng)})
    expected = grammar_nar(tree)
    assert len(expected) == nar_size(tree)
    for chunk, buffer_size in [(1, 0), (7, 1), (4096, 64 * 1024), (100_000, 10)]:
        assert render(tree, chunk, buffer_size) == expected
        assert render(tree, chunk, buffer_size, whole=True) == expected


# --- streaming ----------------------------------------------------------------------------------------


def test_large_chunks_are_written_through_unchanged() -> None:
    big = bytes(range(256)) * 64  # 16 KiB, above the write-through threshold
    sink = Collect()
    w = NarWriter(sink)
    w.file(3 * len(big), False, [big, big, big])
    assert sum(1 for x in sink.writes if x is big) == 3
    assert sink.data == frames(b"nix-archive-1", b"(", b"type", b"regular", b"contents", big * 3, b")")


def test_output_stays_buffered_below_limit_and_flushes_at_root_close() -> None:
    sink = Collect()
    w = NarWriter(sink, buffer_size=1024)
    w.directory_start()
    for i in range(200):
        w.entry_start(b"f%04d" % i)
        w.file(10, False, [b"0123456789"])
        w.entry_end()
        assert all(len(x) < 1024 + 200 for x in sink.writes)
    assert not w.finished
    w.directory_end()
    assert w.finished
    tree = Dir({b"f%04d" % i: File(b"0123456789") for i in range(200)})
    assert sink.data == grammar_nar(tree)
    assert len(sink.writes) > 10  # it streamed, it did not hold the whole NAR


def test_explicit_flush() -> None:
    sink = Collect()
    w = NarWriter(sink)
    w.directory_start()
    assert sink.writes == []
    w.flush()
    assert sink.data == nar.TOK_START + nar.TOK_DIR
    w.flush()
    assert len(sink.writes) == 1


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 4095, 4096, 70_000])
def test_whole_entries_match_the_long_form(size: int) -> None:
    """entry_file/entry_symlink write exactly what entry_start + node + entry_end write."""
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    for executable in (False, True):
        tree = Dir({b"a": File(data, executable), b"b" * (size % 13 + 1) + b"c": Link(data[:size % 300] or b"x")})
        assert render(tree, whole=True) == render(tree) == grammar_nar(tree)


def test_entry_file_writes_large_contents_through() -> None:
    big = bytes(range(256)) * 64
    sink = Collect()
    w = NarWriter(sink, buffer_size=1 << 20)
    w.directory_start()
    w.entry_file(b"big", big, False)
    assert sink.writes[-1] is big  # handed to the sink as it is, after the buffered header
    w.entry_file(b"small", b"abc", True)
    w.directory_end()
    assert sink.data == grammar_nar(Dir({b"big": File(big), b"small": File(b"abc", True)}))


def test_whole_entries_check_names_order_and_state() -> None:
    w = NarWriter(Collect())
    with pytest.raises(NarStateError, match="entry_file"):
        w.entry_file(b"a", b"", False)  # no directory open
    w.directory_start()
    w.entry_file(b"b", b"", False)
    with pytest.raises(NarError, match="strictly increase"):
        w.entry_file(b"a", b"", False)
    with pytest.raises(NarError, match="strictly increase"):
        w.entry_symlink(b"b", b"x")
    with pytest.raises(NarError, match="invalid NAR entry name"):
        w.entry_symlink(b"c/d", b"x")
    w.entry_start(b"c")
    with pytest.raises(NarStateError, match="entry_symlink"):
        w.entry_symlink(b"d", b"x")  # the entry "c" still needs its node
    w.file_start(1, False)
    with pytest.raises(NarStateError):
        w.entry_file(b"d", b"", False)  # inside an open file
    w.file_chunk(b"x")
    w.file_end()
    w.entry_end()
    w.entry_symlink(b"d", b"x")
    w.directory_end()
    assert w.finished


def test_low_level_file_api_and_empty_chunks() -> None:
    sink = Collect()
    w = NarWriter(sink)
    w.file_start(12, False)
    for piece in (b"", b"Hello", b"", b" ", b"World!", b""):
        w.file_chunk(piece)
    w.file_end()
    assert sink.data == NAR_CONTENTS_HELLOWORLD
    assert all(sink.writes)


def test_memoryview_chunks() -> None:
    data = HELLOWORLD_BLOB * 1000
    sink = NarHashSink()
    w = NarWriter(sink)
    view = memoryview(data)
    w.file(len(data), False, [view[:5000], view[5000:5001], view[5001:]])
    assert sink.sha256() == hashlib.sha256(grammar_nar(File(data))).digest()


def test_hash_sink() -> None:
    sink = NarHashSink()
    assert sink.result() == (0, hashlib.sha256().digest())
    w = NarWriter(sink)
    write_tree(w, COMPLICATED)
    assert sink.size == 840
    assert sink.sha256() == hashlib.sha256(NAR_CONTENTS_COMPLICATED).digest()
    assert sink.result() == (840, hashlib.sha256(NAR_CONTENTS_COMPLICATED).digest())


# --- errors -------------------------------------------------------------------------------------------


def test_file_shorter_than_declared() -> None:
    w = NarWriter(Collect())
    with pytest.raises(NarSizeError, match="shorter than declared: declared 42 bytes, got 12") as info:
        w.file(42, False, [HELLOWORLD_BLOB])
    assert (info.value.expected, info.value.actual) == (42, 12)
    assert isinstance(info.value, DataLoss)
    assert not w.finished


def test_file_longer_than_declared_writes_nothing_past_the_size() -> None:
    sink = Collect()
    w = NarWriter(sink, buffer_size=0)
    with pytest.raises(NarSizeError, match="more data than declared: declared 2 bytes, got at least 12") as info:
        w.file(2, False, [HELLOWORLD_BLOB])
    assert (info.value.expected, info.value.actual) == (2, 12)
    assert HELLOWORLD_BLOB not in sink.data
    assert not w.finished


def test_file_longer_than_declared_low_level() -> None:
    w = NarWriter(Collect())
    w.file_start(5, True)
    w.file_chunk(b"abc")
    with pytest.raises(NarSizeError, match="got at least 6"):
        w.file_chunk(b"def")
    with pytest.raises(NarStateError):
        w.file_chunk(b"")  # the failed file is closed


def test_empty_file_with_data() -> None:
    with pytest.raises(NarSizeError):
        NarWriter(Collect()).file(0, False, [b"x"])


def test_negative_size() -> None:
    with pytest.raises(NarError):
        NarWriter(Collect()).file_start(-1, False)


@pytest.mark.parametrize("names", [[b"b", b"a"], [b"a", b"a"], [b"a", b"B"], [b"ab", b"a"]])
def test_entry_names_must_strictly_increase(names: list[bytes]) -> None:
    w = NarWriter(Collect())
    w.directory_start()
    w.entry_start(names[0])
    w.symlink(b"x")
    w.entry_end()
    with pytest.raises(NarError, match="strictly increase"):
        w.entry_start(names[1])


def test_entry_order_is_per_directory() -> None:
    tree = Dir({b"z": Dir({b"a": File(b"")}), b"zz": Dir({b"a": File(b"")})})
    assert render(tree) == grammar_nar(tree)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/", b"a\0"])
def test_invalid_entry_names(name: bytes, kind: type) -> None:
    w = NarWriter(Collect())
    w.directory_start()
    with pytest.raises(NarError, match="invalid NAR entry name") as info:
        w.entry_start(kind(name))
    assert isinstance(info.value, InvalidRequest)


def test_unusual_but_valid_entry_names() -> None:
    tree = Dir({b"...": File(b""), b".a": File(b""), b"\xff\xfe": File(b""), b"x" * 300: File(b"")})
    assert render(tree) == grammar_nar(tree)


def test_state_errors() -> None:
    def fresh_dir() -> NarWriter:
        w = NarWriter(Collect())
        w.directory_start()
        return w

    w = NarWriter(Collect())
    w.symlink(b"a")
    with pytest.raises(NarStateError, match="after the root node"):
        w.symlink(b"b")
    with pytest.raises(NarStateError):
        NarWriter(Collect()).entry_start(b"a")
    with pytest.raises(NarStateError):
        NarWriter(Collect()).directory_end()
    with pytest.raises(NarStateError):
        NarWriter(Collect()).file_end()
    with pytest.raises(NarStateError, match="without entry_start"):
        fresh_dir().symlink(b"a")
    w = fresh_dir()
    with pytest.raises(NarStateError):
        w.entry_end()
    w.entry_start(b"a")
    with pytest.raises(NarStateError):
        w.entry_end()  # no node yet
    with pytest.raises(NarStateError):
        w.directory_end()  # inside an entry
    w.symlink(b"x")
    with pytest.raises(NarStateError, match="without entry_start"):
        w.symlink(b"y")  # a second node in one entry
    with pytest.raises(NarStateError):
        w.entry_start(b"b")  # before entry_end
    w = fresh_dir()
    w.entry_start(b"a")
    w.file_start(3, False)
    with pytest.raises(NarStateError, match="file is still open"):
        w.symlink(b"x")
    with pytest.raises(NarStateError):
        w.entry_end()
    w.file_chunk(b"abc")
    w.file_end()
    w.entry_end()
    w.directory_end()
    assert w.finished
    with pytest.raises(NarStateError):
        w.directory_start()


# --- against real Nix ----------------------------------------------------------------------------------


def dump_path(path: bytes, w: NarWriter) -> None:
    """A minimal filesystem walker driving the writer, as ``nix-store --dump`` walks."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        w.symlink(os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            w.file(st.st_size, bool(st.st_mode & stat.S_IXUSR), iter(lambda: f.read(100_000), b""))
    else:
        w.directory_start()
        for name in sorted(os.listdir(path)):
            w.entry_start(name)
            dump_path(os.path.join(path, name), w)
            w.entry_end()
        w.directory_end()


@pytest.mark.nix
def test_writer_matches_nix_store_dump(tmp_path: Path) -> None:
    from tests.nix import make_nasty_tree, nix_dump, nix_hash

    root = make_nasty_tree(tmp_path / "tree", big_file_size=300_001)
    expected = nix_dump(root)
    sink = Collect()
    w = NarWriter(sink)
    dump_path(os.fsencode(root), w)
    assert w.finished
    assert sink.data == expected
    hashed = NarHashSink()
    dump_path(os.fsencode(root), NarWriter(hashed))
    assert hashed.result() == (len(expected), bytes.fromhex(nix_hash(root)))
