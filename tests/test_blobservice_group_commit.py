"""fs:// writes under concurrency: all-or-nothing per blob, even under a kill (single writes and batches)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import blake3
import grpc
import pytest

from tests.daemon import start_daemon
from tests.test_blobservice import temp_files
from tvixd.blobservice.fs import FsBlobService
from tvixd.castore.digest import B3Digest
from tvixd.errors import StorageError
from tvixd.server.codec import encode_blob_chunk

THREADS = 16


def _blobs(n: int, seed: int) -> list[bytes]:
    """Distinct blobs of varied sizes (empty, tiny, a few KiB, over the 1 MiB write buffer)."""
    sizes = [0, 1, 100, 4096, 70_000, (1 << 20) + 3]
    return [seed.to_bytes(4, "little") + i.to_bytes(4, "little") + os.urandom(sizes[i % len(sizes)]) for i in range(n)]


def _visible(root: Path) -> dict[str, bytes]:
    """Every blob file outside tmp/, by its hex name."""
    return {p.parent.name + p.name: p.read_bytes() for p in root.glob("??/*") if p.is_file()}


def _run_together(fns: list) -> list:
    """Run the callables on their own threads, released at once so their closes overlap; results or exceptions."""
    start = threading.Barrier(len(fns))
    out: list = [None] * len(fns)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = fns[i]()
        except Exception as e:  # returned, asserted by the caller
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_writes_are_all_visible_with_their_bytes(tmp_path):
    service = FsBlobService(str(tmp_path / "blobs"))
    blobs = _blobs(4 * THREADS, seed=1)
    blobs += blobs[:THREADS]  # duplicates written while the first copies commit

    def write_some(k: int) -> list[B3Digest]:
        got = []
        for data in blobs[k::THREADS]:
            w = service.open_write()
            w.write(data)
            got.append(w.close())
        return got

    results = _run_together([lambda k=k: write_some(k) for k in range(THREADS)])
    digests = [d for r in results for d in r]
    assert sorted(digests) == sorted(blake3.blake3(b).digest() for b in blobs)
    visible = _visible(tmp_path / "blobs")
    assert visible == {blake3.blake3(b).hexdigest(): b for b in blobs}
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def test_failing_precommit_in_a_group_discards_only_that_blob(tmp_path):
    """Writers closing together: the ones whose precommit raises leave nothing; the others commit."""
    service = FsBlobService(str(tmp_path / "blobs"))
    blobs = _blobs(THREADS, seed=2)

    def refuse() -> None:
        raise StorageError("client went away")

    def write(i: int) -> B3Digest:
        w = service.open_write()
        w.write(blobs[i])
        return w.close(precommit=refuse if i % 2 else None)

    results = _run_together([lambda i=i: write(i) for i in range(THREADS)])
    for i, r in enumerate(results):
        if i % 2:
            assert isinstance(r, StorageError)
        else:
            assert r == blake3.blake3(blobs[i]).digest()
    assert _visible(tmp_path / "blobs") == {blake3.blake3(b).hexdigest(): b for b in blobs[::2]}
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def _put_all(url: str, blobs: list[bytes]) -> list:
    from tvixd.blobservice.grpc import from_url

    service = from_url(url)
    try:

        def put(data: bytes) -> B3Digest:
            w = service.open_write()
            w.write(data)
            return w.close()

        return _run_together([lambda b=b: put(b) for b in blobs])
    finally:
        service.close()


def test_cancelled_upload_among_concurrent_puts_never_becomes_visible(tmp_path):
    with start_daemon(tmp_path) as d, grpc.insecure_channel(d.target) as channel:
        root = d.state_dir / "blobs"
        partial = os.urandom(300_000)
        sent, stop = threading.Event(), threading.Event()

        def requests():
            yield encode_blob_chunk(partial)
            sent.set()
            stop.wait(60)

        put = channel.stream_unary("/tvix.store.v1.BlobService/Put")
        call = put.future(requests())
        assert sent.wait(60)
        deadline = time.monotonic() + 60
        while not temp_files(root / "tmp", d.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # the daemon is writing the partial upload
        blobs = _blobs(THREADS, seed=3)
        cancel = threading.Thread(target=call.cancel)
        cancel.start()  # while the others upload and commit
        results = _put_all(d.addr, blobs)
        cancel.join()
        stop.set()
        with pytest.raises(grpc.FutureCancelledError):
            call.result()
        assert results == [blake3.blake3(b).digest() for b in blobs]
        d.stop()
        assert blake3.blake3(partial).hexdigest() not in _visible(root)
        assert _visible(root) == {blake3.blake3(b).hexdigest(): b for b in blobs}


def test_killed_daemon_leaves_only_complete_blobs(tmp_path):
    """SIGKILL during concurrent uploads: every visible blob is complete, every acknowledged one is visible."""
    acked: list[bytes] = []
    lock = threading.Lock()
    with start_daemon(tmp_path) as d:
        root = d.state_dir / "blobs"
        from tvixd.blobservice.grpc import from_url

        service = from_url(d.addr)
        stop = threading.Event()

        def upload(k: int) -> None:
            i = 0
            while not stop.is_set():
                data = k.to_bytes(4, "little") + i.to_bytes(4, "little") + os.urandom(50_000 + 7919 * (i % 13))
                i += 1
                try:
                    w = service.open_write()
                    w.write(data)
                    w.close()
                except Exception:
                    return  # the daemon is gone
                with lock:
                    acked.append(data)

        threads = [threading.Thread(target=upload, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        stop.set()
        for t in threads:
            t.join()
        service.close()
    assert len(acked) >= 40
    visible = _visible(root)
    assert {blake3.blake3(b).hexdigest() for b in acked} <= visible.keys()
    for name, data in visible.items():
        assert blake3.blake3(data).hexdigest() == name, f"blob {name} is visible but incomplete"
    reopened = FsBlobService(str(root))  # the daemon's temp files stay invisible
    assert all(reopened.has(bytes.fromhex(name)) for name in visible)


def test_small_blob_already_stored_needs_no_temp_file(tmp_path):
    """Small writes stay in memory until close, so a blob already stored is never written again."""
    service = FsBlobService(str(tmp_path / "blobs"))
    stored = b"stored once" * 100
    w = service.open_write()
    w.write(stored)
    digest = w.close()
    (tmp_path / "blobs" / "tmp").rmdir()
    (tmp_path / "blobs" / "tmp").write_bytes(b"")  # no temp file can be created any more
    w = service.open_write()
    w.write(stored)
    assert w.close() == digest
    w = service.open_write()
    w.write(b"new")
    with pytest.raises(StorageError, match="tmp"):
        w.close()
    assert _visible(tmp_path / "blobs") == {digest.hex(): stored}


def test_batch_past_its_descriptor_budget_uses_named_temp_files(tmp_path, monkeypatch):
    """A batch holds at most its budget of anonymous temp files open; the rest are named, all commit alike."""
    from tvixd.blobservice import fs

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc: anonymous temp files cannot be linked")
    monkeypatch.setattr(fs, "_fd_budget", lambda: 3)
    service = FsBlobService(str(tmp_path / "blobs"))
    assert service._anonymous_tmp  # Linux with /proc: O_TMPFILE + linkat
    batch = service.batch()
    blobs = _blobs(10, seed=4)
    for data in blobs:
        w = batch.open_write()
        w.write(data)
        w.close()
    pending = temp_files(tmp_path / "blobs" / "tmp")
    assert len(pending) == 10
    assert sum("#" in p for p in pending) == 3  # the anonymous ones, still open
    assert _visible(tmp_path / "blobs") == {}
    batch.commit()
    assert _visible(tmp_path / "blobs") == {blake3.blake3(b).hexdigest(): b for b in blobs}
    assert temp_files(tmp_path / "blobs" / "tmp") == []
    w = batch.open_write()
    w.write(b"aborted")
    w.close()
    batch.abort()
    assert temp_files(tmp_path / "blobs" / "tmp") == []
    assert batch._fds == 0
