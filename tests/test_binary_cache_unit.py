"""The binary cache's pure parts over real memory:// services: ingest, render, narinfo, ranges."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.fixtures import (
    DIRECTORY_COMPLICATED,
    DIRECTORY_COMPLICATED_DIGEST,
    DIRECTORY_WITH_KEEP,
    EMPTY_DIGEST,
    HELLOWORLD_BLOB,
    HELLOWORLD_DIGEST,
    NAR_CONTENTS_COMPLICATED,
    NAR_CONTENTS_HELLOWORLD,
    NAR_CONTENTS_SYMLINK,
    _nar,
)
from tvixd.binary_cache import render
from tvixd.binary_cache.app import HttpError, parse_range
from tvixd.binary_cache.ingest import NarMismatch, ingest_nar
from tvixd.binary_cache.narinfo import NarInfo, SigningKey, fingerprint, parse_narinfo, parse_sha256
from tvixd.binary_cache.uploads import SpoolingPutter
from tvixd.blobservice.memory import MemoryBlobService
from tvixd.castore import nixbase32
from tvixd.castore.nar_reader import NarParseError
from tvixd.castore.storepath import StorePath
from tvixd.directoryservice.memory import MemoryDirectoryService
from tvixd.errors import DataLoss, InvalidRequest, NotFound
from tvixd.proto.castore_pb2 import DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import Node


@pytest.fixture
def blobs() -> MemoryBlobService:
    return MemoryBlobService()


@pytest.fixture
def dirs() -> MemoryDirectoryService:
    return MemoryDirectoryService()


def _put_blob(blobs: MemoryBlobService, data: bytes) -> bytes:
    w = blobs.open_write()
    w.write(data)
    return w.close()


def _render_all(root: Node, blobs, dirs, **kw) -> bytes:
    plan = render.plan_nar(root, blobs, dirs)
    out = b"".join(render.render_nar(plan, blobs, **kw))
    assert len(out) == (kw.get("end", plan.size) - kw.get("start", 0))
    return out


# -- render -----------------------------------------------------------------------------------

def test_render_fixtures(blobs, dirs):
    symlink = Node(symlink=SymlinkNode(name=b"doesntmatter", target=b"/nix/store/somewhereelse"))
    assert _render_all(symlink, blobs, dirs) == NAR_CONTENTS_SYMLINK
    _put_blob(blobs, HELLOWORLD_BLOB)
    file = Node(file=FileNode(name=b"x", digest=HELLOWORLD_DIGEST, size=12))
    assert _render_all(file, blobs, dirs) == NAR_CONTENTS_HELLOWORLD
    _put_blob(blobs, b"")
    with dirs.put_multiple_start() as p:
        p.put(DIRECTORY_WITH_KEEP)
        p.put(DIRECTORY_COMPLICATED)
        p.close()
    root = Node(directory=DirectoryNode(name=b"d", digest=DIRECTORY_COMPLICATED_DIGEST, size=4))
    plan = render.plan_nar(root, blobs, dirs)
    assert plan.size == 840
    assert _render_all(root, blobs, dirs) == NAR_CONTENTS_COMPLICATED
    # every sub-range, with tiny chunks
    for start in range(0, 840, 37):
        for end in (start + 1, start + 100, 840):
            got = b"".join(render.render_nar(plan, blobs, start, end, chunk_size=3))
            assert got == NAR_CONTENTS_COMPLICATED[start:min(end, 840)]


@pytest.fixture(params=["memory", "fs"])
def big_file_blobs(request, tmp_path):
    """memory:// streams blobs; fs:// verifies a blob whole (``open_verified``) and serves its mappings."""
    return MemoryBlobService() if request.param == "memory" else _fs_blobs(tmp_path)


def _fs_blobs(tmp_path):
    from tvixd.blobservice.from_addr import from_addr

    return from_addr(f"fs://{tmp_path}/blobs")


def test_render_range_inside_a_large_file(big_file_blobs, dirs):
    blobs = big_file_blobs
    data = bytes(range(256)) * 5000
    digest = _put_blob(blobs, data)
    root = Node(file=FileNode(name=b"x", digest=digest, size=len(data), executable=True))
    full = _render_all(root, blobs, dirs, chunk_size=4096)
    assert full[:120].count(b"executable") == 1 and data in full
    plan = render.plan_nar(root, blobs, dirs)
    for start, end in ((0, 10), (100, 200_000), (len(full) - 20, len(full)), (5000, 5001)):
        assert b"".join(render.render_nar(plan, blobs, start, end, chunk_size=999)) == full[start:end]
    assert all(0 < len(c) <= 999 for c in render.render_nar(plan, blobs, chunk_size=999))


