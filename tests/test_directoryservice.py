"""The DirectoryService conformance suite (SPEC Part B §2.2, §7.3, §10.5, §10.8; Part A §3, §4).

Runs against every backend in tests/backends.py.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures import (
    DIRECTORY_A,
    DIRECTORY_A_DIGEST,
    DIRECTORY_B,
    DIRECTORY_B_DIGEST,
    DIRECTORY_C,
    DIRECTORY_C_DIGEST,
    DIRECTORY_COMPLICATED,
    DIRECTORY_COMPLICATED_DIGEST,
    DIRECTORY_WITH_KEEP,
    DIRECTORY_WITH_KEEP_DIGEST,
    EMPTY_DIGEST,
)
from tvixd.castore.digest import B3Digest
from tvixd.castore.directory import directory_digest
from tvixd.directoryservice.base import DirectoryService
from tvixd.directoryservice.from_addr import from_addr
from tvixd.directoryservice.traverse import traverse_to
from tvixd.errors import AlreadyClosed, InvalidRequest, NotFound
from tvixd.proto.castore_pb2 import Directory, DirectoryNode, FileNode, SymlinkNode


def put_all(service: DirectoryService, *directories: Directory) -> B3Digest:
    with service.put_multiple_start() as putter:
        for d in directories:
            putter.put(d)
        return putter.close()


def test_get_missing(directory_service):
    assert directory_service.get(DIRECTORY_A_DIGEST) is None


def test_put_get(directory_service):
    assert directory_service.put(DIRECTORY_A) == DIRECTORY_A_DIGEST
    assert directory_service.get(DIRECTORY_A_DIGEST) == DIRECTORY_A


def test_get_entries_is_get_as_entries(directory_service):
    """get_entries: the directory's entries in NAR order, as directory_entries of get(); None if missing."""
    from tvixd.castore.entries import directory_entries

    assert directory_service.get_entries(DIRECTORY_COMPLICATED_DIGEST) is None
    with pytest.raises(InvalidRequest):
        directory_service.get_entries(bytes(31))
    put_all(directory_service, DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED)
    for digest, directory in ((DIRECTORY_COMPLICATED_DIGEST, DIRECTORY_COMPLICATED),
                              (DIRECTORY_WITH_KEEP_DIGEST, DIRECTORY_WITH_KEEP)):  # fmt: skip
        entries = directory_service.get_entries(digest)
        assert entries == directory_entries(directory) == directory_entries(directory_service.get(digest))
    assert [e[1] for e in directory_service.get_entries(DIRECTORY_COMPLICATED_DIGEST)] == [b".keep", b"aa", b"keep"]


def test_put_entries_is_put_of_the_message(directory_service):
    """A putter's put_entries(dirs, files, links) == put(the Directory of those lists): same digests, same
    stored directories, same refusals (a child not sent yet, a wrong child size, an invalid name)."""
    from tvixd.castore.entries import DIRECTORY, FILE, SYMLINK

    def lists(d: Directory) -> tuple[list, list, list]:
        return ([(DIRECTORY, n.name, n.digest, n.size, False) for n in d.directories],
                [(FILE, n.name, n.digest, n.size, n.executable) for n in d.files],
                [(SYMLINK, n.name, n.target, 0, False) for n in d.symlinks])  # fmt: skip

    with directory_service.put_multiple_start() as putter:
        assert putter.put_entries(*lists(DIRECTORY_WITH_KEEP)) == DIRECTORY_WITH_KEEP_DIGEST
        assert putter.put_entries(*lists(DIRECTORY_COMPLICATED)) == DIRECTORY_COMPLICATED_DIGEST
        assert putter.close() == DIRECTORY_COMPLICATED_DIGEST
    assert directory_service.get(DIRECTORY_COMPLICATED_DIGEST) == DIRECTORY_COMPLICATED
    assert directory_service.get(DIRECTORY_WITH_KEEP_DIGEST) == DIRECTORY_WITH_KEEP
    wrong_size = Directory(directories=[DirectoryNode(name=b"keep", digest=DIRECTORY_WITH_KEEP_DIGEST, size=7)])
    invalid = Directory(symlinks=[SymlinkNode(name=b"a/b", target=b"x")])
    for bad in (DIRECTORY_COMPLICATED, wrong_size, invalid):
        errors = []
        for send in ("message", "entries"):
            putter = directory_service.put_multiple_start()
            if bad is wrong_size:
                putter.put(DIRECTORY_WITH_KEEP)
            with pytest.raises(InvalidRequest) as e:
                putter.put(bad) if send == "message" else putter.put_entries(*lists(bad))
            putter.abort()
            errors.append(str(e.value))
        assert errors[0] == errors[1]


