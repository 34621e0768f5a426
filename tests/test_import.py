"""The importer as a library: SPEC vectors, store contents, errors, nothing visible after a failure."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.fixtures import (
    DIRECTORY_COMPLICATED,
    DIRECTORY_COMPLICATED_DIGEST,
    DIRECTORY_WITH_KEEP,
    DIRECTORY_WITH_KEEP_DIGEST,
    EMPTY_DIGEST,
    HELLOWORLD_DIGEST,
)
from tests.nix import STORE_KINDS, make_nasty_tree, store_addrs
from tvixd.castore.directory import directory_digest
from tvixd.castore.storepath import StorePath
from tvixd.errors import InvalidRequest
from tvixd.importer import CHUNK_SIZE, IngestError, import_path, ingest_path
from tvixd.proto.castore_pb2 import Directory
from tvixd.store import Store


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path):
    with Store.open(store_addrs(request.param, tmp_path)) as s:
        yield s


def make_complicated(root: Path) -> Path:
    """DIRECTORY_COMPLICATED on disk (SPEC §6.1 test "complicated")."""
    root.mkdir()
    (root / ".keep").write_bytes(b"")
    (root / "aa").symlink_to("/nix/store/somewhereelse")
    (root / "keep").mkdir()
    (root / "keep" / ".keep").write_bytes(b"")
    return root


def test_hello_world_file(store, tmp_path):
    """SPEC §4.4 worked example and §6.2's stored PathInfo, byte for byte."""
    (tmp_path / "root").write_bytes(b"Hello World!")
    result = import_path(store, tmp_path / "root")
    assert result.store_path.absolute() == "/nix/store/zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root"
    assert result.nar_size == 128
    assert result.nar_sha256.hex() == "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040"
    assert result.path_info.SerializeToString(deterministic=True).hex() == (
        "0a4d124b0a257a687972326377396a31733479786932346679316770626378696c69626434352d726f6f7412205ca7815a"
        "dcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c180c1a25088001122003e7f63be30b065d78bcf6"
        "15f5473545fdb4eb69aa416f43495b4e05cdfb8040"
    )
    assert store.blob.has(HELLOWORLD_DIGEST)
    stored = store.path_info.get(result.store_path.digest)
    assert stored == result.path_info


@pytest.mark.parametrize(
    ("make", "name", "nar_size", "nar_sha256", "store_path"),
    [
        (
            lambda p: p.symlink_to("/nix/store/somewhereelse"),
            "doesntmatter",
            136,
            "097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1",
            "/nix/store/v3r2js24npzm0ikvgyfbhnjgh2a96k1w-doesntmatter",
        ),
        (
            lambda p: (p.write_bytes(b"Hello World!"), p.chmod(0o755)),
            "exe",
            160,
            "3b63b97bae149b3e6650437b9077c3d75b130192145792ec94ea3af96a8c567a",
            "/nix/store/pdbhxvljzqwghdmjwsp13ml8qxhyb5bs-exe",
        ),
        (
            lambda p: p.mkdir(),
            "emptydir",
            96,
            "a50a5ab6d992f5598edd92105059fae9acfc192981e08bd88534c2167e92526a",
            "/nix/store/lllr7wi039bd69ihd6vfarlcz5j7v52d-emptydir",
        ),
        (
            make_complicated,
            "cx",
            840,
            "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a",
            "/nix/store/dk5gf94s23q9amfr91nphc0pj8qsa17c-cx",
        ),
        (
            make_complicated,
            "x",
            840,
            "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a",
            "/nix/store/1sizlppzjkvq1yv830fg29pgdhxpvi8b-x",
        ),
    ],
    ids=["symlink", "exe", "emptydir", "complicated-cx", "complicated-x"],
)
def test_spec_vectors(store, tmp_path, make, name, nar_size, nar_sha256, store_path):
    """SPEC §4.4's table of verified vectors."""
    path = tmp_path / name
    make(path)
    result = import_path(store, path)
    assert (result.nar_size, result.nar_sha256.hex()) == (nar_size, nar_sha256)
    assert result.store_path.absolute() == store_path
    # The PathInfo is stored under the store path's digest, named by its basename.
    stored = store.path_info.get(StorePath.from_absolute_path(store_path).digest)
    assert stored is not None
    assert stored.narinfo.nar_size == nar_size
    assert getattr(stored.node, stored.node.WhichOneof("node")).name == store_path.removeprefix("/nix/store/").encode()


def test_complicated_tree_in_store(store, tmp_path):
    """SPEC §6.1 "complicated": the root and child Directory are in the store, and the empty blob."""
    node, _, _ = ingest_path(store.blob, store.directory, make_complicated(tmp_path / "cx"))
    assert node.directory.digest == DIRECTORY_COMPLICATED_DIGEST
    assert node.directory.size == 4  # .keep, aa, keep (1 + its one file)
    assert store.directory.get(DIRECTORY_COMPLICATED_DIGEST) == DIRECTORY_COMPLICATED
    assert store.directory.get(DIRECTORY_WITH_KEEP_DIGEST) == DIRECTORY_WITH_KEEP
    assert store.blob.has(EMPTY_DIGEST)


