"""`tvixd import` / `tvixd dump-path` against real Nix on the same tree, same run; plus a 1 GiB file.

Usage: python bench/import_bench.py [--tree /usr/share/doc] [--runs 5] [--big-mib 1024] [--record]

- import: `tvixd import TREE` into a fresh embedded store (fs:// blobs + sqlite://) per run
  versus `nix-store --add-fixed --recursive sha256 TREE` into a fresh `--store DIR` per run;
  every run gets a new directory and none is deleted until all runs are done (on an ext4
  without a journal, files created right after many were deleted cost several times more:
  see ``bench.common.RECENTLY_DELETED_SECONDS``);
- re-import: the same into the store that already has everything (blobs deduplicated);
- dump: `tvixd dump-path STORE_PATH` versus `nix-store --dump TREE`, both to /dev/null;
- big: one file of --big-mib MiB imported by both, to show peak RSS stays flat.

Every number is the median of --runs runs after one untimed warm-up (page cache warm
for both sides); peak RSS as bench.common.run_once measures it (GNU time's %M). With --record the results replace
the "import" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Measurement,
    fmt_ratio,
    machine_info,
    markdown_table,
    remove_tree,
    run_once,
    tvixd_cmd,
    tvixd_env,
    update_section,
)


def nix_env(home: Path) -> dict[str, str]:
    """nix isolated from the host (same settings as tests/nix.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    (home / "conf").mkdir(parents=True, exist_ok=True)
    (home / "conf" / "nix.conf").write_text("")
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / "cache"),
        NIX_CONF_DIR=str(home / "conf"),
        NIX_USER_CONF_FILES=str(home / "conf" / "nix.conf"),
    )
    return env


def store_flags(state: Path) -> list[str]:
    db = f"sqlite://{state / 'store.sqlite'}"
    return [
        f"--blob-service-addr=fs://{state / 'blobs'}",
        f"--directory-service-addr={db}",
        f"--path-info-service-addr={db}",
    ]


def nix_add(store: Path, path: Path) -> list[str]:
    return [
        "nix-store", "--store", str(store), "--option", "substituters", "",
        "--add-fixed", "--recursive", "sha256", str(path),
    ]  # fmt: skip


Command = list[str] | Callable[[], list[str]]
"""A command, or a function giving the command of the next run (e.g. with a fresh store directory)."""


def interleaved(cases: dict[str, tuple[Command, dict[str, str]]], runs: int) -> dict:
    """Run each case once per round, alternating, so load changes hit every case alike."""
    results = {name: Measurement() for name in cases}
    for _ in range(runs):
        for name, (cmd, env) in cases.items():
            os.sync()  # the previous run's writeback must not bleed into this one
            results[name].samples.append(run_once(cmd() if callable(cmd) else cmd, env=env))
    return results