def test_a_range_of_a_corrupt_fs_blob_gives_no_byte_of_it(tmp_path, dirs):
    """A Range stopping short of a big file's end used to be served unverified from a streamed reader."""
    import os

    fs = _fs_blobs(tmp_path)
    data = bytes(range(256)) * 5000
    digest = _put_blob(fs, data)
    path = fs.path_of(digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(len(data) - 1)
        f.write(b"\x00")  # the last byte (was 0xff): a streamed range ending earlier never reads it
    plan = render.plan_nar(Node(file=FileNode(name=b"x", digest=digest, size=len(data))), fs, dirs)
    for start, end in ((100, 200_000), (200, 1_000_000)):  # coalesced into small chunks; passed through
        with pytest.raises(DataLoss, match="corrupt"):
            next(render.render_nar(plan, fs, start, end, chunk_size=999))


def test_plan_refuses_missing_or_wrongly_sized_content(blobs, dirs):
    file = Node(file=FileNode(name=b"x", digest=HELLOWORLD_DIGEST, size=12))
    with pytest.raises(NotFound, match="not found"):
        render.plan_nar(file, blobs, dirs)
    _put_blob(blobs, HELLOWORLD_BLOB)
    with pytest.raises(DataLoss, match="declares 13"):
        render.plan_nar(Node(file=FileNode(name=b"x", digest=HELLOWORLD_DIGEST, size=13)), blobs, dirs)
    root = Node(directory=DirectoryNode(name=b"d", digest=DIRECTORY_COMPLICATED_DIGEST, size=4))
    with pytest.raises(NotFound):
        render.plan_nar(root, blobs, dirs)
    with dirs.put_multiple_start() as p:
        p.put(DIRECTORY_WITH_KEEP)
        p.put(DIRECTORY_COMPLICATED)
        p.close()
    with pytest.raises(NotFound, match=str(EMPTY_DIGEST).replace("+", r"\+")):  # the empty blob is missing
        render.plan_nar(root, blobs, dirs)


# -- ingest -----------------------------------------------------------------------------------

@pytest.mark.parametrize("nar", [NAR_CONTENTS_SYMLINK, NAR_CONTENTS_HELLOWORLD, NAR_CONTENTS_COMPLICATED])
def test_ingest_then_render_round_trips(blobs, dirs, nar):
    result = ingest_nar(io.BytesIO(nar).read, blobs, dirs.put_multiple_start(), chunk_size=5)
    assert result.nar_size == len(nar) and result.nar_sha256 == hashlib.sha256(nar).digest()
    assert _render_all(result.root, blobs, dirs) == nar
    if nar is NAR_CONTENTS_COMPLICATED:
        assert result.root.directory.digest == DIRECTORY_COMPLICATED_DIGEST and result.root.directory.size == 4


def test_ingest_of_an_invalid_nar_commits_no_directory(blobs, dirs):
    bad = NAR_CONTENTS_COMPLICATED[:-16] + _nar(b"x")
    with pytest.raises(NarParseError):
        ingest_nar(io.BytesIO(bad).read, blobs, dirs.put_multiple_start())
    assert dirs.get(DIRECTORY_COMPLICATED_DIGEST) is None
    from tvixd.castore.directory import directory_digest

    assert dirs.get(directory_digest(DIRECTORY_WITH_KEEP)) is None  # the inner directory was complete, yet absent


def test_ingest_mismatch_commits_no_directory(blobs, dirs):
    nar = NAR_CONTENTS_COMPLICATED
    with pytest.raises(NarMismatch, match="hash mismatch"):
        ingest_nar(io.BytesIO(nar).read, blobs, dirs.put_multiple_start(), expected_sha256=bytes(32))
    with pytest.raises(NarMismatch, match="size mismatch"):
        ingest_nar(io.BytesIO(nar).read, blobs, dirs.put_multiple_start(), expected_size=841)
    from tvixd.castore.directory import directory_digest

    assert dirs.get(DIRECTORY_COMPLICATED_DIGEST) is None
    assert dirs.get(directory_digest(DIRECTORY_WITH_KEEP)) is None
    ok = ingest_nar(io.BytesIO(nar).read, blobs, dirs.put_multiple_start(), expected_size=840,
                    expected_sha256=hashlib.sha256(nar).digest())
    assert dirs.get(ok.root.directory.digest) is not None


def test_spooled_directories_become_visible_only_on_replay(blobs, dirs):
    spool = SpoolingPutter()
    result = ingest_nar(io.BytesIO(NAR_CONTENTS_COMPLICATED).read, blobs, spool)
    assert dirs.get(DIRECTORY_COMPLICATED_DIGEST) is None
    assert spool.replay(dirs) == DIRECTORY_COMPLICATED_DIGEST == result.root.directory.digest
    assert dirs.get(DIRECTORY_COMPLICATED_DIGEST) == DIRECTORY_COMPLICATED


# -- narinfo ----------------------------------------------------------------------------------

NARINFO = (
    "StorePath: /nix/store/dk5gf94s23q9amfr91nphc0pj8qsa17c-cx\n"
    "URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz\n"
    "Compression: xz\n"
    "FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3\n"
    "FileSize: 300\n"
    "NarHash: sha256:" + nixbase32.encode(hashlib.sha256(NAR_CONTENTS_COMPLICATED).digest()) + "\n"
    "NarSize: 840\n"
    "References: zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root dk5gf94s23q9amfr91nphc0pj8qsa17c-cx\n"
    "Deriver: 00bgd045z0d4icpbc2yyz4gx48ak44la-cx.drv\n"
    "Sig: cache.example.org-1:" + base64.b64encode(bytes(64)).decode() + "\n"
    "Unknown: ignored\n"
)


def test_parse_narinfo_by_nix_rules():
    info = parse_narinfo(NARINFO.encode())
    assert str(info.store_path) == "dk5gf94s23q9amfr91nphc0pj8qsa17c-cx"
    assert info.nar_size == 840 and info.nar_hash == hashlib.sha256(NAR_CONTENTS_COMPLICATED).digest()
    assert info.references == ["dk5gf94s23q9amfr91nphc0pj8qsa17c-cx", "zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root"]
    assert info.compression == "xz" and info.file_size == 300 and info.deriver.endswith("-cx.drv")
    assert len(info.signatures) == 1
    # Compression defaults to bzip2, as in Nix.
    assert parse_narinfo(NARINFO.replace("Compression: xz\n", "").encode()).compression == "bzip2"


@pytest.mark.parametrize("mutation", [
    lambda s: s.replace("StorePath: /nix/store/", "StorePath: /gnu/store/"),
    lambda s: s.replace("NarSize: 840", "NarSize: 0"),
    lambda s: s.replace("NarSize: 840", "NarSize: -1"),
    lambda s: s.replace("URL: ", "URL:  ").replace("URL:  nar", "Xrl: nar"),
    lambda s: s.replace("NarHash: sha256:", "NarHash: md5:"),
    lambda s: s.replace("NarHash: sha256:", "NarHash: sha256:x"),
    lambda s: s + "References: zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root\n",
    lambda s: s.replace("-root", "-ro ot"),
    lambda s: s.rstrip("\n"),
    lambda s: s + "no colon here\n",
    lambda s: "\n".join(line for line in s.split("\n") if not line.startswith("NarHash")),
])
def test_corrupt_narinfos_are_refused(mutation):
    with pytest.raises(InvalidRequest):
        parse_narinfo(mutation(NARINFO).encode())


def test_hash_forms():
    digest = hashlib.sha256(b"x").digest()
    for form in ("sha256:" + nixbase32.encode(digest), "sha256:" + digest.hex(),
                 "sha256:" + base64.b64encode(digest).decode(), "sha256-" + base64.b64encode(digest).decode()):
        assert parse_sha256(form, "h") == digest


def test_narinfo_text_and_signature():
    key = SigningKey.parse("k-1:" + base64.b64encode(_secret(b"\x07" * 32)).decode())
    info = parse_narinfo(NARINFO.encode())
    info.signatures = []
    fp = info.fingerprint()
    assert fp == (
        "1;/nix/store/dk5gf94s23q9amfr91nphc0pj8qsa17c-cx;sha256:"
        + nixbase32.encode(hashlib.sha256(NAR_CONTENTS_COMPLICATED).digest())
        + ";840;/nix/store/dk5gf94s23q9amfr91nphc0pj8qsa17c-cx,/nix/store/zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root"
    )
    sig = key.sign(fp)
    name, _, data = sig.partition(":")
    assert name == "k-1"
    pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key().split(":")[1]))
    pub.verify(base64.b64decode(data), fp.encode())  # raises if invalid
    info.signatures.append(sig)
    text = info.to_text()
    assert text.endswith("\n") and parse_narinfo(text.encode()).signatures == [sig]
    empty = NarInfo(store_path=StorePath.from_basename("dk5gf94s23q9amfr91nphc0pj8qsa17c-cx"), url="nar/x.nar",
                    nar_hash=bytes(32), nar_size=1)
    assert "References: \n" in empty.to_text()
    assert fingerprint(empty.store_path, bytes(32), 1, []).endswith(";1;")


def _secret(seed: bytes) -> bytes:
    pub = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return seed + pub


def test_signing_key_files_are_checked(tmp_path):
    good = "k:" + base64.b64encode(_secret(b"\x01" * 32)).decode()
    assert SigningKey.parse(good + "\n").name == "k"
    for bad in ("nocolon", "k:!!!", "k:" + base64.b64encode(bytes(32)).decode(),
                "k:" + base64.b64encode(b"\x01" * 32 + bytes(32)).decode()):
        with pytest.raises(InvalidRequest):
            SigningKey.parse(bad)
    with pytest.raises(InvalidRequest, match="cannot read"):
        SigningKey.load(tmp_path / "missing")


# -- ranges -----------------------------------------------------------------------------------

def test_parse_range():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=90-1000", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=-1000", 100) == (0, 100)
    for ignored in ("bytes=5-1", "bytes=0-1,3-4", "items=0-1", "bytes=a-b", "bytes=-"):
        assert parse_range(ignored, 100) is None, ignored
    for unsatisfiable in ("bytes=100-", "bytes=100-200", "bytes=-0"):
        with pytest.raises(HttpError) as e:
            parse_range(unsatisfiable, 100)
        assert e.value.status == 416
