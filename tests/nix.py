"""The one wrapper around Debian's real Nix (``nix-bin``) that compatibility tests use.

Every call is isolated from the host, each setting with the problem it prevents:

- ``NIX_REMOTE`` is removed: with it set, nix-store would talk to a (possibly absent)
  daemon and to the host's store instead of our throw-away one.
- ``--store DIR`` (a fresh temporary chroot store per call unless one is given):
  tests never touch /nix and never see each other's paths, so they are xdist-safe.
- ``XDG_CACHE_HOME``/``HOME`` point into a temp dir: nix writes its fetcher/eval
  caches there, and parallel tests must not share (or lock) one cache.
- ``NIX_CONF_DIR``/``NIX_USER_CONF_FILES`` point at an empty config: a host
  ``/etc/nix/nix.conf`` (build users, substituters, experimental features) must not
  change what these commands do.
- ``--option substituters ''``: never go to the network (cache.nixos.org).
- ``LC_ALL=C``: messages are stable and names are not reinterpreted by a locale.

Tests that use this module call :func:`require_nix` (or use the ``requires_nix``
mark), which skips with a clear reason only when nix is not installed; CI installs
``nix-bin``, so there the comparisons always run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NIX_STORE = shutil.which("nix-store")
NIX_HASH = shutil.which("nix-hash")
NIX = shutil.which("nix")

NIX_MISSING_REASON = "Debian's real nix (apt-get install nix-bin) is not installed: nix-store/nix-hash/nix not on PATH"

requires_nix = pytest.mark.skipif(not (NIX_STORE and NIX_HASH and NIX), reason=NIX_MISSING_REASON)
"""Mark for tests that compare against real nix (also tags them with the ``nix`` marker)."""


def require_nix() -> None:
    """Skip the calling test (with the reason) if nix is not installed."""
    if not (NIX_STORE and NIX_HASH and NIX):
        pytest.skip(NIX_MISSING_REASON)


def _rmtree(path: Path) -> None:
    """Remove a nix store tree: nix makes store paths read-only, so restore write bits first."""

    def onerror(func, p, _exc):
        os.chmod(os.path.dirname(p), 0o755)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o755)
        func(p)

    shutil.rmtree(path, onerror=onerror)


@contextmanager
def nix_store_dir() -> Iterator[Path]:
    """A throw-away nix store root (``--store DIR``) plus a private cache/config home."""
    tmp = Path(tempfile.mkdtemp(prefix="tvixd-nix-"))
    try:
        (tmp / "home").mkdir()
        (tmp / "conf").mkdir()
        (tmp / "conf" / "nix.conf").write_text("")
        yield tmp
    finally:
        _rmtree(tmp)


def nix_env(tmp: Path) -> dict[str, str]:
    """The isolated environment for one nix invocation (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    env.update(
        HOME=str(tmp / "home"),
        XDG_CACHE_HOME=str(tmp / "home" / ".cache"),
        XDG_CONFIG_HOME=str(tmp / "home" / ".config"),
        XDG_DATA_HOME=str(tmp / "home" / ".local" / "share"),
        NIX_CONF_DIR=str(tmp / "conf"),
        NIX_USER_CONF_FILES=str(tmp / "conf" / "nix.conf"),
        LC_ALL="C",
    )
    return env


def run_nix(*argv: str | os.PathLike[str], store: Path | None = None) -> bytes:
    """Run a nix command (``nix-store``, ``nix-hash`` or ``nix``) isolated; return stdout.

    ``store`` is a directory from :func:`nix_store_dir`; without one a fresh store is
    made for this call. A failure raises ``AssertionError`` with nix's stderr.
    """
    require_nix()
    with nix_store_dir() if store is None else _existing(store) as tmp:
        prog, *rest = (os.fspath(a) for a in argv)
        cmd = [prog]
        if prog == "nix":
            cmd += ["--extra-experimental-features", "nix-command"]
        if prog in ("nix", "nix-store"):
            cmd += ["--store", str(tmp / "store"), "--option", "substituters", ""]
        cmd += rest
        proc = subprocess.run(cmd, capture_output=True, env=nix_env(tmp), timeout=600, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
        return proc.stdout


@contextmanager
def _existing(store: Path) -> Iterator[Path]:
    yield store


def nix_add_fixed(path: str | os.PathLike[str], store: Path | None = None) -> str:
    """``nix-store --add-fixed --recursive sha256 PATH``: the store path nix gives PATH."""
    return run_nix("nix-store", "--add-fixed", "--recursive", "sha256", path, store=store).decode().strip()


def nix_dump(path: str | os.PathLike[str]) -> bytes:
    """``nix-store --dump PATH``: the NAR serialisation of a filesystem path."""
    return run_nix("nix-store", "--dump", path)


def nix_hash(path: str | os.PathLike[str]) -> str:
    """``nix-hash --type sha256 PATH``: the NAR sha256 of PATH, lowercase hex."""
    return run_nix("nix-hash", "--type", "sha256", path).decode().strip()


def nix_hash_base32(path: str | os.PathLike[str]) -> str:
    """``nix-hash --type sha256 --base32 PATH``: the NAR sha256 in nixbase32."""
    return run_nix("nix-hash", "--type", "sha256", "--base32", path).decode().strip()


def nix_path_info_json(path: str | os.PathLike[str]) -> list[dict]:
    """``nix path-info --json`` of PATH after adding it to a fresh store: nix's own JSON for it."""
    with nix_store_dir() as store:
        store_path = nix_add_fixed(path, store=store)
        return json.loads(run_nix("nix", "path-info", "--json", store_path, store=store))


def nix_store_ls(path: str | os.PathLike[str], sub: str = "", *flags: str) -> bytes:
    """``nix store ls [FLAGS] STORE_PATH/SUB`` after adding PATH to a fresh store."""
    with nix_store_dir() as store:
        store_path = nix_add_fixed(path, store=store)
        target = store_path + (("/" + sub.lstrip("/")) if sub else "")
        return run_nix("nix", "store", "ls", *flags, target, store=store)


# --- nasty trees ---------------------------------------------------------------------------------

BIG_FILE_SIZE = 5 * 1024 * 1024 + 3
"""The "several MiB" file: not a multiple of 8 (NAR padding) nor of any chunk size."""


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


def make_nasty_tree(root: Path, big_file_size: int = BIG_FILE_SIZE, seed: int = 1) -> Path:
    """Create a tree at ``root`` exercising every NAR/import corner; return ``root``.

    Executable files (owner bit only counts, as in Nix), empty files, absolute,
    relative, dangling and directory symlinks, empty and deeply nested
    directories, identical subtrees (dedup), names with spaces, leading dots,
    UTF-8 and non-UTF-8 bytes, names whose bytewise order differs from
    case-insensitive or locale order, sizes around the NAR padding boundary, a
    hard link, and one file of several MiB (deterministic pseudo-random bytes).
    """
    rng = random.Random(seed)
    root.mkdir(parents=True)
    _write(root / "plain.txt", b"Hello World!")
    _write(root / "exe", b"#!/bin/sh\necho hi\n", 0o755)
    _write(root / "owner-exec-only", b"x", 0o700)
    _write(root / "group-exec-only", b"y", 0o654)  # not executable for nix: only the owner bit counts
    _write(root / "empty", b"")
    _write(root / "empty-exe", b"", 0o755)
    _write(root / "read-only", b"read only\n", 0o444)
    for n in (1, 7, 8, 9, 15, 16, 17):
        _write(root / f"size-{n}", bytes(rng.randrange(256) for _ in range(n)))
    _write(root / "big.bin", rng.randbytes(big_file_size))
    (root / "empty-dir").mkdir()
    deep = root / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    _write(deep / "leaf", b"deep leaf\n")
    (root / "a" / "b" / "empty").mkdir()
    for twin in ("twin-1", "twin-2"):
        (root / twin / "sub").mkdir(parents=True)
        _write(root / twin / "sub" / "same", b"identical content\n")
        _write(root / twin / "same-exe", b"identical\n", 0o755)
        (root / twin / "link").symlink_to("sub/same")
    (root / "abs-link").symlink_to("/nix/store/somewhereelse")
    (root / "rel-link").symlink_to("../plain.txt")
    (root / "dangling").symlink_to("does/not/exist")
    (root / "dir-link").symlink_to("a/b")
    (root / "self-loop").symlink_to("self-loop")
    (root / "with space").mkdir()
    _write(root / "with space" / "file with  two spaces", b"spaces\n")
    _write(root / ".hidden", b"hidden\n")
    (root / ".hidden-dir").mkdir()
    _write(root / ".hidden-dir" / ".keep", b"")
    # Names whose bytewise order differs from locale/case-insensitive order.
    for name in ("B", "a", "_", "Z", "a-", "a.b", "a0", "~tilde", "-dash"):
        target = root / "order" / name
        target.parent.mkdir(exist_ok=True)
        _write(target, name.encode())
    rootb = os.fsencode(root)
    for raw in ("café".encode(), "日本語".encode(), b"\xff\xfe-not-utf8", b"latin1-\xe9"):
        path = os.path.join(rootb, raw)
        with open(path, "wb") as f:
            f.write(raw * 3)
    os.mkdir(os.path.join(rootb, b"dir-\xc3\xa9"))
    with open(os.path.join(rootb, b"dir-\xc3\xa9", b"\xe2\x98\x83"), "wb") as f:
        f.write(b"snowman\n")
    os.link(root / "plain.txt", root / "hardlink-to-plain")
    return root


def tree_has_special_files(root: Path) -> bool:
    """Whether anything under ``root`` is neither file, directory nor symlink (sanity helper)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                return True
    return False


# --- stores to import into ---------------------------------------------------------------------------

STORE_KINDS = ("memory", "embedded")
"""``memory``: all three services in memory; ``embedded``: fs:// blobs + one sqlite:// file in a temp dir."""


def store_addrs(kind: str, tmp_path: Path):
    """The addresses of a fresh store of ``kind`` under ``tmp_path``."""
    from tvixd.store import StoreAddrs

    if kind == "memory":
        return StoreAddrs("memory://", "memory://", "memory://")
    return StoreAddrs.embedded(tmp_path / "state")


def store_args(tmp_path: Path) -> list[str]:
    """CLI flags pointing a tvixd subprocess at the embedded store under ``tmp_path``."""
    addrs = store_addrs("embedded", tmp_path)
    return [
        f"--blob-service-addr={addrs.blob}",
        f"--directory-service-addr={addrs.directory}",
        f"--path-info-service-addr={addrs.path_info}",
    ]
