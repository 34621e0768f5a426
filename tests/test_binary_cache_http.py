"""`tvixd binary-cache` against real Nix 2.8 and a raw HTTP client: a real server subprocess on an ephemeral port.

Nix is isolated per test: NIX_REMOTE unset, throw-away `--store DIR` chroot stores, a fresh
XDG_CACHE_HOME for every read-side command (Nix caches narinfo lookups there, and after
`nix copy --to` it even caches the narinfo *it* uploaded), and no substituters.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, stop_gracefully, tvixd_env
from tests.fixtures import NAR_CONTENTS_COMPLICATED, NAR_CONTENTS_HELLOWORLD

START_TIMEOUT = 60.0
MEMORY = ("--blob-service-addr", "memory://", "--directory-service-addr", "memory://",
          "--path-info-service-addr", "memory://")


@dataclass
class Cache:
    """A running `tvixd binary-cache` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def events(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


@contextmanager
def start_cache(*args: str, env: dict[str, str] | None = None) -> Iterator[Cache]:
    """Run `python -m tvixd --log-format json binary-cache --listen-address 127.0.0.1:0 ARGS`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvixd", "--log-format", "json", "binary-cache",
         "--listen-address", "127.0.0.1:0", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or tvixd_env(), cwd=REPO_ROOT,
    )
    lines: list[str] = []
    ready = threading.Event()
    port: list[int] = []

    def reader() -> None:
        for raw in proc.stderr:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if not ready.is_set():
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == "binary cache listening":
                    port.append(ev["port"])
                    ready.set()
        ready.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        if not ready.wait(START_TIMEOUT) or not port:
            proc.kill()
            raise AssertionError("binary cache did not start:\n" + "\n".join(lines))
        yield Cache(proc, port[0], lines)
    finally:
        stop_gracefully(proc)
        t.join(timeout=10)


# -- real nix ---------------------------------------------------------------------------------

class Nix:
    """Real Nix in throw-away stores under ``root``; every command gets its own narinfo cache dir."""

    def __init__(self, root: Path) -> None:
        if shutil.which("nix") is None:
            pytest.skip("nix (Debian nix-bin) is not installed")
        self.root = root
        self._n = 0

    def env(self) -> dict[str, str]:
        self._n += 1
        env = {k: v for k, v in os.environ.items() if k not in ("NIX_REMOTE", "NIX_CONFIG", "NIX_PATH")}
        env["XDG_CACHE_HOME"] = str(self.root / f"xdg-cache-{self._n}")
        env["NIX_CONFIG"] = "experimental-features = nix-command\nsubstituters =\n"
        return env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["nix", *args], capture_output=True, text=True, env=self.env(), timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"nix {' '.join(args)} failed:\n{result.stderr}")
        return result

    def store(self, name: str) -> str:
        return str(self.root / name)

    def add_path(self, store: str, path: Path) -> str:
        return self.run("store", "add-path", "--store", store, str(path)).stdout.strip()

    def dump(self, store: str, store_path: str) -> bytes:
        real = Path(store) / store_path.lstrip("/")
        return subprocess.run(["nix-store", "--dump", str(real)], capture_output=True, check=True,
                              env=self.env()).stdout

    def keys(self, name: str) -> tuple[Path, str]:
        sk, pk = self.root / f"{name}.sk", self.root / f"{name}.pk"
        subprocess.run(["nix-store", "--generate-binary-cache-key", name, str(sk), str(pk)], check=True,
                       env=self.env())
        return sk, pk.read_text().strip()


def make_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "hello").write_text("Hello World!")
    (root / "empty").write_bytes(b"")
    (root / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (root / "sub" / "exe").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "sub" / "exe").chmod(0o755)
    (root / "sub" / "deeper" / "same").write_text("Hello World!")
    (root / "link").symlink_to("sub/exe")
    (root / "dangling").symlink_to("/nix/store/somewhereelse")
    return root


@pytest.fixture
def nix(tmp_path: Path) -> Nix:
    return Nix(tmp_path)


@pytest.fixture
def source_store(nix: Nix, tmp_path: Path) -> tuple[str, str, str]:
    """A local store holding a directory tree path and a text path referring to it (and another text path)."""
    store = nix.store("src")
    tree = nix.add_path(store, make_tree(tmp_path / "tree"))
    expr = f'let a = builtins.toFile "a" "x"; in builtins.toFile "b" "refs ${{a}} and {tree}"'
    # String context: `tree` is just a string here, so only `a` becomes a reference of `b`.
    b = nix.run("eval", "--raw", "--store", store, "--expr", expr).stdout.strip()
    return store, tree, b


def closure(nix: Nix, store: str, path: str) -> list[str]:
    return sorted(nix.run("path-info", "--store", store, "-r", path).stdout.split())


@pytest.mark.nix
@pytest.mark.parametrize("compression", [None, "none", "bzip2", "zstd"])
def test_nix_copy_to_and_back_is_byte_identical_and_signed(nix, source_store, compression):
    store, tree, b = source_store
    sk, pk = nix.keys("tvixd-test-1")
    with start_cache(*MEMORY, "--signing-key", str(sk)) as cache:
        to = cache.url + (f"?compression={compression}" if compression else "")
        nix.run("copy", "--store", store, "--to", to, tree, b)
        # path-info over HTTP: references and NarHash as Nix sees them.
        info = {p["path"]: p for p in json.loads(nix.run("path-info", "--json", "--store", cache.url, "-r", b).stdout)}
        src = {p["path"]: p for p in json.loads(nix.run("path-info", "--json", "--store", store, "-r", b).stdout)}
        assert set(info) == set(src) and len(info) == 2
        for path, p in info.items():
            assert p["narHash"] == src[path]["narHash"] and p["narSize"] == src[path]["narSize"]
            assert sorted(p["references"]) == sorted(src[path]["references"])
            assert any(s.startswith("tvixd-test-1:") for s in p["signatures"])
        # Substitute into a fresh store, checking signatures against the trusted key.
        dest = nix.store("dest")
        nix.run("copy", "--from", cache.url, "--to", dest, "--option", "trusted-public-keys", pk,
                "--option", "require-sigs", "true", tree, b)
        for path in (tree, b):
            assert nix.dump(dest, path) == nix.dump(store, path)
        assert closure(nix, dest, b) == closure(nix, store, b)


@pytest.mark.nix
def test_signatures_are_checked_against_the_trusted_key(nix, source_store):
    store, tree, _ = source_store
    sk, _pk = nix.keys("tvixd-test-1")
    _other_sk, other_pk = nix.keys("tvixd-test-1-other")
    with start_cache(*MEMORY, "--signing-key", str(sk)) as cache:
        nix.run("copy", "--store", store, "--to", cache.url + "?compression=none", tree)
        result = nix.run("copy", "--from", cache.url, "--to", nix.store("dest"), "--option", "trusted-public-keys",
                         other_pk, tree, check=False)
        assert result.returncode != 0
        assert "lacks a valid signature" in result.stderr


@pytest.mark.nix
def test_served_narinfo_and_nar_match_nix(nix, source_store):
    store, tree, b = source_store
    sk, _pk = nix.keys("k1")
    with start_cache(*MEMORY, "--signing-key", str(sk), "--priority", "41") as cache:
        nix.run("copy", "--store", store, "--to", cache.url, tree, b)
        status, headers, body = cache.request("GET", "/nix-cache-info")
        assert status == 200 and body == b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n"
        h = Path(b).name[:32]
        status, headers, body = cache.request("GET", f"/{h}.narinfo")
        assert status == 200 and headers["content-type"] == "text/x-nix-narinfo"
        text = body.decode()
        assert text.endswith("\n") and "\n\n" not in text
        fields = [line.split(": ", 1) for line in text.splitlines()]
        keys = [k for k, _ in fields]
        assert keys[:3] == ["StorePath", "URL", "Compression"] and keys.count("Sig") == 1
        values = dict(fields)
        assert values["StorePath"] == b and values["Compression"] == "none"
        src = json.loads(nix.run("path-info", "--json", "--store", store, b).stdout)[0]
        assert values["References"].split() == sorted(Path(r).name for r in src["references"])
        # The NAR at the URL is exactly what Nix dumps, with Content-Length.
        nar = nix.dump(store, b)
        status, headers, body = cache.request("GET", "/" + values["URL"])
        assert status == 200 and body == nar and headers["content-length"] == str(len(nar))
        assert values["NarSize"] == str(len(nar))
        # HEAD: same headers, no body.
        status, hheaders, body = cache.request("HEAD", f"/{h}.narinfo")
        assert status == 200 and body == b"" and hheaders["content-length"] == headers_len(text)
        status, hheaders, body = cache.request("HEAD", "/" + values["URL"])
        assert status == 200 and body == b"" and hheaders["content-length"] == str(len(nar))


def headers_len(text: str) -> str:
    return str(len(text.encode()))


@pytest.mark.nix
def test_range_requests_and_zstd(nix, source_store):
    import zstandard

    store, tree, _ = source_store
    with start_cache(*MEMORY) as cache:
        nix.run("copy", "--store", store, "--to", cache.url, tree)
        nar = nix.dump(store, tree)
        h = Path(tree).name[:32]
        url = "/" + dict(line.split(": ", 1) for line in cache.request("GET", f"/{h}.narinfo")[2].decode()
                         .splitlines())["URL"]
        size = len(nar)
        cases = {
            "bytes=0-99": (0, 100),
            "bytes=100-": (100, size),
            f"bytes={size - 10}-{size + 1000}": (size - 10, size),
            "bytes=-77": (size - 77, size),
            "bytes=1000-1000": (1000, 1001),
            # inside the big file, and a span across file boundaries
            "bytes=2000000-2100000": (2000000, 2100001),
            f"bytes={size - 3000}-{size - 1}": (size - 3000, size),
        }
        for header, (start, end) in cases.items():
            status, headers, body = cache.request("GET", url, headers={"Range": header})
            assert status == 206, header
            assert body == nar[start:end], header
            assert headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
            assert headers["content-length"] == str(end - start)
        status, headers, _ = cache.request("GET", url, headers={"Range": f"bytes={size}-"})
        assert status == 416
        # multiple ranges: the whole NAR (allowed by RFC 9110)
        status, _, body = cache.request("GET", url, headers={"Range": "bytes=0-1,5-6"})
        assert status == 200 and body == nar
        # zstd: via Accept-Encoding, or the .nar.zst URL
        status, headers, body = cache.request("GET", url, headers={"Accept-Encoding": "gzip, zstd"})
        assert status == 200 and headers["content-encoding"] == "zstd"
        assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == nar
        status, headers, body = cache.request("GET", url + ".zst")
        assert status == 200 and "content-encoding" not in headers
        assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == nar
        # HEAD of a compressed NAR: its length is known only by compressing, so no Content-Length (not a
        # false 0) and no chunked framing; the next request on the same connection still gets its answer.
        conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=60)
        try:
            for path, extra in ((url + ".zst", {}), (url, {"Accept-Encoding": "zstd"})):
                conn.request("HEAD", path, headers=extra)
                resp = resp_head = conn.getresponse()
                assert resp.status == 200 and resp.read() == b""
                assert resp_head.getheader("Content-Length") is None, path
                assert resp_head.getheader("Transfer-Encoding") is None, path
                conn.request("GET", f"/{h}.narinfo")
                resp = conn.getresponse()
                assert resp.status == 200 and resp.read().startswith(b"StorePath: ")
        finally:
            conn.close()


def test_not_found_and_bad_requests():
    with start_cache(*MEMORY) as cache:
        assert cache.request("GET", "/00000000000000000000000000000000.narinfo")[0] == 404
        assert cache.request("HEAD", "/00000000000000000000000000000000.narinfo")[0] == 404
        for bad in ("/0000000000000000000000000000000u.narinfo", "/000.narinfo", "/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
                    "z.narinfo"):
            status, _, body = cache.request("GET", bad)
            assert status == 400, bad
            assert b"hash" in body
        assert cache.request("GET", "/nar/" + "0" * 32 + "-" + "0" * 52 + ".nar")[0] == 404
        assert cache.request("GET", "/nar/whatever.nar")[0] == 404
        assert cache.request("GET", "/elsewhere")[0] == 404
        assert cache.request("DELETE", "/nix-cache-info")[0] == 405
        assert cache.request("PUT", "/nix-cache-info", b"StoreDir: /nix/store\n")[0] == 204
        for optional in ("/" + "1" * 32 + ".ls", "/log/abc-foo.drv", "/realisations/sha256:abc!out.doi",
                         "/build-trace-v2/abc/out.doi", "/debuginfo/0123.debug"):
            assert cache.request("PUT", optional, b"{}")[0] in (200, 201, 204), optional
        # no traceback, nothing but JSON on stderr
        assert all(line.startswith("{") for line in cache.lines)


def _nar_sha256_nix32(nar: bytes) -> str:
    from tvixd.castore import nixbase32

    return nixbase32.encode(hashlib.sha256(nar).digest())


def _narinfo(path: str, url: str, nar: bytes, **override: str) -> bytes:
    fields = {"StorePath": path, "URL": url, "Compression": "none",
              "NarHash": "sha256:" + _nar_sha256_nix32(nar), "NarSize": str(len(nar)), "References": ""}
    fields.update(override)
    return "".join(f"{k}: {v}\n" for k, v in fields.items()).encode()


def test_uploads_are_verified_and_leave_nothing_behind():
    path = "/nix/store/dk5gf94s23q9amfr91nphc0pj8qsa17c-cx"  # NAR_CONTENTS_COMPLICATED, named cx (SPEC §4.4)
    h = "dk5gf94s23q9amfr91nphc0pj8qsa17c"
    with start_cache(*MEMORY) as cache:
        # A malformed NAR is refused at once.
        status, _, body = cache.request("PUT", "/nar/bad.nar", NAR_CONTENTS_COMPLICATED[:-8])
        assert status == 400 and b"truncated" in body
        # A NAR whose narinfo does not match: 400, and the path never appears.
        assert cache.request("PUT", "/nar/x.nar", NAR_CONTENTS_COMPLICATED)[0] == 204
        bad = _narinfo(path, "nar/x.nar", NAR_CONTENTS_HELLOWORLD)
        status, _, body = cache.request("PUT", f"/{h}.narinfo", bad)
        assert status == 400 and b"NarHash" in body
        assert cache.request("GET", f"/{h}.narinfo")[0] == 404
        # ... and that upload is gone: a matching narinfo now finds no NAR.
        good = _narinfo(path, "nar/x.nar", NAR_CONTENTS_COMPLICATED)
        status, _, body = cache.request("PUT", f"/{h}.narinfo", good)
        assert status == 400 and b"not uploaded" in body
        # Wrong size only.
        assert cache.request("PUT", "/nar/x.nar", NAR_CONTENTS_COMPLICATED)[0] == 204
        status, _, body = cache.request("PUT", f"/{h}.narinfo", _narinfo(path, "nar/x.nar", NAR_CONTENTS_COMPLICATED,
                                                                         NarSize="841"))
        assert status == 400 and b"NarSize" in body
        # A narinfo uploaded under another hash, corrupt narinfos.
        assert cache.request("PUT", "/nar/x.nar", NAR_CONTENTS_COMPLICATED)[0] == 204
        assert cache.request("PUT", "/" + "0" * 32 + ".narinfo", good)[0] == 400
        for corrupt in (b"StorePath: /nix/store/foo\n", good.replace(b"NarSize: 840", b"NarSize: 0"),
                        good.rstrip(b"\n"), good + b"Sig: k:notbase64\n"):
            assert cache.request("PUT", f"/{h}.narinfo", corrupt)[0] == 400, corrupt
        # The file hash in a Nix-style URL is checked.
        assert cache.request("PUT", "/nar/" + "0" * 52 + ".nar", NAR_CONTENTS_COMPLICATED)[0] == 400
        # Finally the right one works and serves back the same bytes and the expected NarHash.
        assert cache.request("PUT", "/nar/x.nar.zst", _zstd(NAR_CONTENTS_COMPLICATED))[0] == 204
        good = _narinfo(path, "nar/x.nar.zst", NAR_CONTENTS_COMPLICATED, Compression="zstd")
        assert cache.request("PUT", f"/{h}.narinfo", good)[0] == 204
        status, _, body = cache.request("GET", f"/{h}.narinfo")
        assert status == 200
        url = dict(line.split(": ", 1) for line in body.decode().splitlines())["URL"]
        assert cache.request("GET", "/" + url)[2] == NAR_CONTENTS_COMPLICATED
        assert "sha256:" + _nar_sha256_nix32(NAR_CONTENTS_COMPLICATED) in body.decode()


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def _blob_files(blob_dir: Path) -> list[Path]:
    return [p for p in blob_dir.rglob("*") if p.is_file() and ".tmp" not in p.name and not p.name.startswith(".")]


def _raw_get(port: int, path: str) -> tuple[bytes, bytes]:
    """GET over a raw socket: (status line + headers, body as received until the server closed)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.nix
def test_missing_or_corrupt_blobs_never_give_a_complete_looking_response(nix, tmp_path):
    store = nix.store("src")
    big = tmp_path / "bigfile"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    path = nix.add_path(store, big)
    blob_dir = tmp_path / "blobs"
    args = ("--blob-service-addr", f"fs://{blob_dir}", "--directory-service-addr", "memory://",
            "--path-info-service-addr", "memory://")
    with start_cache(*args) as cache:
        nix.run("copy", "--store", store, "--to", cache.url + "?compression=none", path)
        h = Path(path).name[:32]
        url = "/" + dict(line.split(": ", 1) for line in cache.request("GET", f"/{h}.narinfo")[2].decode()
                         .splitlines())["URL"]
        nar = nix.dump(store, path)
        assert cache.request("GET", url)[2] == nar
        (blob,) = [p for p in _blob_files(blob_dir) if p.stat().st_size == 8 * 1024 * 1024]
        # Corrupt (same size, different bytes): headers were sent, the body stops short of Content-Length.
        original = blob.read_bytes()
        blob.chmod(0o644)
        blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        head, body = _raw_get(cache.port, url)
        assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(nar)}".encode() in head
        assert len(body) < len(nar)
        # Missing: a 5xx before any NAR header, with a message naming the blob.
        blob.unlink()
        status, headers, body = cache.request("GET", url)
        assert status == 500 and headers["content-type"].startswith("text/plain")
        assert b"blob" in body and b"not found" in body
        status, _, _ = cache.request("HEAD", url)
        assert status == 500
        assert any(e.get("event") == "aborting response mid-stream" for e in cache.events())
        assert all(line.startswith("{") for line in cache.lines), "\n".join(cache.lines)


