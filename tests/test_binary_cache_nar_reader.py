"""The streaming NAR parser (tvixd.castore.nar_reader): fixtures, real `nix-store --dump` output, bad input."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import NAR_CONTENTS_COMPLICATED, NAR_CONTENTS_HELLOWORLD, NAR_CONTENTS_SYMLINK, _nar
from tvixd.castore.nar_reader import (
    DirectoryEnd,
    DirectoryStart,
    FileChunk,
    FileEnd,
    FileStart,
    NarParseError,
    Symlink,
    parse_nar,
)
from tvixd.errors import InvalidRequest


def _str(b: bytes) -> bytes:
    return len(b).to_bytes(8, "little") + b + b"\0" * (-len(b) % 8)


def serialize(events) -> bytes:
    """Events back to NAR bytes, written here from the grammar (independent of tvixd's writer)."""
    out = [_str(b"nix-archive-1")]
    depth = 0

    def node_open(name: bytes, depth: int) -> None:
        if depth:
            out.append(_str(b"entry") + _str(b"(") + _str(b"name") + _str(name) + _str(b"node"))
        out.append(_str(b"(") + _str(b"type"))

    for ev in events:
        if isinstance(ev, DirectoryStart):
            node_open(ev.name, depth)
            out.append(_str(b"directory"))
            depth += 1
        elif isinstance(ev, DirectoryEnd):
            depth -= 1
            out.append(_str(b")") + (_str(b")") if depth else b""))
        elif isinstance(ev, Symlink):
            node_open(ev.name, depth)
            out.append(_str(b"symlink") + _str(b"target") + _str(ev.target) + _str(b")"))
            if depth:
                out.append(_str(b")"))
        elif isinstance(ev, FileStart):
            node_open(ev.name, depth)
            out.append(_str(b"regular") + (_str(b"executable") + _str(b"") if ev.executable else b""))
            out.append(_str(b"contents") + ev.size.to_bytes(8, "little"))
            size = ev.size
        elif isinstance(ev, FileChunk):
            out.append(ev.data)
        elif isinstance(ev, FileEnd):
            out.append(b"\0" * (-size % 8) + _str(b")"))
            if depth:
                out.append(_str(b")"))
    return b"".join(out)


class TrickleReader:
    """A reader returning at most ``step`` bytes per call: the parser must not rely on full reads."""

    def __init__(self, data: bytes, step: int) -> None:
        self.buf = io.BytesIO(data)
        self.step = step

    def read(self, n: int) -> bytes:
        return self.buf.read(min(n, self.step))


def events(data: bytes, **kw) -> list:
    return list(parse_nar(io.BytesIO(data).read, **kw))


def test_fixtures_parse_to_expected_events():
    assert events(NAR_CONTENTS_SYMLINK) == [Symlink(b"", b"/nix/store/somewhereelse")]
    assert events(NAR_CONTENTS_HELLOWORLD) == [
        FileStart(b"", 12, False), FileChunk(b"Hello World!"), FileEnd(b""),
    ]  # fmt: skip
    assert events(NAR_CONTENTS_COMPLICATED) == [
        DirectoryStart(b""),
        FileStart(b".keep", 0, False), FileEnd(b".keep"),
        Symlink(b"aa", b"/nix/store/somewhereelse"),
        DirectoryStart(b"keep"), FileStart(b".keep", 0, False), FileEnd(b".keep"), DirectoryEnd(b"keep"),
        DirectoryEnd(b""),
    ]  # fmt: skip


@pytest.mark.parametrize("nar", [NAR_CONTENTS_SYMLINK, NAR_CONTENTS_HELLOWORLD, NAR_CONTENTS_COMPLICATED])
@pytest.mark.parametrize("step", [1, 3, 8, 1000])
def test_fixtures_round_trip_with_short_reads(nar, step):
    assert serialize(parse_nar(TrickleReader(nar, step).read)) == nar


def test_file_contents_are_chunked():
    data = bytes(range(256)) * 40
    nar = _nar(b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"", b"contents", data, b")")
    evs = events(nar, chunk_size=1000)
    assert evs[0] == FileStart(b"", len(data), True)
    chunks = [e.data for e in evs if isinstance(e, FileChunk)]
    assert max(map(len, chunks)) <= 1000 and b"".join(chunks) == data
    assert serialize(evs) == nar


def _make_tree(root: Path, rnd: random.Random, depth: int = 0) -> None:
    root.mkdir()
    names = {rnd.choice(["a", "b", "B", ".h", "z-1", "e\u00e9", "x" * 40, "q", "1", "_"]) for _ in range(6)}
    for i, name in enumerate(sorted(names)):
        p = root / name
        kind = rnd.choice(["file", "exe", "link", "dir"] if depth < 3 else ["file", "exe", "link"])
        if kind in ("file", "exe"):
            p.write_bytes(os.urandom(rnd.choice([0, 1, 7, 8, 9, 4096, 100_000 + i])))
            p.chmod(0o755 if kind == "exe" else 0o644)
        elif kind == "link":
            p.symlink_to(rnd.choice(["/nix/store/somewhereelse", "../a", "x" * 300]))
        else:
            _make_tree(p, rnd, depth + 1)


@pytest.mark.nix
@pytest.mark.parametrize("seed", range(4))
def test_nix_store_dump_of_generated_trees_round_trips(tmp_path, seed):
    if shutil.which("nix-store") is None:
        pytest.skip("nix-store (Debian nix-bin) is not installed")
    tree = tmp_path / "tree"
    _make_tree(tree, random.Random(seed))
    env = {k: v for k, v in os.environ.items() if k != "NIX_REMOTE"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    nar = subprocess.run(["nix-store", "--dump", str(tree)], capture_output=True, check=True, env=env).stdout
    evs = list(parse_nar(TrickleReader(nar, 4093).read, chunk_size=5000))
    assert serialize(evs) == nar
    # The events describe the tree on disk.
    starts = [e for e in evs if isinstance(e, FileStart | Symlink | DirectoryStart)]
    on_disk = 1 + sum(1 for _ in tree.rglob("*"))
    assert len(starts) == on_disk


def _corrupt(nar: bytes, offset: int, new: bytes) -> bytes:
    return nar[:offset] + new + nar[offset + len(new) :]


BAD_NARS = {
    "empty": b"",
    "bad magic": _nar(b"nix-archive-2", b"(", b"type", b"symlink", b"target", b"/x", b")"),
    "truncated": NAR_CONTENTS_COMPLICATED[:-9],
    "truncated in contents": NAR_CONTENTS_HELLOWORLD[:100],
    "trailing data": NAR_CONTENTS_SYMLINK + _nar(b")"),
    "trailing byte": NAR_CONTENTS_SYMLINK + b"\0",
    "nonzero padding in contents": _corrupt(NAR_CONTENTS_HELLOWORLD, 108, b"\x01"),
    "nonzero padding in token": _corrupt(NAR_CONTENTS_SYMLINK, 8 + 13, b"x"),
    "unknown type": _nar(b"nix-archive-1", b"(", b"type", b"fifo", b")"),
    "huge token": _corrupt(NAR_CONTENTS_SYMLINK, 0, (2**62).to_bytes(8, "little")),
    "contents before executable": _nar(b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"",
                                       b"executable", b"", b")"),
    "executable with value": _nar(b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"1",
                                  b"contents", b"", b")"),
    "empty symlink target": _nar(b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"", b")"),
    "NUL in symlink target": _nar(b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"a\0b", b")"),
    "too long symlink target": _nar(b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"a" * 4096, b")"),
    "unsorted entries": _nar(
        b"nix-archive-1", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"b", b"node", b"(", b"type", b"symlink", b"target", b"x", b")", b")",
        b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"symlink", b"target", b"x", b")", b")",
        b")"),
    "duplicate entries": _nar(
        b"nix-archive-1", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"symlink", b"target", b"x", b")", b")",
        b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"symlink", b"target", b"x", b")", b")",
        b")"),
    **{
        f"entry name {name!r}": _nar(
            b"nix-archive-1", b"(", b"type", b"directory",
            b"entry", b"(", b"name", name, b"node", b"(", b"type", b"symlink", b"target", b"x", b")", b")",
            b")")
        for name in (b"", b".", b"..", b"a/b", b"a\0", b"n" * 256)
    },
    "missing entry close": _nar(
        b"nix-archive-1", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"symlink", b"target", b"x", b")",
        b")"),
    "garbage in directory": _nar(b"nix-archive-1", b"(", b"type", b"directory", b"entri", b")"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_NARS))
def test_malformed_nars_are_rejected(name):
    with pytest.raises(NarParseError) as exc:
        events(BAD_NARS[name])
    assert isinstance(exc.value, InvalidRequest)
    assert "offset" in str(exc.value)


def test_valid_long_names_and_targets_are_accepted():
    nar = _nar(
        b"nix-archive-1", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"n" * 255, b"node", b"(", b"type", b"symlink", b"target", b"t" * 4095, b")", b")",
        b")")  # fmt: skip
    assert serialize(events(nar)) == nar


def test_error_comes_before_any_event_past_the_fault():
    """Consumers rely on this: the events before an error describe only a valid prefix."""
    bad = BAD_NARS["unsorted entries"]
    seen = []
    with pytest.raises(NarParseError, match="not strictly greater"):
        for ev in parse_nar(io.BytesIO(bad).read):
            seen.append(ev)
    assert seen == [DirectoryStart(b""), Symlink(b"b", b"x")]
