"""The PathInfoService conformance suite (SPEC Part B §2.3, §10.6, §10.9; Part A §2, §5).

Runs against every backend in tests/backends.py; content is uploaded through
the service's own ``blob_service`` / ``directory_service``.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures import (
    DIRECTORY_COMPLICATED,
    DIRECTORY_COMPLICATED_DIGEST,
    DIRECTORY_WITH_KEEP,
    DUMMY_OUTPUT_HASH,
    EMPTY_DIGEST,
    HELLOWORLD_BLOB,
    HELLOWORLD_DIGEST,
    NAR_CONTENTS_COMPLICATED,
    NAR_CONTENTS_HELLOWORLD,
    NAR_CONTENTS_SYMLINK,
)
from tvixd.blobservice.memory import MemoryBlobService
from tvixd.directoryservice.memory import MemoryDirectoryService
from tvixd.errors import DataLoss, FailedPrecondition, InvalidRequest, NotFound
from tvixd.pathinfoservice.from_addr import from_addr
from tvixd.proto.castore_pb2 import DirectoryNode, FileNode, SymlinkNode
from tvixd.proto.pathinfo_pb2 import NARInfo, Node, PathInfo

DUMMY_NAME = b"00000000000000000000000000000000-dummy"


def symlink_info(name: bytes = DUMMY_NAME, target: bytes = b"doesntmatter") -> PathInfo:
    return PathInfo(node=Node(symlink=SymlinkNode(name=name, target=target)))


def upload_complicated(service) -> None:
    writer = service.blob_service.open_write()
    assert writer.close() == EMPTY_DIGEST
    with service.directory_service.put_multiple_start() as putter:
        putter.put(DIRECTORY_WITH_KEEP)
        putter.put(DIRECTORY_COMPLICATED)
        putter.close()


def upload_helloworld(service) -> None:
    writer = service.blob_service.open_write()
    writer.write(HELLOWORLD_BLOB)
    assert writer.close() == HELLOWORLD_DIGEST


def test_not_found(path_info_service):
    assert path_info_service.get(DUMMY_OUTPUT_HASH) is None


@pytest.mark.parametrize("bad", [b"", bytes(19), bytes(32)])
def test_get_invalid_digest_length(path_info_service, bad):
    with pytest.raises(InvalidRequest, match=str(len(bad))):
        path_info_service.get(bad)


def test_put_get(path_info_service):
    info = symlink_info()
    assert path_info_service.put(info) == info
    assert path_info_service.get(DUMMY_OUTPUT_HASH) == info


def test_get_root_entry(path_info_service):
    """The root node alone, as an entry tuple (what `dump-path` reads), for each kind of root."""
    from tvixd.castore.entries import node_entry

    assert path_info_service.get_root_entry(DUMMY_OUTPUT_HASH) is None
    with pytest.raises(InvalidRequest, match="19"):
        path_info_service.get_root_entry(bytes(19))
    upload_helloworld(path_info_service)
    upload_complicated(path_info_service)
    for root in (
        Node(symlink=SymlinkNode(name=DUMMY_NAME, target=b"/nix/store/x")),
        Node(file=FileNode(name=DUMMY_NAME, digest=HELLOWORLD_DIGEST, size=12, executable=True)),
        Node(directory=DirectoryNode(name=DUMMY_NAME, digest=DIRECTORY_COMPLICATED_DIGEST, size=4)),
    ):
        path_info_service.put(PathInfo(node=root))
        assert path_info_service.get_root_entry(DUMMY_OUTPUT_HASH) == node_entry(getattr(root, root.WhichOneof("node")))


def test_put_overwrites(path_info_service):
    path_info_service.put(symlink_info(target=b"one"))
    path_info_service.put(symlink_info(target=b"two"))
    assert path_info_service.get(DUMMY_OUTPUT_HASH) == symlink_info(target=b"two")
    assert list(path_info_service.list()) == [symlink_info(target=b"two")]


def test_get_parts_is_get_as_plain_values(path_info_service):
    """get_parts: the stored PathInfo's root entry, references and narinfo (signatures left out)."""
    from tvixd.castore.pathinfo import path_info_parts

    assert path_info_service.get_parts(DUMMY_OUTPUT_HASH) is None
    with pytest.raises(InvalidRequest, match="19"):
        path_info_service.get_parts(bytes(19))
    upload_complicated(path_info_service)
    ref = "00000000000000000000000000000000-dummy"
    node = Node(directory=DirectoryNode(name=DUMMY_NAME, digest=DIRECTORY_COMPLICATED_DIGEST, size=4))
    for narinfo in (None, NARInfo(nar_size=840, nar_sha256=bytes(32), reference_names=[ref]),
                    NARInfo(nar_size=840, nar_sha256=bytes(32), reference_names=[ref],
                            signatures=[NARInfo.Signature(name="key-1", data=b"sig")])):  # fmt: skip
        info = PathInfo(node=node, references=[DUMMY_OUTPUT_HASH], narinfo=narinfo)
        path_info_service.put(info)
        parts = path_info_service.get_parts(DUMMY_OUTPUT_HASH)
        assert parts == path_info_parts(info)
        assert parts.root == (0, DUMMY_NAME, DIRECTORY_COMPLICATED_DIGEST, 4, False)
        assert parts.narinfo == (None if narinfo is None else (840, bytes(32), [ref]))