def _upload_file_path(cache: Cache, data: bytes, name: str = "big") -> tuple[str, bytes]:
    """PUT a single-file NAR and its narinfo; returns (NAR URL path, NAR bytes)."""
    from tvixd.castore.storepath import build_nar_based_store_path

    nar = _nar_file(data)
    sp = build_nar_based_store_path(hashlib.sha256(nar).digest(), name)
    assert cache.request("PUT", f"/nar/{name}.nar", nar)[0] == 204
    assert cache.request("PUT", f"/{str(sp)[:32]}.narinfo", _narinfo(sp.absolute(), f"nar/{name}.nar", nar))[0] == 204
    body = cache.request("GET", f"/{str(sp)[:32]}.narinfo")[2].decode()
    return "/" + dict(line.split(": ", 1) for line in body.splitlines())["URL"], nar


def _nar_file(data: bytes) -> bytes:
    from tests.fixtures import _nar

    return _nar(b"nix-archive-1", b"(", b"type", b"regular", b"contents", data, b")")


def test_a_stalled_download_does_not_block_other_requests():
    """Client A stops reading mid-NAR; B's full download and narinfo lookups still complete meanwhile."""
    import socket

    # Far more than the loopback socket buffers hold (a few MiB each way): A's sender must block.
    data = os.urandom(48 * 1024 * 1024)
    with start_cache(*MEMORY) as cache:
        url, nar = _upload_file_path(cache, data)
        a = socket.create_connection(("127.0.0.1", cache.port), timeout=60)
        a.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        first = a.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        # A is now stalled with most of the NAR unsent; B must not wait for it.
        for _ in range(3):
            status, _, body = cache.request("GET", url)
            assert status == 200 and body == nar
            assert cache.request("GET", "/nix-cache-info")[0] == 200
        # A resumes and gets every byte.
        received = first
        while len(received) < len(nar) + first.index(b"\r\n\r\n") + 4:
            chunk = a.recv(1 << 20)
            if not chunk:
                break
            received += chunk
        a.close()
        assert received.partition(b"\r\n\r\n")[2] == nar