def test_get_returns_a_copy(directory_service):
    put_all(directory_service, DIRECTORY_WITH_KEEP)
    got = directory_service.get(DIRECTORY_WITH_KEEP_DIGEST)
    got.files[0].name = b"changed"
    assert directory_service.get(DIRECTORY_WITH_KEEP_DIGEST) == DIRECTORY_WITH_KEEP


def test_put_get_multiple(directory_service):
    """grpc_directoryservice put_get_multiple: B alone fails even when A is already stored."""
    directory_service.put(DIRECTORY_A)
    with pytest.raises(InvalidRequest, match="not seen yet"):
        directory_service.put(DIRECTORY_B)
    putter = directory_service.put_multiple_start()
    with pytest.raises(InvalidRequest, match="not seen yet"):
        putter.put(DIRECTORY_B)
    with pytest.raises(InvalidRequest):
        putter.close()
    assert put_all(directory_service, DIRECTORY_A, DIRECTORY_B) == DIRECTORY_B_DIGEST
    assert directory_service.get(DIRECTORY_B_DIGEST) == DIRECTORY_B
    assert list(directory_service.get_recursive(DIRECTORY_B_DIGEST)) == [DIRECTORY_B, DIRECTORY_A]


def test_put_get_dedup(directory_service):
    assert put_all(directory_service, DIRECTORY_A, DIRECTORY_A, DIRECTORY_C) == DIRECTORY_C_DIGEST
    assert list(directory_service.get_recursive(DIRECTORY_C_DIGEST)) == [DIRECTORY_C, DIRECTORY_A]


def test_get_recursive_pending_queue_dedup_and_closure(directory_service):
    """R → {a: A, b: B}, B → {a: A}: A is emitted twice, as the reference does (Part A §4).

    ``get_closure`` has each directory once, and nothing outside the closure.
    """
    root = Directory(
        directories=[
            DirectoryNode(name=b"a", digest=DIRECTORY_A_DIGEST, size=0),
            DirectoryNode(name=b"b", digest=DIRECTORY_B_DIGEST, size=1),
        ]
    )
    root_digest = put_all(directory_service, DIRECTORY_A, DIRECTORY_B, root)
    put_all(directory_service, DIRECTORY_WITH_KEEP)  # not part of the closure
    assert root_digest == directory_digest(root)
    assert list(directory_service.get_recursive(root_digest)) == [root, DIRECTORY_A, DIRECTORY_B, DIRECTORY_A]
    assert directory_service.get_closure(root_digest) == {
        root_digest: root,
        DIRECTORY_A_DIGEST: DIRECTORY_A,
        DIRECTORY_B_DIGEST: DIRECTORY_B,
    }
    assert directory_service.get_closure(DIRECTORY_A_DIGEST) == {DIRECTORY_A_DIGEST: DIRECTORY_A}


def test_get_recursive_complicated(directory_service):
    put_all(directory_service, DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED)
    got = list(directory_service.get_recursive(DIRECTORY_COMPLICATED_DIGEST))
    assert got == [DIRECTORY_COMPLICATED, DIRECTORY_WITH_KEEP]


def test_get_recursive_missing_root_fails_at_call(directory_service):
    with pytest.raises(NotFound, match=str(DIRECTORY_B_DIGEST).replace("+", r"\+")):
        directory_service.get_recursive(DIRECTORY_B_DIGEST)


def test_get_closure_wide_level(directory_service):
    """1,200 distinct children on one level (more than one SQLite ``IN`` batch), plus a shared grandchild."""
    children = [
        Directory(
            directories=[DirectoryNode(name=b"a", digest=DIRECTORY_A_DIGEST, size=0)],
            symlinks=[SymlinkNode(name=b"l", target=b"%d" % i)],
        )
        for i in range(1200)
    ]
    digests = [directory_digest(c) for c in children]
    root = Directory(directories=[DirectoryNode(name=b"c%04d" % i, digest=d, size=2) for i, d in enumerate(digests)])
    root_digest = put_all(directory_service, DIRECTORY_A, *children, root)
    closure = directory_service.get_closure(root_digest)
    assert closure == {root_digest: root, DIRECTORY_A_DIGEST: DIRECTORY_A, **dict(zip(digests, children, strict=True))}