def test_put_with_narinfo_roundtrips(path_info_service):
    upload_complicated(path_info_service)
    ref = b"00000000000000000000000000000000-dummy"
    info = PathInfo(
        node=Node(directory=DirectoryNode(name=DUMMY_NAME, digest=DIRECTORY_COMPLICATED_DIGEST, size=4)),
        references=[DUMMY_OUTPUT_HASH],
        narinfo=NARInfo(
            nar_size=840,
            nar_sha256=hashlib.sha256(NAR_CONTENTS_COMPLICATED).digest(),
            signatures=[NARInfo.Signature(name="key-1", data=b"sig")],
            reference_names=[ref.decode()],
        ),
    )
    assert path_info_service.put(info) == info
    assert path_info_service.get(DUMMY_OUTPUT_HASH) == info


@pytest.mark.parametrize(
    "info",
    [
        PathInfo(),
        PathInfo(node=Node()),
        symlink_info(name=b"invalid"),
        PathInfo(node=Node(directory=DirectoryNode(name=DUMMY_NAME, digest=b"", size=0))),
        PathInfo(node=Node(file=FileNode(name=DUMMY_NAME, digest=b"\x00" * 31, size=0))),
        symlink_info(name=b"0" * 32 + b"-" + b"n" * 212),
        PathInfo(node=symlink_info().node, references=[bytes(32)]),
        PathInfo(node=symlink_info().node, references=[bytes(20)], narinfo=NARInfo(nar_sha256=bytes(32))),
        PathInfo(
            node=symlink_info().node,
            references=[bytes(20)],
            narinfo=NARInfo(nar_sha256=bytes(32), reference_names=["11111111111111111111111111111111-x"]),
        ),
        PathInfo(node=symlink_info().node, narinfo=NARInfo(nar_sha256=bytes(31))),
    ],
    ids=[
        "no-node",
        "unset-node",
        "bad-name",
        "empty-digest",
        "short-digest",
        "name-too-long",
        "reference-32-bytes",
        "reference-names-count",
        "reference-name-mismatch",
        "nar-sha256-length",
    ],
)
def test_put_rejects_invalid(path_info_service, info):
    with pytest.raises(InvalidRequest):
        path_info_service.put(info)
    assert list(path_info_service.list()) == []


