"""tvixd against Debian's real Nix: store paths, NAR bytes, NAR hashes, path-info and ls output.

Each test imports with the real ``tvixd`` command into an embedded store (fs:// blobs +
sqlite://) in tmp_path, and compares with what ``nix-store``/``nix-hash``/``nix`` say
about the same filesystem path (tests/nix.py isolates every nix call).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_tvixd
from tests.nix import (
    make_nasty_tree,
    nix_add_fixed,
    nix_dump,
    nix_hash,
    nix_hash_base32,
    nix_path_info_json,
    nix_store_dir,
    requires_nix,
    run_nix,
    store_args,
)
from tvixd.castore import nixbase32

pytestmark = [pytest.mark.nix, requires_nix]


def tvixd_ok(tmp_path: Path, *args: str | os.PathLike[str]) -> bytes:
    proc = run_tvixd(*args[:1], *store_args(tmp_path), *(os.fspath(a) for a in args[1:]))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def make_root(kind: str, path: Path) -> Path:
    """A one-node root of each kind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        path.write_bytes(b"Hello World!")
    elif kind == "exe":
        path.write_bytes(b"#!/bin/sh\n")
        path.chmod(0o755)
    elif kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "symlink":
        path.symlink_to("/nix/store/somewhereelse")
    elif kind == "dangling":
        path.symlink_to("no/such/target")
    elif kind == "empty-dir":
        path.mkdir()
    elif kind == "nasty":
        make_nasty_tree(path)
    return path


@pytest.mark.parametrize("kind", ["file", "exe", "empty-file", "symlink", "dangling", "empty-dir", "nasty"])
def test_import_and_dump_match_nix(tmp_path, kind):
    src = make_root(kind, tmp_path / "src" / f"root-{kind}")
    store_path = tvixd_ok(tmp_path, "import", src).decode().strip()
    assert store_path == nix_add_fixed(src)
    nar = tvixd_ok(tmp_path, "dump-path", store_path)
    assert nar == nix_dump(src)
    info = json.loads(tvixd_ok(tmp_path, "import", "--json", src))
    assert info == {"path": store_path, "narHash": "sha256:" + nix_hash_base32(src), "narSize": len(nar)}
    assert nixbase32.decode(info["narHash"].removeprefix("sha256:")).hex() == nix_hash(src)


def test_path_info_json_matches_nix(tmp_path):
    src = make_nasty_tree(tmp_path / "nasty")
    store_path = tvixd_ok(tmp_path, "import", src).decode().strip()
    [ours] = json.loads(tvixd_ok(tmp_path, "path-info", "--json", store_path))
    [theirs] = nix_path_info_json(src)
    assert ours["path"] == theirs["path"]
    assert ours["narSize"] == theirs["narSize"]
    assert ours["references"] == theirs["references"] == []
    # Nix 2.8 prints SRI (sha256-<base64>); we print sha256:<nixbase32> as older Nix did. Same digest.
    algo, b64 = theirs["narHash"].split("-", 1)
    assert algo == "sha256"
    assert nixbase32.decode(ours["narHash"].removeprefix("sha256:")) == base64.b64decode(b64)


LS_CASES = [
    ("", ()),
    ("", ("-l",)),
    ("", ("-R",)),
    ("", ("-R", "-l")),
    ("", ("-d", "-l")),
    ("a", ("-R",)),
    ("twin-1", ("--json",)),
    ("twin-1", ("--json", "-R")),
    ("order", ("--json",)),
    ("exe", ("-l",)),
    ("exe", ("--json",)),
    ("abs-link", ("-l",)),
    ("abs-link", ("--json",)),
    ("dir-link/c", ()),  # an intermediate symlink is followed, as Nix does
    ("with space", ("-l",)),
    ("a/b/../b/./c", ()),
]


