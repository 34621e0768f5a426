"""``tvixd dump-path``, ``path-info``, ``ls`` and ``cat``: output shapes and error cases."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_tvixd
from tests.fixtures import NAR_CONTENTS_COMPLICATED, NAR_CONTENTS_HELLOWORLD
from tests.nix import store_args

HELLO_PATH = "/nix/store/zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root"
MISSING = "/nix/store/00000000000000000000000000000000-missing"


@pytest.fixture
def imported(tmp_path):
    """tmp_path's store with `root` (Hello World!) and `cx` (DIRECTORY_COMPLICATED) imported."""
    (tmp_path / "root").write_bytes(b"Hello World!")
    cx = tmp_path / "cx"
    cx.mkdir()
    (cx / ".keep").write_bytes(b"")
    (cx / "aa").symlink_to("/nix/store/somewhereelse")
    (cx / "keep").mkdir()
    (cx / "keep" / ".keep").write_bytes(b"")
    proc = run_tvixd("import", *store_args(tmp_path), str(tmp_path / "root"), str(cx))
    assert proc.returncode == 0, proc.stderr
    hello, complicated = proc.stdout.decode().split()
    assert hello == HELLO_PATH
    return tmp_path, complicated


def tvixd(tmp_path, *args):
    return run_tvixd(args[0], *store_args(tmp_path), *args[1:])


def one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 1
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0]


def test_dump_path(imported):
    tmp_path, cx = imported
    assert tvixd(tmp_path, "dump-path", HELLO_PATH).stdout == NAR_CONTENTS_HELLOWORLD
    assert tvixd(tmp_path, "dump-path", cx).stdout == NAR_CONTENTS_COMPLICATED


def test_dump_path_errors(imported):
    tmp_path, cx = imported
    one_line_error(tvixd(tmp_path, "dump-path", MISSING), MISSING, "not in the store")
    one_line_error(tvixd(tmp_path, "dump-path", "/tmp/foo"), "/tmp/foo")
    one_line_error(tvixd(tmp_path, "dump-path", cx + "/nope"), "nope", "does not exist")


def test_path_info(imported):
    tmp_path, cx = imported
    proc = tvixd(tmp_path, "path-info", HELLO_PATH, cx)
    assert proc.stdout.decode().split() == [HELLO_PATH, cx]
    proc = tvixd(tmp_path, "path-info", "--json", HELLO_PATH)
    assert json.loads(proc.stdout) == [
        {
            "path": HELLO_PATH,
            "narHash": "sha256:0h40zg6hakjv951nyhdad7mv9za56m3za5gnpiw5s1hbwcxzdrq3",
            "narSize": 128,
            "references": [],
        }
    ]
    proc = tvixd(tmp_path, "path-info", "--all")
    assert sorted(proc.stdout.decode().split()) == sorted([HELLO_PATH, cx])


def test_path_info_missing_is_reported_others_printed(imported):
    tmp_path, cx = imported
    proc = tvixd(tmp_path, "path-info", "--json", MISSING, cx)
    one_line_error(proc, MISSING)
    assert [o["path"] for o in json.loads(proc.stdout)] == [cx]


def test_ls_and_cat(imported):
    tmp_path, cx = imported
    assert tvixd(tmp_path, "ls", cx).stdout == b"./.keep\n./aa\n./keep\n"
    assert tvixd(tmp_path, "ls", "-R", cx).stdout == b"./.keep\n./aa\n./keep\n./keep/.keep\n"
    assert tvixd(tmp_path, "cat", HELLO_PATH).stdout == b"Hello World!"
    assert tvixd(tmp_path, "cat", cx + "/keep/.keep").stdout == b""


def test_ls_cat_errors(imported):
    tmp_path, cx = imported
    one_line_error(tvixd(tmp_path, "ls", cx + "/void"), "void", "does not exist")
    one_line_error(tvixd(tmp_path, "ls", MISSING), MISSING)
    one_line_error(tvixd(tmp_path, "cat", cx + "/keep"), "not a regular file")
    one_line_error(tvixd(tmp_path, "cat", cx + "/aa"), "not a regular file")
    one_line_error(tvixd(tmp_path, "cat", cx + "/keep/.keep/x"), "does not exist")


def test_dump_path_to_closed_pipe_is_quiet(tmp_path):
    """`tvixd dump-path X | head -c 1`: no traceback when the reader goes away."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(8 << 20))
    path = run_tvixd("import", *store_args(tmp_path), str(big)).stdout.decode().strip()
    import subprocess
    import sys

    from tests.conftest import tvixd_env

    proc = subprocess.Popen(
        [sys.executable, "-m", "tvixd", "dump-path", *store_args(tmp_path), path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tvixd_env(),
    )
    proc.stdout.read(1)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait()
    assert b"Traceback" not in err


def test_path_info_json_references(tmp_path):
    """References are printed as absolute store paths, in order (a PathInfo put directly, as a daemon client would)."""
    from tests.nix import store_addrs
    from tvixd.castore.storepath import StorePath
    from tvixd.proto.castore_pb2 import FileNode
    from tvixd.proto.pathinfo_pb2 import NARInfo, Node, PathInfo
    from tvixd.store import Store

    (tmp_path / "root").write_bytes(b"Hello World!")
    assert run_tvixd("import", *store_args(tmp_path), str(tmp_path / "root")).returncode == 0
    refs = [HELLO_PATH, "/nix/store/v3r2js24npzm0ikvgyfbhnjgh2a96k1w-doesntmatter"]
    me = "/nix/store/pdbhxvljzqwghdmjwsp13ml8qxhyb5bs-withrefs"
    with Store.open(store_addrs("embedded", tmp_path)) as store:
        hello = store.path_info.get(StorePath.from_absolute_path(HELLO_PATH).digest)
        store.path_info.put(
            PathInfo(
                node=Node(file=FileNode(name=me.removeprefix("/nix/store/").encode(), digest=hello.node.file.digest,
                                        size=12)),
                references=[StorePath.from_absolute_path(r).digest for r in refs],
                narinfo=NARInfo(nar_size=128, nar_sha256=hello.narinfo.nar_sha256,
                                reference_names=[r.removeprefix("/nix/store/") for r in refs]),
            )
        )  # fmt: skip
    [info] = json.loads(tvixd(tmp_path, "path-info", "--json", me).stdout)
    assert info["references"] == refs
    assert info["narSize"] == 128