def test_put_requires_directory_content(path_info_service):
    """Part A §5: the root directory must be in the store."""
    info = PathInfo(node=Node(directory=DirectoryNode(name=DUMMY_NAME, digest=DIRECTORY_COMPLICATED_DIGEST, size=4)))
    with pytest.raises(FailedPrecondition, match=str(DIRECTORY_COMPLICATED_DIGEST).replace("+", r"\+")):
        path_info_service.put(info)
    assert path_info_service.get(DUMMY_OUTPUT_HASH) is None
    upload_complicated(path_info_service)
    assert path_info_service.put(info) == info


def test_put_requires_blob_content(path_info_service):
    info = PathInfo(node=Node(file=FileNode(name=DUMMY_NAME, digest=HELLOWORLD_DIGEST, size=12)))
    with pytest.raises(FailedPrecondition, match="blob"):
        path_info_service.put(info)
    upload_helloworld(path_info_service)
    assert path_info_service.put(info) == info


IMPORTED_ROOTS = [
    (2, DUMMY_NAME, b"/nix/store/x", 0, False),
    (2, DUMMY_NAME, b"", 0, False),
    (1, DUMMY_NAME, HELLOWORLD_DIGEST, 12, True),
    (1, DUMMY_NAME, HELLOWORLD_DIGEST, 12, False),
    (0, DUMMY_NAME, DIRECTORY_COMPLICATED_DIGEST, 4, False),
]


@pytest.mark.parametrize("root", IMPORTED_ROOTS, ids=["symlink", "empty-target", "exec-file", "file", "directory"])
def test_put_imported_stores_what_put_stores(path_info_service, root):
    """put_imported(entry, size, sha256) == put(the import's PathInfo): the same message read back."""
    from tvixd.castore.entries import entry_node

    upload_helloworld(path_info_service)
    upload_complicated(path_info_service)
    nar_sha256 = hashlib.sha256(b"nar").digest()
    expected = PathInfo(node=entry_node(root), narinfo=NARInfo(nar_size=2**33 + 5, nar_sha256=nar_sha256))
    assert path_info_service.put_imported(root, 2**33 + 5, nar_sha256) is None
    assert path_info_service.get(DUMMY_OUTPUT_HASH) == expected
    assert list(path_info_service.list()) == [expected]
    assert path_info_service.get_root_entry(DUMMY_OUTPUT_HASH) == root


@pytest.mark.parametrize(
    ("root", "nar_sha256", "error", "match"),
    [
        ((2, b"invalid", b"x", 0, False), bytes(32), InvalidRequest, "node.symlink.name"),
        ((1, DUMMY_NAME, bytes(31), 12, False), bytes(32), InvalidRequest, "node.file.digest is 31 bytes"),
        ((0, DUMMY_NAME, b"", 0, False), bytes(32), InvalidRequest, "node.directory.digest is 0 bytes"),
        ((2, DUMMY_NAME, b"x", 0, False), bytes(31), InvalidRequest, "nar_sha256 is 31 bytes"),
        ((1, DUMMY_NAME, HELLOWORLD_DIGEST, 12, False), bytes(32), FailedPrecondition, "root blob"),
        ((0, DUMMY_NAME, DIRECTORY_COMPLICATED_DIGEST, 4, False), bytes(32), FailedPrecondition, "root directory"),
    ],
    ids=["bad-name", "short-digest", "empty-digest", "nar-sha256-length", "missing-blob", "missing-directory"],
)
def test_put_imported_checks_as_put_does(path_info_service, root, nar_sha256, error, match):
    """The same errors as put() of the equivalent PathInfo; nothing stored."""
    from tvixd.castore.entries import entry_node

    with pytest.raises(error, match=match) as got:
        path_info_service.put_imported(root, 1, nar_sha256)
    with pytest.raises(error) as expected:
        path_info_service.put(PathInfo(node=entry_node(root), narinfo=NARInfo(nar_size=1, nar_sha256=nar_sha256)))
    assert str(got.value) == str(expected.value)
    assert list(path_info_service.list()) == []


