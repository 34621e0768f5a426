"""`tvixd mount` against the files it serves: sequential read of a big file, `find` over a tree.

Usage: python bench/fuse_bench.py [--big-mib 512] [--tree /usr/share/doc] [--runs 5] [--record]

Needs /dev/fuse. One embedded store (fs:// blobs + sqlite://) in a temp dir gets the big file
(random bytes) and the tree through `tvixd import`; then, in the same run:

- read: `cat BLOB_FILE` (the fs:// blob file itself, page cache warm) versus `cat MOUNT/<big>`
  on a fresh mount per run (so the FUSE side starts cold and every byte goes through tvixd),
  plus a second `cat` on the same mount (kernel page cache, kept because content never changes);
- find: `find TREE` (warm dentry cache) versus `find MOUNT/<tree>` on a fresh mount per run
  (directories fetched lazily from sqlite) and again on the same mount (tvixd's inodes known).

Every number is the median of --runs runs after one untimed warm-up of the reference side.
With --requests it instead counts the FUSE requests of one cold `find`, a warm `find` and a `cat`
(per operation, plus the sizes of the reads the kernel sent), from a mount whose handlers count.
Goals (issue 5): read >= 0.5x the direct read's throughput, cold find within 3x of the original.
With --record the results replace the "fuse" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, markdown_table, run_once, tvixd_cmd, tvixd_env, update_section


def store_flags(state: Path) -> list[str]:
    db = f"sqlite://{state / 'store.sqlite'}"
    return ["--blob-service-addr", f"fs://{state / 'blobs'}", "--directory-service-addr", db,
            "--path-info-service-addr", db]  # fmt: skip


def tvixd_import(state: Path, path: Path) -> str:
    out = subprocess.run(
        [*tvixd_cmd(), "import", str(path), *store_flags(state)], env=tvixd_env(), capture_output=True, check=True
    )
    return out.stdout.decode().strip().removeprefix("/nix/store/")


class Mount:
    """A running mount; ``cpu()`` is the CPU time (user + system, seconds) its process used so far."""

    def __init__(self, path: Path, pid: int) -> None:
        self.path, self.pid = path, pid

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def timed(self, cmd: list[str]) -> tuple[float, float]:
        """(wall seconds of ``cmd``, CPU seconds the mount spent meanwhile)."""
        cpu = self.cpu()
        wall = run_once(cmd).seconds
        return wall, self.cpu() - cpu


@contextmanager
def mounted(state: Path, dest: Path) -> Iterator[Mount]:
    dest.mkdir(exist_ok=True)
    log = dest.with_suffix(".log")
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*tvixd_cmd(), "--log-format", "json", "mount", str(dest), *store_flags(state)],
            env=tvixd_env(), stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b'"mounted"' not in log.read_bytes():  # READY: after FUSE INIT and the read-ahead tuning
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tvixd mount did not come up: " + log.read_text())
            time.sleep(0.02)
        yield Mount(dest, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        if proc.wait(timeout=60) != 0:
            raise RuntimeError(f"tvixd mount exited {proc.returncode}")
        subprocess.run(["fusermount3", "-u", "-z", str(dest)], capture_output=True, check=False)


def serve_counting(dest: Path, state: Path, out: Path) -> None:
    """Child process of --requests: `tvixd mount` with every request counted; SIGUSR1 writes the counts to ``out``.

    Counts what reaches tvixd's handlers; requests the protocol layer answers itself (INIT, OPENDIR,
    FLUSH, ...) are counted under their opcode number by wrapping the session's dispatch table too.
    """
    import collections
    import json
    import signal as signals
    import struct

    import tvixd.fuse.fs as fs
    from tvixd.fuse import kernel
    from tvixd.fuse.mount import serve
    from tvixd.store import Store, StoreAddrs

    counts: collections.Counter[str] = collections.Counter()
    handlers = fs.StoreFS.handlers

    def counted(self: Any) -> dict[int, Any]:
        def wrap(opcode: int, handler: Any) -> Any:
            def wrapper(nodeid: int, req: bytes) -> Any:
                counts[kernel.OPCODE_NAMES.get(opcode, str(opcode)).lower()] += 1
                if opcode == kernel.READ:
                    counts[f"read of {struct.unpack_from('<I', req, 56)[0] >> 10} KiB"] += 1
                return handler(nodeid, req)

            return wrapper

        return {opcode: wrap(opcode, h) for opcode, h in handlers(self).items()}

    fs.StoreFS.handlers = counted  # type: ignore[method-assign]  # what serve() asks for
    signals.signal(signals.SIGUSR1, lambda *_: out.write_text(json.dumps(counts)))
    with Store.open(StoreAddrs.embedded(state)) as store:
        serve(store, dest, on_ready=lambda: out.write_text("{}"))


def count_requests(state: Path, tmp: Path, big_name: str, tree_name: str) -> str:
    """A markdown table: FUSE requests per operation for a cold find, a warm find and a cat, on one fresh mount."""
    import json

    dest, out = tmp / "mnt-count", tmp / "counts.json"
    dest.mkdir()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-counting", str(dest), str(state), str(out)],
                            env=tvixd_env())  # fmt: skip
    phases: list[tuple[str, dict[str, int]]] = []
    try:
        deadline = time.monotonic() + 60
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the counting mount did not come up")
            time.sleep(0.05)

        def snapshot() -> dict[str, int]:
            out.unlink()
            proc.send_signal(signal.SIGUSR1)
            while not out.exists():
                time.sleep(0.01)
            time.sleep(0.05)  # the write is not atomic; it is tiny
            return json.loads(out.read_text())

        before = snapshot()
        find = ["find", str(dest / tree_name)]
        cat = ["cat", str(dest / big_name)]
        for what, cmd in [("cold `find`", find), ("warm `find`", find), ("`cat` big file", cat)]:
            run_once(cmd)
            after = snapshot()
            phases.append((what, {k: after.get(k, 0) - before.get(k, 0) for k in after}))
            before = after
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        subprocess.run(["fusermount3", "-u", "-z", str(dest)], capture_output=True, check=False)
    ops = sorted({k for _, c in phases for k, n in c.items() if n})
    rows = [[op, *(str(c.get(op, 0)) for _, c in phases)] for op in ops]
    return markdown_table(["request", *(what for what, _ in phases)], rows)


def median_time(cmd: list[str], runs: int) -> float:
    return statistics.median(run_once(cmd).seconds for _ in range(runs))


NOTES = """\
Where the time goes (tvixd speaks the FUSE protocol itself: tvixd/fuse/kernel.py):