def test_ls_matches_nix(tmp_path):
    src = make_nasty_tree(tmp_path / "nasty")
    store_path = tvixd_ok(tmp_path, "import", src).decode().strip()
    with nix_store_dir() as nix_store:
        assert nix_add_fixed(src, store=nix_store) == store_path
        for sub, flags in LS_CASES:
            target = store_path + (f"/{sub}" if sub else "")
            ours = tvixd_ok(tmp_path, "ls", *flags, target)
            theirs = run_nix("nix", "store", "ls", *flags, target, store=nix_store)
            assert ours.rstrip(b"\n") == theirs.rstrip(b"\n"), (sub, flags)


def test_cat_matches_file(tmp_path):
    src = make_nasty_tree(tmp_path / "nasty")
    store_path = tvixd_ok(tmp_path, "import", src).decode().strip()
    for rel in ("plain.txt", "big.bin", "empty", "a/b/c/d/e/leaf", "with space/file with  two spaces"):
        assert tvixd_ok(tmp_path, "cat", f"{store_path}/{rel}") == (src / rel).read_bytes()


def test_many_paths_one_command(tmp_path):
    """Several roots in one invocation: each store path equals Nix's, in argument order."""
    roots = [make_root(kind, tmp_path / "src" / f"r-{kind}") for kind in ("file", "exe", "symlink", "empty-dir")]
    out = tvixd_ok(tmp_path, "import", *roots).decode().split()
    assert out == [nix_add_fixed(r) for r in roots]


def _big_file(path: Path) -> Path:
    """A file over one mapping window (blobservice.fs.MAP_WINDOW) plus an odd tail: NAR padding after a
    window boundary, through the renderer's verified-mapping path."""
    from tvixd.blobservice.fs import MAP_WINDOW

    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(MAP_WINDOW >> 20):
            f.write(i.to_bytes(8, "little") + block[8:])
        f.write(block[:12345])
    return path


def test_dump_big_file_matches_nix_to_pipe_and_file(tmp_path):
    """The big-file path writes from the mappings: same bytes as nix whether stdout is a pipe or a file."""
    import subprocess
    import sys

    from tests.conftest import tvixd_env

    src = _big_file(tmp_path / "src" / "big.bin")
    store_path = tvixd_ok(tmp_path, "import", src).decode().strip()
    expected = nix_dump(src)
    assert tvixd_ok(tmp_path, "dump-path", store_path) == expected  # stdout is a pipe
    out = tmp_path / "out.nar"
    with open(out, "wb") as f:
        cmd = [sys.executable, "-m", "tvixd", "dump-path", *store_args(tmp_path), store_path]
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, env=tvixd_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert out.read_bytes() == expected


def test_dump_and_cat_corrupt_big_blob_is_one_line_error_and_writes_none_of_it(tmp_path):
    """A big blob corrupted on disk: exit 1, one line naming the entry's blob, and no byte of it on stdout."""
    import blake3

    src = tmp_path / "src" / "tree"
    big = _big_file(src / "big.bin")
    (src / "a.txt").write_bytes(b"before the big file\n")
    store_path = tvixd_ok(tmp_path, "import", src).decode().strip()
    expected = nix_dump(src)
    data = big.read_bytes()
    digest = blake3.blake3(data).digest()
    blob = tmp_path / "state" / "blobs" / digest.hex()[:2] / digest.hex()[2:]
    blob.chmod(0o644)
    with open(blob, "r+b") as f:  # one flipped byte in the last window
        f.seek(len(data) - 1)
        f.write(bytes([data[-1] ^ 1]))
    proc = run_tvixd("dump-path", *store_args(tmp_path), store_path)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "big.bin" in err and "corrupt" in err
    assert expected.startswith(proc.stdout)  # nothing wrong went out (here: not even the header)
    assert data[:4096] not in proc.stdout
    # `cat` of the file: the same check before the first byte.
    proc = run_tvixd("cat", *store_args(tmp_path), f"{store_path}/big.bin")
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().count("\n") == 1 and "corrupt" in proc.stderr.decode()