def test_put_imported_refuses_a_size_no_message_can_hold(path_info_service):
    """A FileNode's size is a uint32: an entry past it is InvalidRequest on every backend; nothing stored."""
    upload_helloworld(path_info_service)
    with pytest.raises(InvalidRequest, match=r"node\.file\.size 4294967296 is not a uint32"):
        path_info_service.put_imported((1, DUMMY_NAME, HELLOWORLD_DIGEST, 2**32, False), 1, bytes(32))
    assert list(path_info_service.list()) == []


def test_list(path_info_service):
    names = [f"{c * 32}-name{i}".encode() for i, c in enumerate("0123456789abcdfg")]
    for name in names:
        path_info_service.put(symlink_info(name=name))
    got = sorted(path_info_service.list(), key=lambda pi: pi.node.symlink.name)
    assert got == [symlink_info(name=n) for n in sorted(names)]


def test_concurrent_puts_and_gets(path_info_service):
    names = [f"{c1}{c2 * 31}-x".encode() for c1 in "0123" for c2 in "abcdfghijk"]

    def work(name: bytes) -> None:
        path_info_service.put(symlink_info(name=name))
        assert path_info_service.get(path_info_service_key(name)) == symlink_info(name=name)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, names))
    assert len(list(path_info_service.list())) == len(names)


def path_info_service_key(name: bytes) -> bytes:
    """The 20-byte digest of a basename (nixbase32, written here independently of tvixd)."""
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    value = 0
    for c in name[:32].decode():
        value = value * 32 + alphabet.index(c)
    return value.to_bytes(20, "little")


# --- calculate_nar (SPEC Part B §5.7, Part A §2) ------------------------------------------------------


@pytest.fixture
def nar_ready():
    pytest.importorskip("tvixd.nar", reason="the NAR renderer tvixd.nar (backends helper) has not landed yet")


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def test_calculate_nar_symlink(path_info_service, nar_ready):
    node = Node(symlink=SymlinkNode(name=b"doesntmatter", target=b"/nix/store/somewhereelse"))
    assert path_info_service.calculate_nar(node) == (len(NAR_CONTENTS_SYMLINK), sha(NAR_CONTENTS_SYMLINK))


def test_calculate_nar_file(path_info_service, nar_ready):
    upload_helloworld(path_info_service)
    node = Node(file=FileNode(name=b"doesntmatter", digest=HELLOWORLD_DIGEST, size=12))
    assert path_info_service.calculate_nar(node) == (len(NAR_CONTENTS_HELLOWORLD), sha(NAR_CONTENTS_HELLOWORLD))


def test_calculate_nar_complicated(path_info_service, nar_ready):
    upload_complicated(path_info_service)
    node = Node(directory=DirectoryNode(name=b"doesntmatter", digest=DIRECTORY_COMPLICATED_DIGEST, size=4))
    expected = (840, sha(NAR_CONTENTS_COMPLICATED))
    assert path_info_service.calculate_nar(node) == expected
    renamed = Node(directory=DirectoryNode(name=b"other", digest=DIRECTORY_COMPLICATED_DIGEST, size=4))
    assert path_info_service.calculate_nar(renamed) == expected


def test_calculate_nar_unset(path_info_service, nar_ready):
    with pytest.raises(InvalidRequest):
        path_info_service.calculate_nar(Node())


def test_calculate_nar_missing_blob(path_info_service, nar_ready):
    node = Node(file=FileNode(name=b"doesntmatter", digest=HELLOWORLD_DIGEST, size=12))
    with pytest.raises(NotFound, match=str(HELLOWORLD_DIGEST).replace("+", r"\+")):
        path_info_service.calculate_nar(node)


def test_calculate_nar_missing_directory(path_info_service, nar_ready):
    node = Node(directory=DirectoryNode(name=b"doesntmatter", digest=DIRECTORY_COMPLICATED_DIGEST, size=4))
    with pytest.raises(NotFound, match=str(DIRECTORY_COMPLICATED_DIGEST).replace("+", r"\+")):
        path_info_service.calculate_nar(node)


