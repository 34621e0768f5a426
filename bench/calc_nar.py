"""``python -m bench.calc_nar STATE``: the NAR size and sha256 of the one path in the embedded store at STATE.

The process the import area times against ``nix-hash --type sha256`` (bench/runner.py). It renders the
NAR afresh with ``tvixd.nar.calculate_nar`` (not ``PathInfoService.calculate_nar``, which may answer
from its cache) and imports nothing else: run from bench/runner.py, the same work paid ~95 ms for the
runner's own imports (argparse, json, statistics, subprocess, dataclasses, ...) before tvixd started.
"""

from __future__ import annotations

import os
import sqlite3
import sys


def main(state: str) -> None:
    """Print ``SIZE SHA256HEX`` of the only store path in ``state``."""
    from tvixd.nar import calculate_nar
    from tvixd.store import Store, StoreAddrs

    db = sqlite3.connect(f"file:{os.path.join(state, 'store.sqlite')}?mode=ro", uri=True)
    (digest,) = [row[0] for row in db.execute("SELECT digest FROM path_infos")]  # the key, read without protobuf
    db.close()
    with Store.open(StoreAddrs.embedded(state)) as store:
        size, sha = calculate_nar(store.path_info.get_root_entry(digest), store.blob, store.directory)
    print(size, sha.hex())


if __name__ == "__main__":
    main(sys.argv[1])
