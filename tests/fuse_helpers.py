"""Shared by the FUSE tests: the §8.4 fixture store paths, a test-only tree ingester, a mount subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_tvixd, stop_gracefully, tvixd_env
from tests.fixtures import (
    BLOB_A,
    BLOB_A_DIGEST,
    BLOB_B,
    BLOB_B_DIGEST,
    DIRECTORY_COMPLICATED,
    DIRECTORY_COMPLICATED_DIGEST,
    DIRECTORY_WITH_KEEP,
    DIRECTORY_WITH_KEEP_DIGEST,
    EMPTY_BLOB,
)
from tvixd.castore.directory import directory_size
from tvixd.castore.storepath import StorePath
from tvixd.proto.castore_pb2 import DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import Node, PathInfo
from tvixd.store import Store, StoreAddrs

needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is absent")

# SPEC §8.4 names, plus a dangling symlink and an executable copy of BLOB_A.
FILE_A = "00000000000000000000000000000000-test"
FILE_B = "55555555555555555555555555555555-test"
SYMLINK = "11111111111111111111111111111111-test"  # -> FILE_A (relative)
SYMLINK2 = "44444444444444444444444444444444-test"  # -> /nix/store/somewhereelse
DIR_WITH_KEEP = "22222222222222222222222222222222-test"
DIR_COMPLICATED = "33333333333333333333333333333333-test"
DANGLING = "66666666666666666666666666666666-test"  # -> 77777777777777777777777777777777-test (absent)
FILE_A_EXE = "88888888888888888888888888888888-test"
ALL_FIXTURE_PATHS = {FILE_A, FILE_B, SYMLINK, SYMLINK2, DIR_WITH_KEEP, DIR_COMPLICATED, DANGLING, FILE_A_EXE}


def put_path_info(store: Store, node: FileNode | DirectoryNode | SymlinkNode) -> None:
    """Register ``node`` (named by its store path basename) as a store path, without narinfo."""
    digest = StorePath.from_basename(bytes(node.name)).digest
    kind = {FileNode: "file", DirectoryNode: "directory", SymlinkNode: "symlink"}[type(node)]
    store.path_info.put(PathInfo(node=Node(**{kind: node})))
    assert store.path_info.get(digest) is not None


def put_blob(store: Store, data: bytes) -> bytes:
    writer = store.blob.open_write()
    writer.write(data)
    return writer.close()


def populate_fixtures(store: Store) -> None:
    """The reference's FUSE fixtures (SPEC §8.4), all in one store."""
    assert put_blob(store, BLOB_A) == BLOB_A_DIGEST
    assert put_blob(store, BLOB_B) == BLOB_B_DIGEST
    put_blob(store, EMPTY_BLOB)
    with store.directory.put_multiple_start() as putter:
        putter.put(DIRECTORY_WITH_KEEP)
        putter.put(DIRECTORY_COMPLICATED)
        assert putter.close() == DIRECTORY_COMPLICATED_DIGEST
    put_path_info(store, FileNode(name=FILE_A.encode(), digest=BLOB_A_DIGEST, size=len(BLOB_A)))
    put_path_info(store, FileNode(name=FILE_A_EXE.encode(), digest=BLOB_A_DIGEST, size=len(BLOB_A), executable=True))
    put_path_info(store, FileNode(name=FILE_B.encode(), digest=BLOB_B_DIGEST, size=len(BLOB_B)))
    put_path_info(store, SymlinkNode(name=SYMLINK.encode(), target=FILE_A.encode()))
    put_path_info(store, SymlinkNode(name=SYMLINK2.encode(), target=b"/nix/store/somewhereelse"))
    put_path_info(store, SymlinkNode(name=DANGLING.encode(), target=b"77777777777777777777777777777777-test"))
    put_path_info(store, DirectoryNode(name=DIR_WITH_KEEP.encode(), digest=DIRECTORY_WITH_KEEP_DIGEST, size=1))
    put_path_info(
        store,
        DirectoryNode(
            name=DIR_COMPLICATED.encode(),
            digest=DIRECTORY_COMPLICATED_DIGEST,
            size=directory_size(DIRECTORY_COMPLICATED),
        ),
    )