@pytest.mark.parametrize("size", [2, 42])
def test_calculate_nar_wrong_size(path_info_service, nar_ready, size):
    upload_helloworld(path_info_service)
    node = Node(file=FileNode(name=b"doesntmatter", digest=HELLOWORLD_DIGEST, size=size))
    with pytest.raises(DataLoss):
        path_info_service.calculate_nar(node)


def test_calculate_nar_bad_digest(path_info_service, nar_ready):
    with pytest.raises(InvalidRequest):
        path_info_service.calculate_nar(Node(file=FileNode(name=b"x", digest=b"\x01", size=1)))


# --- addresses (SPEC Part B §7.1, §10.9) ---------------------------------------------------------------


@pytest.mark.parametrize("addr", ["memory://", "memory:"])
def test_from_addr_memory_valid(addr):
    assert from_addr(addr, MemoryBlobService(), MemoryDirectoryService()).get(DUMMY_OUTPUT_HASH) is None


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
        ("fs:///tmp/blobs", "unknown scheme"),
    ],
)
def test_from_addr_invalid(addr, why):
    with pytest.raises(InvalidRequest, match=why) as e:
        from_addr(addr, MemoryBlobService(), MemoryDirectoryService())
    assert repr(addr) in str(e.value)


# --- sqlite:// specifics -----------------------------------------------------------------------------

PI_WRITER_SCRIPT = """
import sys
from tests.test_pathinfoservice import symlink_info
from tvixd.store import Store, StoreAddrs
root = sys.argv[1]
db = f"sqlite://{root}/store.sqlite"
with Store.open(StoreAddrs(blob=f"fs://{root}/blobs", directory=db, path_info=db)) as store:
    for c in "0123456789":
        store.path_info.put(symlink_info(name=(c * 32 + "-from-child").encode()))
"""


def _embedded(tmp_path):
    from tvixd.store import Store, StoreAddrs

    db = f"sqlite://{tmp_path}/store.sqlite"
    return Store.open(StoreAddrs(blob=f"fs://{tmp_path}/blobs", directory=db, path_info=db))