def test_symlink_and_file_roots(store, tmp_path):
    """SPEC §6.1 "symlink" and "single_file": root nodes, not followed."""
    (tmp_path / "doesntmatter").symlink_to("/nix/store/somewhereelse")
    node, _, _ = ingest_path(store.blob, store.directory, tmp_path / "doesntmatter")
    assert node.WhichOneof("node") == "symlink"
    assert node.symlink.target == b"/nix/store/somewhereelse"
    (tmp_path / "root").write_bytes(b"Hello World!")
    node, _, _ = ingest_path(store.blob, store.directory, tmp_path / "root")
    assert (node.file.digest, node.file.size, node.file.executable) == (HELLOWORLD_DIGEST, 12, False)


def _walk_store(store: Store, digest: bytes, prefix: bytes, out: dict[bytes, object]) -> None:
    directory = store.directory.get(digest)
    assert directory is not None
    for d in directory.directories:
        out[prefix + d.name] = "dir"
        _walk_store(store, d.digest, prefix + d.name + b"/", out)
    for f in directory.files:
        reader = store.blob.open_read(f.digest)
        assert reader is not None
        with reader:
            data = reader.read()
        assert len(data) == f.size
        out[prefix + f.name] = (data, f.executable)
    for s in directory.symlinks:
        out[prefix + s.name] = ("link", s.target)


def _walk_disk(root: bytes, prefix: bytes, out: dict[bytes, object]) -> None:
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.islink(path):
            out[prefix + name] = ("link", os.readlink(path))
        elif os.path.isdir(path):
            out[prefix + name] = "dir"
            _walk_disk(path, prefix + name + b"/", out)
        else:
            with open(path, "rb") as f:
                out[prefix + name] = (f.read(), bool(os.stat(path).st_mode & 0o100))


def test_nasty_tree_contents_round_trip(store, tmp_path):
    """Everything on disk is in the store: bytes, executable bits, link targets, raw names."""
    tree = make_nasty_tree(tmp_path / "nasty")
    result = import_path(store, tree)
    stored, on_disk = {}, {}
    _walk_store(store, result.path_info.node.directory.digest, b"", stored)
    _walk_disk(os.fsencode(tree), b"", on_disk)
    assert stored == on_disk
    # Identical subtrees are one Directory.
    root = store.directory.get(result.path_info.node.directory.digest)
    twins = {d.name: d.digest for d in root.directories}
    assert twins[b"twin-1"] == twins[b"twin-2"]


@pytest.mark.parametrize("size", [CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5])
def test_chunk_boundaries(store, tmp_path, size):
    """Files read whole and files streamed in chunks give the same blob and NAR."""
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    node, nar_size, _ = ingest_path(store.blob, store.directory, tmp_path / "f")
    assert node.file.size == size
    assert nar_size == 56 + 32 + 8 + size + (-size % 8) + 16
    reader = store.blob.open_read(node.file.digest)
    with reader:
        assert reader.read() == data


def test_reimport_is_idempotent(store, tmp_path):
    tree = make_nasty_tree(tmp_path / "nasty", big_file_size=2 * CHUNK_SIZE + 1)
    first = import_path(store, tree)
    second = import_path(store, tree)
    assert first == second
    assert [p.SerializeToString(deterministic=True) for p in store.path_info.list()] == [
        first.path_info.SerializeToString(deterministic=True)
    ]


def test_trailing_slash_and_dot_name_the_directory(store, tmp_path, monkeypatch):
    """Like Nix, the name is the last component of the absolute path (``docs/`` and ``.`` work)."""
    tree = tmp_path / "docs"
    tree.mkdir()
    (tree / "a").write_bytes(b"a")
    expected = import_path(store, tree).store_path
    assert import_path(store, str(tree) + "/").store_path == expected
    monkeypatch.chdir(tree)
    assert import_path(store, ".").store_path == expected


# --- bad input ---------------------------------------------------------------------------------------


def _only_store_path_infos(store: Store) -> list:
    return list(store.path_info.list())


def test_fifo_root_is_refused(store, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(IngestError, match=r"fifo: is a FIFO"):
        import_path(store, tmp_path / "fifo")
    assert _only_store_path_infos(store) == []


def test_socket_inside_is_refused(store, tmp_path):
    """A socket deep in the tree: a one-line error naming it and its kind; nothing visible."""
    tree = tmp_path / "tree"
    (tree / "z").mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tree / "z" / "sock"))
        with pytest.raises(IngestError) as info:
            import_path(store, tree)
    finally:
        sock.close()
    assert str(info.value) == (
        f"{tree}/z/sock: is a socket; only regular files, directories and symlinks can be imported"
    )
    assert _only_store_path_infos(store) == []


