"""Benchmark `tvixd binary-cache`: narinfo latency, single-stream and parallel NAR throughput.

Setup: a ~100 MiB tree (3 large files and 2000 small ones) is imported with
`tvixd import` into an embedded store (fs:// blobs, sqlite:// directories and
path infos) in a temp dir, and served by a real `tvixd binary-cache`
subprocess on 127.0.0.1.

- narinfo: sequential GET /<hash>.narinfo over one keep-alive connection
  (as Nix's curl does), p50 and p99; a signing key is configured, so every
  response carries a fresh ed25519 signature.
- NAR: GET of the NAR by curl (libcurl, as Nix), warm (the tree was read
  once before); median MiB/s of several runs, compared with `nix-store --dump TREE >/dev/null`
  of the same tree (warm) in the same run.
- parallel: two curl downloads at once, aggregate MiB/s.

Run: python bench/binary_cache_bench.py [--size-mib 100] [--runs 5] [--lookups 2000] [--no-write]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fmt_ratio, machine_info, markdown_table, percentile, tvixd_cmd, tvixd_env, update_section


def make_tree(root: Path, size_mib: int) -> None:
    rnd = random.Random(42)
    root.mkdir()
    small_total = 0
    for i in range(2000):
        d = root / f"d{i % 20:02d}"
        d.mkdir(exist_ok=True)
        n = rnd.randint(512, 8192)
        (d / f"f{i:04d}").write_bytes(os.urandom(n))
        small_total += n
    big = (size_mib * 1024 * 1024 - small_total) // 3
    for i in range(3):
        (root / f"big{i}").write_bytes(os.urandom(big))


def start_cache(args: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*tvixd_cmd(), "--log-format", "json", "--log-level", "warning", "binary-cache",
                             "--listen-address", "127.0.0.1:0", *args],
                            env=tvixd_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # The listening line is logged at info; with --log-level warning we find the port from /proc instead.
    deadline = time.time() + 60
    while time.time() < deadline:
        port = _listening_port(proc.pid)
        if port:
            return proc, port
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
        time.sleep(0.1)
    raise RuntimeError("binary cache did not start")


def _listening_port(pid: int) -> int | None:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
            return int(parts[1].split(":")[1], 16)
    return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def narinfo_latencies(port: int, hash_part: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", f"/{hash_part}.narinfo")
        resp = conn.getresponse()
        resp.read()
        times.append(time.perf_counter() - t)
        assert resp.status == 200
    conn.close()
    return times


def download(port: int, url: str) -> tuple[int, float]:
    """(bytes, seconds) of one GET by curl (libcurl is what Nix downloads with), body to /dev/null."""
    out = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                          f"http://127.0.0.1:{port}{url}"], capture_output=True, text=True, check=True).stdout
    size, secs = out.split()
    return int(size), float(secs)


def parallel_download(port: int, url: str, n: int) -> float:
    """Aggregate MiB/s of ``n`` simultaneous curl downloads (separate processes: no client-side GIL)."""
    start = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}",
                               f"http://127.0.0.1:{port}{url}"], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    total = 0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError("curl failed")
        total += int(out)
    return total / (time.perf_counter() - start) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    opts = ap.parse_args()
    info = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="tvixd-bc-bench-"))
    proc = None
    try:
        tree = tmp / "tree"
        make_tree(tree, opts.size_mib)
        db = f"sqlite://{tmp / 'store.sqlite'}"
        addrs = ["--blob-service-addr", f"fs://{tmp / 'blobs'}", "--directory-service-addr", db,
                 "--path-info-service-addr", db]
        out = subprocess.run([*tvixd_cmd(), "import", "--json", *addrs, str(tree)], env=tvixd_env(),
                             capture_output=True, check=True).stdout
        imported = json.loads(out.splitlines()[0])
        store_path, nar_size = imported["path"], imported["narSize"]
        hash_part = Path(store_path).name[:32]
        key = tmp / "key.sk"
        subprocess.run(["nix-store", "--generate-binary-cache-key", "bench-1", str(key), str(tmp / "key.pk")],
                       check=True)
        proc, port = start_cache([*addrs, "--signing-key", str(key)])
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", f"/{hash_part}.narinfo")
        narinfo = conn.getresponse().read().decode()
        url = "/" + dict(line.split(": ", 1) for line in narinfo.splitlines())["URL"]

        # narinfo latency (after a warm-up)
        narinfo_latencies(port, hash_part, 200)
        cpu0 = cpu_seconds(proc.pid)
        lat = narinfo_latencies(port, hash_part, opts.lookups)
        narinfo_cpu_us = (cpu_seconds(proc.pid) - cpu0) / opts.lookups * 1e6
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000

        # single stream, warm
        download(port, url)
        rates = []
        cpu0 = cpu_seconds(proc.pid)
        for _ in range(opts.runs):
            n, secs = download(port, url)
            assert n == nar_size
            rates.append(n / secs / 2**20)
        nar_cpu_rate = nar_size * opts.runs / (cpu_seconds(proc.pid) - cpu0) / 2**20
        ours = statistics.median(rates)

        # nix-store --dump of the same tree, warm
        env = {k: v for k, v in os.environ.items() if k != "NIX_REMOTE"}
        env["XDG_CACHE_HOME"] = str(tmp / "xdg")
        dump_rates = []
        for i in range(opts.runs + 1):
            t = time.perf_counter()
            with open(os.devnull, "wb") as devnull:
                subprocess.run(["nix-store", "--dump", str(tree)], stdout=devnull, check=True, env=env)
            if i:
                dump_rates.append(nar_size / (time.perf_counter() - t) / 2**20)
        nix_rate = statistics.median(dump_rates)

        # two parallel streams
        parallel = statistics.median(parallel_download(port, url, 2) for _ in range(max(2, opts.runs // 2)))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()[0]
    rows = [
        ["narinfo lookup p50 (keep-alive, signed)", f"{p50:.3f} ms", "< 1 ms",
         f"p99 {p99:.3f} ms, n={opts.lookups}; server CPU {narinfo_cpu_us:.0f} us/lookup"],
        ["NAR download, 1 stream, warm", f"{ours:.0f} MiB/s", ">= 300 MiB/s",
         f"{nar_size / 2**20:.0f} MiB NAR, median of {opts.runs}; server CPU-bound rate {nar_cpu_rate:.0f} MiB/s "
         "(bytes / server CPU seconds, all threads)"],
        ["`nix-store --dump` same tree, warm", f"{nix_rate:.0f} MiB/s", "reference",
         f"binary cache / nix-store --dump = {fmt_ratio(ours, nix_rate)}"],
        ["NAR download, 2 parallel streams", f"{parallel:.0f} MiB/s aggregate", "no serialization",
         f"{fmt_ratio(parallel, ours)} of one stream"],
    ]
    table = markdown_table(["measure", "result", "goal", "notes"], rows)
    machine = ", ".join(f"{k}: {v}" for k, v in info.items())
    body = (
        "## binary cache (`tvixd binary-cache`)\n\n"
        f"`python bench/binary_cache_bench.py --size-mib {opts.size_mib} --runs {opts.runs} "
        f"--lookups {opts.lookups}`; {machine}; load average {load:.1f} at the end of the run "
        "(2 cores shared with other jobs: wall-clock numbers are pessimistic, the CPU columns are not).\n"
        "Store: fs:// blobs + sqlite:// (embedded), filled by `tvixd import`; server: a real `tvixd binary-cache` "
        "subprocess (gevent pywsgi, 8 pool threads), client on the same machine.\n\n" + table + "\n"
    )
    print(body)
    if not opts.no_write:
        update_section("binary-cache", body)


if __name__ == "__main__":
    main()