- Read: as root on Linux >= 6.9, a blob bigger than 1 MiB in the fs:// store is verified whole
  at open (Part A §7: never serve unverified bytes) by blake3 over an mmap of the blob file on both
  cores, then registered as the open file's passthrough backing file: the kernel reads the blob
  file itself and no READ reaches tvixd. The fresh-mount `cat` is therefore the verification
  (about 0.12-0.15 s per 512 MiB here, as long as or longer than the direct `cat` itself) plus a
  direct read: it stays below 0.5x while each fresh mount verifies what it serves. A verified
  backing file stays registered after close (64 most recent), so the same mount's second `cat`
  verifies nothing again.
- find: the kernel sends no OPENDIR/RELEASEDIR (FUSE_NO_OPENDIR_SUPPORT) and caches listings, so a
  fresh mount costs 2 READDIRPLUS per directory (the second, empty one ends the listing: the kernel
  marks its listing cache complete only on an empty reply) and a repeated `find` almost none.
  Listings carry attributes for subdirectories only (node id 0 for files: no inode per file in the
  kernel) until a process looks a file up. The first listing of a store path fetches its whole tree
  (`get_closure_entries`: one SQLite query per tree level, rows checked with blake3 and decoded
  without protobuf, ~10 ms for /usr/share/doc's 818 directories, most of it the pure-Python decode)
  and gives every entry its inode (~3 ms); each served listing queues its subdirectories' listings,
  which the request loop packs between requests (`Session.idle_work`). What bounds a fresh mount is
  the ~1,700 round trips: with every listing packed before `find` starts, it still takes ~50 ms with
  `find` and the mount on one CPU and 55-80 ms on two (against 18-20 ms for the original; load ~1):
  ~2.8 us of Python per request, the rest is the kernel's (request and reply copies, waking the other
  side, the listing cache, one inode per directory). Add the tree fetch and the 3x goal is out of reach
  for this request pattern."""


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-counting":
        serve_counting(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--tree", type=Path, default=Path("/usr/share/doc"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--requests", action="store_true", help="count the FUSE requests per operation instead")
    args = ap.parse_args()

    from tvixd.blobservice.fs import FsBlobService
    from tvixd.castore.digest import B3Digest

    with tempfile.TemporaryDirectory(prefix="tvixd-fuse-bench-") as tmp_s:
        tmp = Path(tmp_s)
        state = tmp / "state"
        state.mkdir()
        big = tmp / "big"
        size = args.big_mib * 2**20
        with open(big, "wb") as f:
            for _ in range(args.big_mib):
                f.write(os.urandom(2**20))
        big_name = tvixd_import(state, big)
        tree_name = tvixd_import(state, args.tree)
        if args.requests:
            print(count_requests(state, tmp, big_name, tree_name))
            return
        import blake3

        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(big)
        blob_file = FsBlobService(str(state / "blobs")).path_of(B3Digest(hasher.digest()))
        assert os.path.getsize(blob_file) == size

        # Sequential read.
        run_once(["cat", blob_file])  # warm the page cache
        direct = median_time(["cat", blob_file], args.runs)
        cold, warm, cold_cpu = [], [], []
        for i in range(args.runs):
            with mounted(state, tmp / f"mnt-read-{i}") as mnt:
                wall, cpu = mnt.timed(["cat", str(mnt.path / big_name)])
                cold.append(wall)
                cold_cpu.append(cpu)
                warm.append(run_once(["cat", str(mnt.path / big_name)]).seconds)
        read_cold, read_warm, read_cpu = statistics.median(cold), statistics.median(warm), statistics.median(cold_cpu)

        # find over the tree.
        run_once(["find", str(args.tree)])
        find_orig = median_time(["find", str(args.tree)], args.runs)
        fcold, fwarm, fcold_cpu, fwarm_cpu = [], [], [], []
        for i in range(args.runs):
            with mounted(state, tmp / f"mnt-find-{i}") as mnt:
                wall, cpu = mnt.timed(["find", str(mnt.path / tree_name)])
                fcold.append(wall)
                fcold_cpu.append(cpu)
                wall, cpu = mnt.timed(["find", str(mnt.path / tree_name)])
                fwarm.append(wall)
                fwarm_cpu.append(cpu)
        find_cold, find_warm = statistics.median(fcold), statistics.median(fwarm)
        find_cold_cpu, find_warm_cpu = statistics.median(fcold_cpu), statistics.median(fwarm_cpu)
        entries = sum(1 + len(d) + len(f) for _, d, f in os.walk(args.tree)) - 1

    mib = size / 2**20

    def rate(seconds: float) -> str:
        return f"{mib / seconds:.0f} MiB/s"

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    rows_read = [
        ["`cat` blob file (fs://, page cache)", ms(direct), rate(direct), "1.00x", "-"],
        ["`cat` through fresh mount", ms(read_cold), rate(read_cold), f"{direct / read_cold:.2f}x", ms(read_cpu)],
        ["`cat` again, same mount (page cache)", ms(read_warm), rate(read_warm), f"{direct / read_warm:.2f}x", "-"],
    ]
    rows_find = [
        [f"`find {args.tree}`", ms(find_orig), "1.00x", "-"],
        ["`find` through fresh mount", ms(find_cold), f"{find_cold / find_orig:.1f}x", ms(find_cold_cpu)],
        ["`find` again, same mount", ms(find_warm), f"{find_warm / find_orig:.1f}x", ms(find_warm_cpu)],
    ]
    info = machine_info()
    body = "\n".join([
        "## FUSE (`tvixd mount`)",
        "",
        f"`python bench/fuse_bench.py --big-mib {args.big_mib} --tree {args.tree} --runs {args.runs}`; "
        f"{info['date']}, {info['cpu']}, {info['memory']}, kernel {info['kernel']}, Python {info['python']}. "
        f"Load average {os.getloadavg()[0]:.1f} at the end (a shared machine). Medians; embedded store "
        "(fs:// + sqlite://), imported with `tvixd import`; \"tvixd CPU\" is the mount process's user + system time.",
        "",
        f"Sequential read of one {mib:.0f} MiB file (goal: >= 0.5x the direct throughput):",
        "",
        markdown_table(["what", "time", "throughput", "vs direct", "tvixd CPU"], rows_read),
        "",
        f"`find` over {args.tree} ({entries} entries) (goal: fresh mount within 3x of the original):",
        "",
        markdown_table(["what", "time", "vs original", "tvixd CPU"], rows_find),
        "",
        NOTES,
    ])  # fmt: skip
    print(body)
    if args.record:
        update_section("fuse", body)


if __name__ == "__main__":
    main()