def test_sqlite_second_process_writes_first_reads(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, tvixd_env

    with _embedded(tmp_path) as store:
        assert list(store.path_info.list()) == []
        subprocess.run(
            [sys.executable, "-c", PI_WRITER_SCRIPT, str(tmp_path)], env=tvixd_env(), cwd=REPO_ROOT, check=True
        )
        got = store.path_info.get(path_info_service_key(b"0" * 32))
        assert got == symlink_info(name=b"0" * 32 + b"-from-child")
        assert len(list(store.path_info.list())) == 10


def test_sqlite_list_streams_many_pages(tmp_path):
    from tvixd.pathinfoservice.sqlite import LIST_PAGE

    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    names = [f"{a}{b}{c}{'0' * 29}-n".encode() for a in alphabet[:3] for b in alphabet for c in alphabet[:8]]
    assert len(names) > 2 * LIST_PAGE
    with _embedded(tmp_path) as store:
        for name in names:
            store.path_info.put(symlink_info(name=name))
        it = store.path_info.list()
        first = next(it)
        store.path_info.put(symlink_info(name=b"z" * 32 + b"-late"))  # writes while a list is in progress
        rest = list(it)
    got = {pi.node.symlink.name for pi in [first, *rest]}
    assert set(names) <= got


def test_sqlite_nar_cache_is_persistent(tmp_path):
    """The cached result survives a restart: computed once, then answered without the content."""
    upload_root = tmp_path / "a"
    with _embedded(upload_root) as store:
        upload_helloworld(store.path_info)
        node = Node(file=FileNode(name=b"x", digest=HELLOWORLD_DIGEST, size=12))
        expected = (len(NAR_CONTENTS_HELLOWORLD), sha(NAR_CONTENTS_HELLOWORLD))
        assert store.path_info.calculate_nar(node) == expected
    from tvixd.pathinfoservice.sqlite import SqlitePathInfoService

    db = str(upload_root / "store.sqlite")
    svc = SqlitePathInfoService(db, MemoryBlobService(), MemoryDirectoryService())  # no content at all
    renamed = Node(file=FileNode(name=b"other-name", digest=HELLOWORLD_DIGEST, size=12))
    assert svc.calculate_nar(renamed) == expected
    with pytest.raises(NotFound):  # a different node is not in the cache
        svc.calculate_nar(Node(file=FileNode(name=b"x", digest=HELLOWORLD_DIGEST, size=13)))
    svc.close()


BAD_NARINFO = PathInfo(node=symlink_info().node, narinfo=NARInfo(nar_sha256=bytes(31)))


@pytest.mark.parametrize("corruption", ["garbage", "wrong-key", "bad-narinfo", "bad-utf8-name"])
def test_sqlite_corrupt_row_is_data_loss(tmp_path, corruption):
    import sqlite3

    with _embedded(tmp_path) as store:
        store.path_info.put(symlink_info())
        data = {
            "garbage": b"\xff\xff",
            "wrong-key": symlink_info(name=b"1" * 32 + b"-x").SerializeToString(),
            "bad-narinfo": BAD_NARINFO.SerializeToString(),
            "bad-utf8-name": symlink_info().SerializeToString() + b"\x1a\x04\x22\x02\xff\xfe",  # reference_names
        }[corruption]
        with sqlite3.connect(tmp_path / "store.sqlite") as db:
            db.execute("UPDATE path_infos SET data = ?", (data,))
        with pytest.raises(DataLoss, match=DUMMY_OUTPUT_HASH.hex()) as by_protobuf:
            store.path_info.get(DUMMY_OUTPUT_HASH)
        with pytest.raises(DataLoss):
            list(store.path_info.list())
        # Read without protobuf: checked all the same, the same message.
        with pytest.raises(DataLoss, match=DUMMY_OUTPUT_HASH.hex()) as by_parts:
            store.path_info.get_parts(DUMMY_OUTPUT_HASH)
        assert str(by_parts.value) == str(by_protobuf.value)
        if corruption in ("garbage", "wrong-key"):  # the root entry is all get_root_entry reads
            with pytest.raises(DataLoss, match=DUMMY_OUTPUT_HASH.hex()):
                store.path_info.get_root_entry(DUMMY_OUTPUT_HASH)


def test_sqlite_root_entry_of_a_row_in_another_wire_form(tmp_path):
    """A row that is valid protobuf but not what put() writes (an unknown field before the node) is read
    through protobuf: the same entry, the same parts."""
    import sqlite3

    from tvixd.castore.pathinfo import path_info_parts

    with _embedded(tmp_path) as store:
        store.path_info.put(symlink_info())
        with sqlite3.connect(tmp_path / "store.sqlite") as db:
            db.execute("UPDATE path_infos SET data = ?", (b"\x28\x01" + symlink_info().SerializeToString(),))
        assert store.path_info.get_root_entry(DUMMY_OUTPUT_HASH) == (2, DUMMY_NAME, b"doesntmatter", 0, False)
        assert store.path_info.get_parts(DUMMY_OUTPUT_HASH) == path_info_parts(symlink_info())


def test_sqlite_locked_is_unavailable(tmp_path):
    import sqlite3

    from tvixd.errors import Unavailable
    from tvixd.pathinfoservice.sqlite import SqlitePathInfoService

    path = str(tmp_path / "store.sqlite")
    svc = SqlitePathInfoService(path, MemoryBlobService(), MemoryDirectoryService(), busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match=path):
            svc.put(symlink_info())
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert svc.get(DUMMY_OUTPUT_HASH) is None
    svc.close()