def test_get_closure_missing_root(directory_service):
    with pytest.raises(NotFound, match=str(DIRECTORY_B_DIGEST).replace("+", r"\+")):
        directory_service.get_closure(DIRECTORY_B_DIGEST)


def test_put_reject_failed_validation(directory_service):
    bad = Directory(symlinks=[SymlinkNode(name=b"", target=b"x")])
    with pytest.raises(InvalidRequest, match="failed validation"):
        directory_service.put(bad)
    assert directory_service.get(directory_digest(bad)) is None


def test_put_reject_wrong_size(directory_service):
    bad = Directory(directories=[DirectoryNode(name=b"foo", digest=DIRECTORY_A_DIGEST, size=42)])
    putter = directory_service.put_multiple_start()
    putter.put(DIRECTORY_A)
    with pytest.raises(InvalidRequest, match="wrong size"):
        putter.put(bad)


def test_putter_all_or_nothing(directory_service):
    """Part A §3: a bad directory after good ones → nothing from that upload is visible."""
    bad = Directory(files=[FileNode(name=b"b", digest=EMPTY_DIGEST), FileNode(name=b"a", digest=EMPTY_DIGEST)])
    putter = directory_service.put_multiple_start()
    putter.put(DIRECTORY_WITH_KEEP)
    putter.put(DIRECTORY_COMPLICATED)
    with pytest.raises(InvalidRequest, match="not sorted"):
        putter.put(bad)
    with pytest.raises(InvalidRequest):  # poisoned: further puts and close raise the same error
        putter.put(DIRECTORY_A)
    with pytest.raises(InvalidRequest, match="not sorted"):
        putter.close()
    assert directory_service.get(DIRECTORY_WITH_KEEP_DIGEST) is None
    assert directory_service.get(DIRECTORY_COMPLICATED_DIGEST) is None


def test_putter_invisible_until_close(directory_service):
    putter = directory_service.put_multiple_start()
    putter.put(DIRECTORY_WITH_KEEP)
    assert directory_service.get(DIRECTORY_WITH_KEEP_DIGEST) is None
    assert putter.close() == DIRECTORY_WITH_KEEP_DIGEST
    assert directory_service.get(DIRECTORY_WITH_KEEP_DIGEST) == DIRECTORY_WITH_KEEP


def test_putter_abort_leaves_nothing(directory_service):
    putter = directory_service.put_multiple_start()
    putter.put(DIRECTORY_WITH_KEEP)
    putter.abort()
    putter.abort()
    with pytest.raises(AlreadyClosed):
        putter.put(DIRECTORY_A)
    assert directory_service.get(DIRECTORY_WITH_KEEP_DIGEST) is None


def test_putter_failing_precommit_stores_nothing(directory_service):
    """A precommit that raises (the server's "client went away" check) stores nothing at all."""
    calls = []

    def refuse():
        calls.append(directory_service.get(DIRECTORY_WITH_KEEP_DIGEST))
        raise RuntimeError("client went away")

    putter = directory_service.put_multiple_start()
    putter.put(DIRECTORY_WITH_KEEP)
    putter.put(DIRECTORY_COMPLICATED)
    with pytest.raises(RuntimeError, match="went away"):
        putter.close(precommit=refuse)
    assert calls == [None]
    assert directory_service.get(DIRECTORY_WITH_KEEP_DIGEST) is None
    assert directory_service.get(DIRECTORY_COMPLICATED_DIGEST) is None
    with pytest.raises(AlreadyClosed):
        putter.put(DIRECTORY_A)


def test_putter_exception_in_with_block_aborts(directory_service):
    with pytest.raises(RuntimeError), directory_service.put_multiple_start() as putter:
        putter.put(DIRECTORY_WITH_KEEP)
        raise RuntimeError("boom")
    assert directory_service.get(DIRECTORY_WITH_KEEP_DIGEST) is None


def test_putter_close_idempotent_and_put_after_close(directory_service):
    putter = directory_service.put_multiple_start()
    putter.put(DIRECTORY_A)
    putter.put(DIRECTORY_B)
    assert putter.close() == DIRECTORY_B_DIGEST
    assert putter.close() == DIRECTORY_B_DIGEST
    with pytest.raises(AlreadyClosed):
        putter.put(DIRECTORY_A)


