"""bench/calc_nar.py (the NAR calculation the import area times against nix-hash) gives nix-hash's answer."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT, run_tvixd, tvixd_env
from tests.nix import make_nasty_tree, nix_hash, store_args


def test_calc_nar_matches_nix_hash(tmp_path):
    tree = make_nasty_tree(tmp_path / "tree", big_file_size=3 << 20)
    r = run_tvixd("import", *store_args(tmp_path), str(tree))
    assert r.returncode == 0, r.stderr
    out = subprocess.run([sys.executable, "-m", "bench.calc_nar", str(tmp_path / "state")], cwd=REPO_ROOT,
                         env=tvixd_env(), capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    size, sha256 = out.stdout.split()
    assert sha256 == nix_hash(tree)
    assert int(size) > 3 << 20