def make_nasty_tree(root: Path) -> Path:
    """A source tree with everything a faithful mount must get right; returns ``root``.

    Executable and plain files with the same bytes, empty files (both modes), a file bigger than the
    FUSE read-ahead, relative/absolute/dangling/directory symlinks, nested and empty directories,
    names with spaces, UTF-8 and bytes that are not UTF-8.
    """
    b = os.fsencode(root)
    os.makedirs(b)
    (root / "plain").write_bytes(b"same bytes\n")
    (root / "exe").write_bytes(b"same bytes\n")
    os.chmod(root / "exe", 0o755)
    (root / "empty").write_bytes(b"")
    (root / "empty-exe").write_bytes(b"")
    os.chmod(root / "empty-exe", 0o755)
    (root / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    (root / "name with spaces").write_bytes(b"spaces\n")
    (root / "ünïcødé ✓").write_bytes("ünïcødé\n".encode())
    os.makedirs(b + b"/not-utf8-\xff\xfe/deeper")
    with open(b + b"/not-utf8-\xff\xfe/deeper/f\xe9", "wb") as f:
        f.write(b"latin-1 name\n")
    os.makedirs(root / "a" / "b" / "c" / "d")
    (root / "a" / "b" / "c" / "d" / "leaf").write_bytes(b"deep\n")
    (root / "a" / "b" / "c" / "empty-dir").mkdir()
    (root / "empty-dir").mkdir()
    (root / "dir with spaces" / "empty too").mkdir(parents=True)
    os.symlink("plain", root / "rel-link")
    os.symlink("/nix/store/somewhereelse", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling-link")
    os.symlink("a/b", root / "dir-link")
    os.symlink("../../plain", root / "a" / "b" / "up-link")
    os.symlink("ünïcødé ✓", root / "link to ünïcødé")
    return root


def import_tree(addrs: StoreAddrs, source: Path) -> str:
    """``tvixd import SOURCE`` into the store at ``addrs``; the store path basename it printed."""
    result = run_tvixd(
        "import", str(source), "--blob-service-addr", addrs.blob, "--directory-service-addr", addrs.directory,
        "--path-info-service-addr", addrs.path_info,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    store_path = result.stdout.decode().strip()
    assert store_path.startswith("/nix/store/") and store_path.endswith("-" + source.name), store_path
    return store_path.removeprefix("/nix/store/")


@dataclass
class Mounted:
    """A running ``tvixd mount`` subprocess."""

    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def mount_args(dest: Path, addrs: StoreAddrs, *flags: str, log_level: str = "info") -> list[str]:
    return [
        sys.executable, "-m", "tvixd", "--log-format", "json", "--log-level", log_level, "mount", str(dest),
        "--blob-service-addr", addrs.blob, "--directory-service-addr", addrs.directory,
        "--path-info-service-addr", addrs.path_info, *flags,
    ]  # fmt: skip


def fusermount_u(dest: Path) -> None:
    """Unmount whatever is (still) mounted at ``dest``; quiet if nothing is."""
    subprocess.run(["fusermount3", "-u", "-z", str(dest)], capture_output=True, check=False)


@contextmanager
def mounted(
    tmp_path: Path,
    addrs: StoreAddrs,
    *flags: str,
    log_level: str = "info",
    name: str = "mnt",
    env: dict[str, str] | None = None,
) -> Iterator[Mounted]:
    """Run ``python -m tvixd mount`` on a fresh directory until the block ends; always unmounts."""
    dest = tmp_path / name
    dest.mkdir()
    log = tmp_path / f"{name}.stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            mount_args(dest, addrs, *flags, log_level=log_level),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=tvixd_env(**(env or {})),
        )  # fmt: skip
    m = Mounted(dest, proc, log)
    try:
        deadline = time.monotonic() + 60
        # Ready once it logged "mounted" (after FUSE INIT and its tuning), not merely once mounted.
        while not (os.path.ismount(dest) and '"mounted"' in m.stderr()):
            if proc.poll() is not None:
                raise AssertionError(f"tvixd mount exited with {proc.returncode}:\n{m.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"tvixd mount did not mount within 60 s:\n{m.stderr()}")
            time.sleep(0.02)
        yield m
    finally:
        stop_gracefully(proc)
        fusermount_u(dest)