def test_putter_empty_close(directory_service):
    with pytest.raises(InvalidRequest, match="no directories"):
        directory_service.put_multiple_start().close()


def test_putter_root_is_last(directory_service):
    """No reachability check: the root is simply the last directory sent."""
    assert put_all(directory_service, DIRECTORY_A, DIRECTORY_B, DIRECTORY_WITH_KEEP) == DIRECTORY_WITH_KEEP_DIGEST
    assert directory_service.get(DIRECTORY_B_DIGEST) == DIRECTORY_B


@pytest.mark.parametrize("bad", [b"", b"\x00" * 20])
def test_invalid_digest_length(directory_service, bad):
    with pytest.raises(InvalidRequest, match=str(len(bad))):
        directory_service.get(bad)
    with pytest.raises(InvalidRequest, match=str(len(bad))):
        directory_service.get_recursive(bad)


def _chain(i: int) -> list[Directory]:
    """A distinct three-level tree per ``i``: leaf (a symlink named after i) ← mid ← top."""
    leaf = Directory(symlinks=[SymlinkNode(name=f"l{i}".encode(), target=b"t")])
    mid = Directory(directories=[DirectoryNode(name=b"leaf", digest=directory_digest(leaf), size=1)])
    top = Directory(directories=[DirectoryNode(name=b"mid", digest=directory_digest(mid), size=2)])
    return [leaf, mid, top]


def test_concurrent_putters_and_readers(directory_service):
    trees = [_chain(i) for i in range(24)]
    with ThreadPoolExecutor(6) as pool:
        roots = list(pool.map(lambda t: put_all(directory_service, *t), trees))
    assert roots == [directory_digest(t[-1]) for t in trees]
    errors: list[BaseException] = []

    def reader(i: int) -> None:
        try:
            assert list(directory_service.get_recursive(roots[i])) == trees[i][::-1]
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(trees))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# --- traverse_to (SPEC Part B §7.3) --------------------------------------------------------------------

ROOT_NODE = DirectoryNode(name=b"doesntmatter", digest=DIRECTORY_COMPLICATED_DIGEST, size=4)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", ROOT_NODE),
        ("/", ROOT_NODE),
        ("keep", DirectoryNode(name=b"keep", digest=DIRECTORY_WITH_KEEP_DIGEST, size=1)),
        ("keep/.keep", FileNode(name=b".keep", digest=EMPTY_DIGEST, size=0)),
        ("/keep/.keep", FileNode(name=b".keep", digest=EMPTY_DIGEST, size=0)),
        ("keep/./.keep", FileNode(name=b".keep", digest=EMPTY_DIGEST, size=0)),
        ("aa", SymlinkNode(name=b"aa", target=b"/nix/store/somewhereelse")),
        ("void", None),
        ("//v/oid", None),
        ("keep/.keep/foo", None),
        ("aa/x", None),
        ("./keep", None),
        ("keep/..", None),
    ],
)
def test_traverse_to(directory_service, path, expected):
    put_all(directory_service, DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED)
    assert traverse_to(directory_service, ROOT_NODE, path) == expected


def test_traverse_to_missing_directory(directory_service):
    with pytest.raises(NotFound, match="does not exist"):
        traverse_to(directory_service, ROOT_NODE, "keep")


# --- addresses (SPEC Part B §7.1, §10.8) ---------------------------------------------------------------


@pytest.mark.parametrize("addr", ["memory://", "memory:"])
def test_from_addr_memory_valid(addr):
    assert from_addr(addr).get(DIRECTORY_A_DIGEST) is None


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("http://foo.example/test", "unknown scheme"),
        ("foo", "no scheme"),
        ("memory://foo", "no host"),
        ("memory:///", "no path"),
        ("memory:///foo", "no path"),
        ("sqlite:///", "cowardly"),
        ("sqlite://foo.example", "invalid host"),
        ("sqlite://foo.example/tmp/x", "invalid host"),
        ("sqlite:relative.sqlite", "absolute"),
        ("fs:///tmp/blobs", "unknown scheme"),
    ],
)
def test_from_addr_invalid(addr, why):
    with pytest.raises(InvalidRequest, match=why) as e:
        from_addr(addr)
    assert repr(addr) in str(e.value)


