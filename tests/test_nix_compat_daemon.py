"""`tvixd import` / `dump-path` / `ls` through a real daemon (gRPC clients for all three services) against Nix."""

from __future__ import annotations

import os

import pytest

from tests.conftest import run_tvixd
from tests.daemon import start_daemon
from tests.nix import make_nasty_tree, nix_add_fixed, nix_dump, nix_store_ls, requires_nix

pytestmark = [pytest.mark.nix, requires_nix]


def test_import_through_daemon_matches_nix(tmp_path):
    src = make_nasty_tree(tmp_path / "src" / "nasty")
    (tmp_path / "src" / "root").write_bytes(b"Hello World!")
    with start_daemon(tmp_path / "daemon") as daemon:
        flags = [f"--{s}-service-addr={daemon.addr}" for s in ("blob", "directory", "path-info")]

        def ok(*args: str | os.PathLike[str]) -> bytes:
            proc = run_tvixd(str(args[0]), *flags, *(os.fspath(a) for a in args[1:]))
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
            return proc.stdout

        out = ok("import", src, tmp_path / "src" / "root").decode().split()
        assert out == [nix_add_fixed(src), "/nix/store/zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root"]
        assert ok("dump-path", out[0]) == nix_dump(src)
        assert ok("ls", "-R", "-l", out[0]) == nix_store_ls(src, "", "-R", "-l")
        assert ok("cat", out[0] + "/big.bin") == (src / "big.bin").read_bytes()