class FreshDirs:
    """A new directory name under ``root`` per call, nothing deleted until the caller is done.

    Why: deleting the previous run's store right before a run makes the run's file creation pay for
    the recently deleted inodes (see ``bench.common.RECENTLY_DELETED_SECONDS``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._count = itertools.count()

    def __call__(self, kind: str) -> Path:
        return self.root / f"{kind}-{next(self._count)}"


def compare(work: Path, tree: Path, runs: int, env_nix: dict[str, str]) -> list[tuple[str, object, object]]:
    """Import and dump of ``tree``: (label, tvixd Measurement, nix Measurement).

    Every import goes into a store directory of its own under ``work``, and nothing is deleted
    here: the caller removes ``work`` when done (``remove_and_settle``), see ``FreshDirs``.
    """
    env = tvixd_env()
    fresh = FreshDirs(work)

    def ours() -> list[str]:
        return [*tvixd_cmd(), "import", *store_flags(fresh("tvixd")), str(tree)]

    def nix() -> list[str]:
        return nix_add(fresh("nix"), tree)

    def nix_sync() -> list[str]:
        # nix does not fsync what it adds; "nix+sync" is what the same durability as ours costs it.
        return ["sh", "-c", '"$@" && sync', "sh", *nix()]

    run_once(ours(), env=env)  # warm-up (page cache, .pyc)
    run_once(nix(), env=env_nix)
    imp = interleaved({"ours": (ours, env), "nix": (nix, env_nix), "nix+sync": (nix_sync, env_nix)}, runs)
    # One more import stays in use for re-import and dump (and the caller's NAR calculation).
    state = work / "state"
    ours_cmd = [*tvixd_cmd(), "import", *store_flags(state), str(tree)]
    out = subprocess.run(ours_cmd, env=env, capture_output=True, check=True).stdout.decode().strip()
    dump_cmd = [*tvixd_cmd(), "dump-path", *store_flags(state), out]
    reimp = interleaved({"ours": (ours_cmd, env)}, runs)
    nix_dump = ["nix-store", "--dump", str(tree)]
    # One untimed run of each first, as for the imports: the re-imports just read the tree nix dumps,
    # while nothing has read the store's blobs since they were written.
    run_once(dump_cmd, env=env)
    run_once(nix_dump, env=env_nix)
    dump = interleaved({"ours": (dump_cmd, env), "nix": (nix_dump, env_nix)}, runs)
    return [
        ("import (fresh store)", imp["ours"], imp["nix"]),
        ("import vs nix + `sync` (equal durability)", imp["ours"], imp["nix+sync"]),
        ("re-import (all blobs present)", reimp["ours"], imp["nix"]),
        ("dump-path vs nix-store --dump", dump["ours"], dump["nix"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default="/usr/share/doc")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the big-file case (0: skip)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: $TMPDIR)")
    parser.add_argument("--record", action="store_true", help="write the results into BENCHMARKS.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-import-"))
    try:
        env_nix = nix_env(work / "nixhome")
        tree = Path(args.tree)
        files = sum(len(f) for _, _, f in os.walk(tree))
        size = sum(os.lstat(os.path.join(d, n)).st_size for d, _, fs in os.walk(tree) for n in fs)
        rows = []
        for label, ours, ref in compare(work, tree, args.runs, env_nix):
            rows.append(
                [label, f"{ours.median_s:.2f} s", f"{ref.median_s:.2f} s", fmt_ratio(ours.median_s, ref.median_s),
                 f"{ours.median_cpu:.2f} / {ref.median_cpu:.2f} s", f"{ours.peak_rss_mib:.0f} MiB",
                 f"{ref.peak_rss_mib:.0f} MiB"]
            )  # fmt: skip
            print(rows[-1], flush=True)
        if args.big_mib:
            big_dir = work / "bigsrc"
            big_dir.mkdir()
            big = big_dir / "big.bin"
            block = os.urandom(1 << 20)
            with open(big, "wb") as f:
                for i in range(args.big_mib):
                    f.write(i.to_bytes(8, "little") + block[8:])
            runs = max(1, min(args.runs, 3))
            fresh = FreshDirs(work / "big")
            big_cases: dict[str, tuple[Command, dict[str, str]]] = {
                "ours": (lambda: [*tvixd_cmd(), "import", *store_flags(fresh("tvixd")), str(big)], tvixd_env()),
                "nix": (lambda: nix_add(fresh("nix"), big), env_nix),
            }
            got = interleaved(big_cases, runs)
            ours, ref = got["ours"], got["nix"]
            rows.append(
                [f"import one {args.big_mib} MiB file", f"{ours.median_s:.2f} s", f"{ref.median_s:.2f} s",
                 fmt_ratio(ours.median_s, ref.median_s), f"{ours.median_cpu:.2f} / {ref.median_cpu:.2f} s",
                 f"{ours.peak_rss_mib:.0f} MiB", f"{ref.peak_rss_mib:.0f} MiB"]
            )  # fmt: skip
            print(rows[-1], flush=True)
    finally:
        remove_tree(work)

    info = machine_info()
    table = markdown_table(["case", "tvixd", "nix", "ratio", "CPU tvixd / nix", "tvixd peak RSS", "nix peak RSS"], rows)
    body = (
        f"## import / dump-path vs Nix (`bench/import_bench.py`)\n\n"
        f"Tree `{args.tree}`: {files} files, {size / 1e6:.0f} MB; median of {args.runs} runs "
        f"(big file: of {max(1, min(args.runs, 3))}), runs of tvixd and nix interleaved, `sync` before each, "
        f"warm page cache, embedded store (fs:// + sqlite://) created by the run.\n"
        f"Machine: {info['cpu']}, {info['memory']}, Python {info['python']}, {info['nix']}, {info['date']}.\n"
        f"Command: `python bench/import_bench.py --runs {args.runs} --big-mib {args.big_mib} --record`\n\n"
        f"{table}\n"
    )
    print(body)
    if args.record:
        update_section("import", body)


if __name__ == "__main__":
    main()