# --- sqlite:// specifics: persistence, several processes, locking, corruption -----------------------------

WRITER_SCRIPT = """
import sys
from tests.fixtures import DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED
from tvixd.directoryservice.from_addr import from_addr
svc = from_addr(sys.argv[1])
for i in range(int(sys.argv[2])):
    with svc.put_multiple_start() as p:
        p.put(DIRECTORY_WITH_KEEP)
        p.put(DIRECTORY_COMPLICATED)
        p.close()
print(svc.get(DIRECTORY_COMPLICATED.directories[0].digest) is not None)
svc.close()
"""


def _run_writer(addr: str, rounds: int = 1):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, tvixd_env

    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, addr, str(rounds)], stdout=subprocess.PIPE, env=tvixd_env(), cwd=REPO_ROOT
    )


def test_sqlite_persists_across_reopen(tmp_path):
    addr = f"sqlite://{tmp_path}/sub/store.sqlite"
    svc = from_addr(addr)
    put_all(svc, DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED)
    svc.close()
    svc = from_addr(addr)
    assert list(svc.get_recursive(DIRECTORY_COMPLICATED_DIGEST)) == [DIRECTORY_COMPLICATED, DIRECTORY_WITH_KEEP]
    svc.close()


def test_sqlite_second_process_writes_first_reads(tmp_path):
    addr = f"sqlite://{tmp_path}/store.sqlite"
    svc = from_addr(addr)  # opened first, stays open
    assert svc.get(DIRECTORY_COMPLICATED_DIGEST) is None
    proc = _run_writer(addr)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out == b"True\n"
    assert list(svc.get_recursive(DIRECTORY_COMPLICATED_DIGEST)) == [DIRECTORY_COMPLICATED, DIRECTORY_WITH_KEEP]
    svc.close()


def test_sqlite_processes_write_concurrently(tmp_path):
    addr = f"sqlite://{tmp_path}/store.sqlite"
    procs = [_run_writer(addr, rounds=30) for _ in range(3)]
    svc = from_addr(addr)
    trees = [_chain(i) for i in range(20)]
    for tree in trees:
        put_all(svc, *tree)
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out == b"True\n"
    assert svc.get(DIRECTORY_COMPLICATED_DIGEST) == DIRECTORY_COMPLICATED
    for tree in trees:
        assert list(svc.get_recursive(directory_digest(tree[-1]))) == tree[::-1]
    svc.close()


FRESH_OPEN_SCRIPT = """
import multiprocessing, sys
from tests.fixtures import DIRECTORY_WITH_KEEP
from tvixd.directoryservice.from_addr import from_addr

def open_and_put(addr, barrier, results):
    barrier.wait()
    try:
        svc = from_addr(addr)
        with svc.put_multiple_start() as p:
            p.put(DIRECTORY_WITH_KEEP)
            p.close()
        svc.close()
        results.put("ok")
    except Exception as e:
        results.put(repr(e))

ctx = multiprocessing.get_context("fork")
for i in range(int(sys.argv[2])):
    addr = f"sqlite://{sys.argv[1]}/fresh{i}.sqlite"
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=open_and_put, args=(addr, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    for _ in procs:
        print(results.get())
"""


def test_sqlite_processes_open_a_fresh_file_at_once(tmp_path):
    """Several processes creating the same store together all succeed (the WAL switch waits for the lock).

    Without the wait, about one round in four failed with "database is locked" here.
    """
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, tvixd_env

    out = subprocess.run([sys.executable, "-c", FRESH_OPEN_SCRIPT, str(tmp_path), "12"], capture_output=True,
                         text=True, env=tvixd_env(), cwd=REPO_ROOT, timeout=300, check=True).stdout.split("\n")
    assert [line for line in out if line] == ["ok"] * 48


