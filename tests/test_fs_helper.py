"""fs://'s bulk batch: an import's small blobs stored by a helper process (tvixd.blobservice.fs_helper).

Real helper subprocesses on real blob directories: what becomes visible when, what an abort, a
helper's refusal or a dead helper leaves, and that no helper outlives its batch or a killed import.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import blake3
import pytest

from tests.conftest import run_tvixd, tvixd_env
from tests.nix import store_args
from tests.test_blobservice import temp_files
from tvixd import errors
from tvixd.blobservice import fs_helper
from tvixd.blobservice.from_addr import from_addr
from tvixd.blobservice.fs import SMALL_BLOB, FsBlobService


@pytest.fixture
def service(tmp_path):
    service = from_addr(f"fs://{tmp_path / 'blobs'}")
    yield service
    service.close()


def _write(batch, data: bytes) -> bytes:
    w = batch.open_write()
    w.write(data)
    return w.close()


def _helpers(root) -> list[int]:
    """Pids of helper processes serving the blob directory ``root``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"tvixd.blobservice.fs_helper" in argv and os.fsencode(str(root)) in argv:
            pids.append(int(pid))
    return pids


def _running(root, timeout: float = 20.0) -> bool:
    """Whether a helper for ``root`` shows up (right after the fork its command line is still the parent's)."""
    deadline = time.monotonic() + timeout
    while not _helpers(root):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _gone(root, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while _helpers(root):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _start(batch) -> list[bytes]:
    """Write small blobs until the batch's helper is started and ready; their digests."""
    digests = [_write(batch, os.urandom(700)) for _ in range(fs_helper.HELPER_AFTER + 1)]
    deadline = time.monotonic() + 30
    while True:
        with batch._lock:
            if batch._proc is not None and (batch._ready or batch._check_ready()):
                return digests
        assert time.monotonic() < deadline, "the helper never said ready"
        time.sleep(0.01)


def test_bulk_batch_stores_small_blobs_through_a_helper(service, tmp_path):
    """Past HELPER_AFTER small blobs a helper takes them; big ones stay local; nothing is visible before
    commit (without commit_behind), everything after; the helper exits with the commit."""
    batch = service.bulk_batch()
    assert isinstance(batch, fs_helper.HelperBlobBatch)
    early = _start(batch)
    blobs = [os.urandom(i % 5000) for i in range(1, 151)]
    blobs += [os.urandom(SMALL_BLOB + 1), os.urandom(3 * SMALL_BLOB), blobs[-1], b""]  # big ones, a duplicate
    digests = [_write(batch, data) for data in blobs]
    assert digests == [blake3.blake3(data).digest() for data in blobs]
    assert batch._ready and _running(tmp_path / "blobs")
    assert not any(service.has(d) for d in early + digests)
    batch.commit()
    assert all(service.has(d) for d in early)
    for data, digest in zip(blobs, digests, strict=True):
        with service.open_read(digest) as reader:
            assert reader.read() == data
    assert batch._proc is None and _gone(tmp_path / "blobs")
    assert temp_files(tmp_path / "blobs" / "tmp") == []
    # The batch can be used again: a new helper for the next small blobs.
    more = _start(batch) + [_write(batch, os.urandom(100)) for _ in range(10)]
    batch.commit()
    assert all(service.has(d) for d in more)


def test_bulk_batch_kills_a_helper_not_ready_by_the_commit(service, tmp_path):
    """Small trees are done before the helper is up: every blob is written here, the helper killed unused."""
    batch = service.bulk_batch()
    digests = [_write(batch, os.urandom(300)) for _ in range(fs_helper.HELPER_AFTER + 5)]
    assert batch._proc is not None and not batch._ready  # started: it takes ~0.1 s to be ready
    batch.commit()
    assert all(service.has(d) for d in digests)
    assert batch._proc is None and _gone(tmp_path / "blobs")


def test_bulk_batch_sends_no_stored_blob_to_the_helper(service, tmp_path):
    """Blobs stored already (a re-import) are not sent: no helper is started for them."""
    blobs = [os.urandom(300) for _ in range(fs_helper.HELPER_AFTER + 30)]
    first = service.bulk_batch()
    digests = [_write(first, data) for data in blobs]
    first.commit()
    again = service.bulk_batch()
    assert [_write(again, data) for data in blobs] == digests
    assert again._proc is None and not _helpers(tmp_path / "blobs")
    again.commit()
    assert all(service.has(d) for d in digests)


def test_bulk_batch_samples_lookups_in_a_run_of_new_blobs(service, tmp_path, monkeypatch):
    """After NEW_RUN new blobs in a row only every STORED_SAMPLE-th is looked up; stored blobs sent anyway are
    written again by the helper, whose naming keeps the stored file; a sampled hit brings back a lookup per
    blob; a repeated blob is neither looked up nor sent again."""
    stored = [os.urandom(500) for _ in range(200)]
    first = service.bulk_batch()
    for data in stored:
        first.put_whole(data)
    first.commit()
    stored_files = {d: os.stat(service.path_of(blake3.blake3(d).digest())).st_ino for d in stored}

    looked: list[str] = []
    real_exists = os.path.exists
    monkeypatch.setattr(fs_helper.os.path, "exists", lambda p: looked.append(p) or real_exists(p))
    batch = service.bulk_batch()
    new = [os.urandom(600) for _ in range(fs_helper.NEW_RUN + 3 * fs_helper.STORED_SAMPLE)]
    digests = [batch.put_whole(data) for data in new]
    # NEW_RUN lookups, then one in STORED_SAMPLE; the first HELPER_AFTER are written here (looked up again).
    assert len(looked) == fs_helper.NEW_RUN + 3 + fs_helper.HELPER_AFTER
    assert batch._new_run > fs_helper.NEW_RUN
    looked.clear()
    digests += [batch.put_whole(data) for data in stored]
    assert batch._new_run < fs_helper.NEW_RUN  # a sampled stored blob: looking up each one again
    assert len(stored) - fs_helper.STORED_SAMPLE < len(looked) <= len(stored)
    looked.clear()
    sent = len(batch._out)
    assert batch.put_whole(new[0]) == digests[0]  # repeated in the tree: taken already
    assert not looked and len(batch._out) == sent
    batch.commit()
    for data, digest in zip(new + stored, digests, strict=True):
        with service.open_read(digest) as reader:
            assert reader.read() == data
    assert {d: os.stat(service.path_of(blake3.blake3(d).digest())).st_ino for d in stored} == stored_files
    assert temp_files(tmp_path / "blobs" / "tmp") == [] and _gone(tmp_path / "blobs")
    assert not batch._taken  # what a batch remembers ends with its commit


def test_bulk_batch_forgets_its_digests_when_aborted(service, tmp_path):
    """After an abort nothing it was given is visible, so a blob sent before must be sent again."""
    batch = service.bulk_batch()
    digests = [*_start(batch), batch.put_whole(b"sent, then aborted")]
    batch.abort()
    assert not batch._taken
    assert batch.put_whole(b"sent, then aborted") == digests[-1]
    batch.commit()
    assert service.has(digests[-1]) and not any(service.has(d) for d in digests[:-1])


def test_bulk_batch_commit_behind_reaches_the_helper(service, tmp_path):
    batch = service.bulk_batch()
    digests = _start(batch) + [_write(batch, os.urandom(2000)) for _ in range(40)]
    batch.commit_behind()
    deadline = time.monotonic() + 20
    while not all(service.has(d) for d in digests):  # the helper's and the local batch, each on its own
        assert time.monotonic() < deadline, "commit_behind made nothing visible"
        time.sleep(0.02)
        batch.commit_behind()  # names what the last round made durable (here and in the helper)
    batch.commit()
    assert _gone(tmp_path / "blobs")


def test_bulk_batch_abort_leaves_nothing(service, tmp_path):
    batch = service.bulk_batch()
    digests = _start(batch) + [_write(batch, os.urandom(3000)) for _ in range(50)]
    assert _running(tmp_path / "blobs")
    batch.abort()
    assert _gone(tmp_path / "blobs")
    assert not any(service.has(d) for d in digests)
    assert temp_files(tmp_path / "blobs" / "tmp") == []


def test_bulk_batch_helper_refusal_fails_the_commit(service, tmp_path):
    """A blob the helper finds hashing to another digest fails the commit with its message; nothing of
    that commit is visible (the local blobs neither), no helper is left."""
    batch = service.bulk_batch()
    digests = _start(batch) + [_write(batch, os.urandom(1000)) for _ in range(5)]
    assert batch._take(bytes(32), b"not the bytes of an all-zero digest")
    with pytest.raises(errors.StorageError, match="hashes to"):
        batch.commit()
    assert not any(service.has(d) for d in digests)
    assert _gone(tmp_path / "blobs")
    assert temp_files(tmp_path / "blobs" / "tmp") == []


def test_bulk_batch_dead_helper_fails_the_commit(service, tmp_path):
    batch = service.bulk_batch()
    digests = _start(batch) + [_write(batch, os.urandom(1000)) for _ in range(5)]
    batch._proc.kill()
    batch._proc.wait()
    with pytest.raises(errors.StorageError, match="helper"):
        for _ in range(2000):  # until a send or the commit notices
            _write(batch, os.urandom(1000))
        batch.commit()
    batch.abort()
    assert not any(service.has(d) for d in digests)


def test_bulk_batch_without_a_helper_writes_everything_itself(service, tmp_path, monkeypatch):
    """If the helper can't be started (no interpreter there), the batch stores every blob in-process."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    batch = service.bulk_batch()
    blobs = [os.urandom(500) for _ in range(fs_helper.HELPER_AFTER + 20)]
    digests = [_write(batch, data) for data in blobs]
    assert batch._proc is None and batch._no_helper
    batch.commit()
    assert all(service.has(d) for d in digests)


def test_serve_protocol_in_process(tmp_path):
    """The helper's loop itself: blobs, a commit answered "ok", a refused blob answered with its error,
    and end of input discarding what was not committed."""
    good = os.urandom(500)
    record = b"B" + blake3.blake3(good).digest() + len(good).to_bytes(4, "little") + good
    bad = b"B" + bytes(32) + (3).to_bytes(4, "little") + b"abc"
    lost = os.urandom(100)
    tail = b"B" + blake3.blake3(lost).digest() + len(lost).to_bytes(4, "little") + lost
    out = io.BytesIO()
    root = str(tmp_path / "blobs")
    assert fs_helper.serve(root, io.BytesIO(record + b"D" + bad + b"D" + tail), out) == 0
    lines = out.getvalue().decode().splitlines()
    assert lines[:2] == ["ready", "ok"] and lines[2].startswith("error blob sent as ") and len(lines) == 3
    service = FsBlobService(root)
    assert service.has(blake3.blake3(good).digest())
    assert not service.has(blake3.blake3(lost).digest())
    assert temp_files(tmp_path / "blobs" / "tmp") == []
    service.close()


def test_killed_import_leaves_no_helper_and_nothing_uncommitted(tmp_path):
    """SIGKILL of an import whose helper is running: the helper sees its input end, discards what was
    not committed and exits; no directory or path info is visible."""
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    for i in range(fs_helper.HELPER_AFTER + 100):
        (tree / "a" / f"f{i:04d}").write_bytes(os.urandom(200) + b"%d" % i)
    with open(tree / "z-big", "wb") as f:
        f.truncate(512 << 20)  # sparse; walked last: the kill comes while it streams
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvixd", "import", *store_args(tmp_path), str(tree)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tvixd_env(),
    )
    blobs = tmp_path / "state" / "blobs"
    deadline = time.monotonic() + 60
    while proc.poll() is None and not (_helpers(blobs) and temp_files(blobs / "tmp", proc.pid)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert proc.poll() is None, "the import finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _gone(blobs)
    assert [n for n in os.listdir(blobs / "tmp")] == []
    listing = run_tvixd("path-info", "--all", "--json", *store_args(tmp_path))
    assert listing.returncode == 0 and json.loads(listing.stdout) == []


def test_helper_runs_this_tvixd_not_one_in_the_current_directory(service, tmp_path, monkeypatch):
    """`python -m` would put the current directory first on the path: the helper must run our code."""
    cwd = tmp_path / "cwd"
    (cwd / "tvixd").mkdir(parents=True)
    marker = tmp_path / "imported-the-other-tvixd"
    (cwd / "tvixd" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(cwd)
    batch = service.bulk_batch()
    digests = _start(batch) + [_write(batch, os.urandom(100)) for _ in range(10)]
    batch.commit()
    assert all(service.has(d) for d in digests)
    assert not marker.exists()


def test_blobs_held_for_a_helper_that_dies_starting_are_written_here(service, tmp_path, monkeypatch):
    """A helper that exits before saying ready: the blobs held for it are written in-process, none lost."""
    real_start = fs_helper._start_helper

    def dying(root: str):
        proc = real_start(root)
        proc.kill()
        proc.wait()
        return proc

    monkeypatch.setattr(fs_helper, "_start_helper", dying)
    batch = service.bulk_batch()
    digests = [_write(batch, os.urandom(400)) for _ in range(fs_helper.HELPER_AFTER + 40)]
    batch.commit()
    assert all(service.has(d) for d in digests)
    assert batch._no_helper