@pytest.mark.nix
def test_a_path_imported_with_tvixd_import_is_substitutable(nix, tmp_path):
    from tests.conftest import run_tvixd

    tree = make_tree(tmp_path / "imported")
    db = f"sqlite://{tmp_path / 'store.sqlite'}"
    addrs = ("--blob-service-addr", f"fs://{tmp_path / 'blobs'}", "--directory-service-addr", db,
             "--path-info-service-addr", db)
    result = run_tvixd("import", *addrs, str(tree))
    assert result.returncode == 0, result.stderr.decode()
    path = result.stdout.decode().strip()
    sk, pk = nix.keys("import-key")
    with start_cache(*addrs, "--signing-key", str(sk)) as cache:
        dest = nix.store("dest")
        nix.run("copy", "--from", cache.url, "--to", dest, "--option", "trusted-public-keys", pk, path)
    nar = subprocess.run(["nix-store", "--dump", str(tree)], capture_output=True, check=True).stdout
    assert nix.dump(dest, path) == nar
    # Nix computes the same store path for the tree (tvixd import's promise), and accepted the copy.
    assert nix.add_path(nix.store("check"), tree) == path


def test_sd_notify_ready_and_stopping(tmp_path):
    import socket

    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(sock_path))
        listener.settimeout(60)
        with start_cache(*MEMORY, env=tvixd_env(NOTIFY_SOCKET=str(sock_path))) as cache:
            ready = listener.recv(4096).decode()
            assert ready.startswith("READY=1") and str(cache.port) in ready
            cache.proc.send_signal(signal.SIGTERM)
            assert listener.recv(4096).decode().startswith("STOPPING=1")
            assert cache.proc.wait(timeout=60) == 0


def test_cli_errors_are_one_line(tmp_path):
    from tests.conftest import run_tvixd

    bad_key = tmp_path / "bad.sk"
    bad_key.write_text("name:" + "A" * 43 + "=")  # 32 bytes: a public key, not a secret key
    for args, expected in (
        (("--signing-key", str(bad_key)), "secret key has 32 bytes"),
        (("--signing-key", str(tmp_path / "missing")), "cannot read signing key"),
        (("--listen-address", "nonsense"), "listen_address"),
        (("--threads", "0"), "--threads must be at least 1"),
    ):
        result = run_tvixd("binary-cache", *MEMORY, *args, timeout=60)
        err = result.stderr.decode()
        assert result.returncode != 0, args
        assert expected in err and "Traceback" not in err, err