def test_sqlite_locked_database_is_unavailable(tmp_path):
    import sqlite3

    from tvixd.directoryservice.sqlite import SqliteDirectoryService
    from tvixd.errors import Unavailable

    path = str(tmp_path / "store.sqlite")
    svc = SqliteDirectoryService(path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        putter = svc.put_multiple_start()
        putter.put(DIRECTORY_WITH_KEEP)
        with pytest.raises(Unavailable, match="locked"):
            putter.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert svc.get(DIRECTORY_WITH_KEEP_DIGEST) is None
    put_all(svc, DIRECTORY_WITH_KEEP)  # works again once the lock is gone
    assert svc.get(DIRECTORY_WITH_KEEP_DIGEST) == DIRECTORY_WITH_KEEP
    svc.close()


@pytest.mark.parametrize("corruption", ["swapped", "garbage", "invalid"])
def test_sqlite_corrupt_row_is_data_loss(tmp_path, corruption):
    import sqlite3

    from tvixd.errors import DataLoss

    path = tmp_path / "store.sqlite"
    svc = from_addr(f"sqlite://{path}")
    put_all(svc, DIRECTORY_A, DIRECTORY_B)
    data = {
        "swapped": DIRECTORY_WITH_KEEP.SerializeToString(),
        "garbage": b"\xff\xff\xff",
        "invalid": Directory(symlinks=[SymlinkNode(name=b"", target=b"x")]).SerializeToString(),
    }[corruption]
    with sqlite3.connect(path) as db:
        db.execute("UPDATE directories SET data = ? WHERE digest = ?", (data, bytes(DIRECTORY_B_DIGEST)))
    with pytest.raises(DataLoss, match=str(DIRECTORY_B_DIGEST).replace("+", r"\+")):
        svc.get(DIRECTORY_B_DIGEST)
    with pytest.raises(DataLoss, match=str(DIRECTORY_B_DIGEST).replace("+", r"\+")):  # decoded without protobuf
        svc.get_entries(DIRECTORY_B_DIGEST)
    svc.close()


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_sqlite_closure_with_a_damaged_descendant(tmp_path, damage):
    """A missing descendant row is NotFound, a corrupt one DataLoss; both name the descendant."""
    import re
    import sqlite3

    from tvixd.errors import DataLoss

    path = tmp_path / "store.sqlite"
    svc = from_addr(f"sqlite://{path}")
    put_all(svc, DIRECTORY_A, DIRECTORY_B)
    with sqlite3.connect(path) as db:
        if damage == "deleted":
            db.execute("DELETE FROM directories WHERE digest = ?", (bytes(DIRECTORY_A_DIGEST),))
        else:
            db.execute("UPDATE directories SET data = ? WHERE digest = ?", (b"\x0a", bytes(DIRECTORY_A_DIGEST)))
    with pytest.raises(NotFound if damage == "deleted" else DataLoss, match=re.escape(str(DIRECTORY_A_DIGEST))):
        svc.get_closure(DIRECTORY_B_DIGEST)
    svc.close()


def test_sqlite_schema_is_versioned(tmp_path):
    import sqlite3

    from tvixd.errors import StorageError
    from tvixd.sqlite import SCHEMA_VERSION

    path = tmp_path / "store.sqlite"
    from_addr(f"sqlite://{path}").close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer"):
        from_addr(f"sqlite://{path}")


def test_sqlite_temporary_is_removed_on_close():
    import os

    svc = from_addr("sqlite://")
    put_all(svc, DIRECTORY_A)
    path = svc.db.path
    assert os.path.exists(path)
    svc.close()
    assert not os.path.exists(os.path.dirname(path))


@pytest.mark.parametrize("addr", ["sqlite://", "sqlite:"])
def test_from_addr_sqlite_temporary_valid(addr):
    svc = from_addr(addr)
    assert svc.get(DIRECTORY_A_DIGEST) is None
    svc.close()


def test_sqlite_close_retryable_after_lock(tmp_path):
    """A commit that failed Unavailable stored nothing; the same putter can close again later."""
    import sqlite3

    from tvixd.directoryservice.sqlite import SqliteDirectoryService
    from tvixd.errors import Unavailable

    path = str(tmp_path / "store.sqlite")
    svc = SqliteDirectoryService(path, busy_timeout=0.05)
    putter = svc.put_multiple_start()
    putter.put(DIRECTORY_WITH_KEEP)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable):
            putter.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert putter.close() == DIRECTORY_WITH_KEEP_DIGEST
    assert svc.get(DIRECTORY_WITH_KEEP_DIGEST) == DIRECTORY_WITH_KEEP
    svc.close()


def test_traverse_to_bytes_path(directory_service):
    put_all(directory_service, DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED)
    assert traverse_to(directory_service, ROOT_NODE, b"/keep/.keep") == FileNode(name=b".keep", digest=EMPTY_DIGEST)