def test_failed_import_commits_no_directory(store, tmp_path):
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "f").write_bytes(b"x")
    os.mkfifo(tree / "b-fifo")
    with pytest.raises(IngestError, match="b-fifo"):
        import_path(store, tree)
    # Digest of tree/a, computed independently.
    a = Directory()
    a.files.add(name=b"f", digest=bytes.fromhex(_b3(b"x")), size=1)
    assert store.directory.get(directory_digest(a)) is None
    assert _only_store_path_infos(store) == []


def _b3(data: bytes) -> str:
    import blake3

    return blake3.blake3(data).hexdigest()


@pytest.mark.parametrize("name", ["my file", ".hidden", "caf\u00e9", "a" * 212])
def test_invalid_store_path_name(store, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(IngestError, match="not a valid store path name") as info:
        import_path(store, path)
    assert str(path) in str(info.value)
    assert not store.blob.has(bytes.fromhex(_b3(b"x")))  # refused before anything was written


def test_missing_path(store, tmp_path):
    with pytest.raises(IngestError, match="nope: No such file or directory"):
        import_path(store, tmp_path / "nope")


def test_file_of_4_gib_is_refused(store, tmp_path):
    """FileNode.size is uint32 (Part A §8): refused with the size in the message, nothing read."""
    big = tmp_path / "d" / "big"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.truncate(2**32)  # sparse: costs no disk
    with pytest.raises(IngestError, match=r"big: file is 4294967296 bytes; files of 4 GiB or more"):
        import_path(store, big.parent)
    assert _only_store_path_infos(store) == []


def test_ingest_error_is_invalid_request():
    assert issubclass(IngestError, InvalidRequest)


@pytest.mark.parametrize("files", [3, 40])
def test_writer_threads_start_after_the_first_files(tmp_path, monkeypatch, files):
    """A directory's first POOL_AFTER_FILES files are stored from the walk thread and the writer threads take
    the rest (a small tree starts none): the same store path, tree and blobs as with no writer threads."""
    from tvixd import importer
    from tvixd.castore.entries import directory_entries

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for i in range(files):
        (tree / ("sub" if i % 3 else ".") / f"f{i}").write_bytes(b"x" * i)
    started = []
    real_start = importer._Ingest._start_pool
    monkeypatch.setattr(importer._Ingest, "_start_pool", lambda self: (started.append(self.files_done),
                                                                        real_start(self)))  # fmt: skip
    results = []
    for workers in (4, 0):
        with Store.open(store_addrs("embedded", tmp_path / f"store-{workers}")) as store:
            result = import_path(store, tree, workers=workers)
            root = store.directory.get(result.root[2])
            blobs = sorted(e[2] for e in directory_entries(root) if e[0] == 1)
            assert all(store.blob.has(b) for b in blobs)
            results.append((result.store_path, result.root[2:], blobs))
    assert results[0] == results[1]
    assert started == ([importer.POOL_AFTER_FILES] if files > importer.POOL_AFTER_FILES else [])


@pytest.mark.parametrize("by", ["files", "bytes"])
def test_import_commits_blobs_behind_the_walk(tmp_path, monkeypatch, by):
    """Every COMMIT_BEHIND_FILES files (or COMMIT_BEHIND_BYTES bytes) the importer asks the blob batch to
    commit behind it; the result equals an import that commits only at the end, and no temp file is left."""
    from tvixd import importer
    from tvixd.blobservice.fs import FsBlobBatch
    from tvixd.castore.entries import directory_entries

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for i in range(23):
        (tree / ("sub" if i % 2 else ".") / f"f{i}").write_bytes(b"%d" % i * 1000)
    calls: list[int] = []
    real = FsBlobBatch.commit_behind

    def counted(self) -> None:
        calls.append(1)
        real(self)

    monkeypatch.setattr(FsBlobBatch, "commit_behind", counted)
    results = []
    for behind in (True, False):
        calls.clear()
        if behind and by == "files":
            monkeypatch.setattr(importer, "COMMIT_BEHIND_FILES", 5)
        elif behind:
            monkeypatch.setattr(importer, "COMMIT_BEHIND_BYTES", 9000)  # files of 1,000-5,000 bytes
        else:
            monkeypatch.setattr(importer, "COMMIT_BEHIND_FILES", 10**9)
            monkeypatch.setattr(importer, "COMMIT_BEHIND_BYTES", 10**12)
        state = tmp_path / f"store-{behind}"
        with Store.open(store_addrs("embedded", state)) as store:
            result = import_path(store, tree)
            blobs = []
            for entry in directory_entries(store.directory.get(result.root[2])):
                if entry[0] == 1:
                    blobs.append(entry[2])
                else:
                    sub = store.directory.get(entry[2])
                    blobs += [e[2] for e in directory_entries(sub) if e[0] == 1]
            assert len(blobs) == 23 and all(store.blob.has(b) for b in blobs)
            results.append((result.store_path, result.root, sorted(blobs)))
        assert os.listdir(state / "state" / "blobs" / "tmp") == []  # store_addrs puts the store in state/
        if behind:
            assert len(calls) == 4 if by == "files" else len(calls) >= 3
        else:
            assert calls == []
    assert results[0] == results[1]
