"""An import's small blobs written into an fs:// blob directory by a helper process (:class:`HelperBlobBatch`).

Why: storing a small file is mostly syscalls (an existence check, creating an
anonymous temp file, writing, fchmod, later a link), each with its round trip
through the GIL, and threads in one process only take turns at it (writer
threads made imports slower, see ``tvixd.importer.DEFAULT_WORKERS``). A second
process runs them on the other core while the importer walks on. The importer
hashes each blob anyway (its digest goes into the directory), hands the bytes
over a pipe, and the helper stores them through an ordinary
:class:`~tvixd.blobservice.fs.FsBlobBatch`, hashing them again: what it names a
blob is what it verified.

Once started, the helper writes ``ready`` on its stdout. Records on its stdin (binary):

- ``B`` + digest (32 bytes) + size (4 bytes, little-endian) + the bytes: a blob;
- ``C``: commit behind (``FsBlobBatch.commit_behind``), no answer;
- ``D``: commit; the helper answers one line on stdout, ``ok`` or ``error MESSAGE``
  (the blobs of a failed commit are discarded); the importer then ends its input;
- end of input without ``D``: abort, nothing uncommitted becomes visible (an
  importer killed at any moment leaves only what commits behind made durable).

Run as ``python -m tvixd.blobservice.fs_helper BLOB_DIR``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

import blake3

from tvixd.blobservice.base import BlobBatch, BlobWriter, Precommit
from tvixd.blobservice.fs import SMALL_BLOB, FsBlobBatch, FsBlobService
from tvixd.castore.digest import B3Digest
from tvixd.errors import AlreadyClosed, DataLoss, StorageError, TvixError

if TYPE_CHECKING:  # subprocess only once a helper is started: a small tree never starts one
    import subprocess

HELPER_AFTER = 64
"""Small blobs written in-process before the helper is started: a small tree does not pay for starting it.

The blobs after that are held here until the helper says it is ready (starting Python and importing
the blob service takes it ~0.1 s), then sent. A tree of a few hundred files is done before: its held
blobs are then written here and the helper killed unused (waiting for it made importing 100 small
files 0.04 -> 0.14 s; now 0.036 s, against 0.044 s with no helper at all)."""

WAIT_BYTES = 16 << 20
"""Bytes of blobs held for a helper that is not ready yet, at most; past them blobs are written here."""

SEND_BYTES = 256 << 10
"""Records are sent to the helper in writes of about this size (one pipe write per many small blobs)."""

PIPE_BYTES = 1 << 20
"""The pipe to the helper holds this much (Linux ``F_SETPIPE_SZ``; 1 MiB is the default maximum)."""

NEW_RUN = 64
"""After this many blobs in a row found not stored, only every ``STORED_SAMPLE``-th is looked up.

Why: the lookup (a stat of the blob's name, 9-25 us) was a tenth of the importer's CPU on a new
tree, and the helper does not look again (``FsBlobBatch.put_new``). A blob sent although stored
costs the helper a temp file and a link that finds the name taken (the stored file stays): a waste
only on a tree partly stored, where the first hit of a sample brings back a lookup per blob."""
STORED_SAMPLE = 16

TAKEN_MAX = 1 << 16
"""Digests of one batch remembered (~100 bytes each), so a file repeated in a tree is sent once."""


class HelperBlobBatch(BlobBatch):
    """A bulk batch (``FsBlobService.bulk_batch``): small blobs go to a helper process, others are written here.

    Blobs bigger than ``SMALL_BLOB`` (and the first ``HELPER_AFTER`` small ones) go
    through this process's own :class:`FsBlobBatch`. ``commit`` commits both: the
    helper's first, then the local one. ``commit(precommit)`` runs ``precommit``
    before either starts (its check then happens earlier than the contract's "after
    durable", never later than visibility); an exception from it discards everything.
    """

    closes_wait = False  # a small blob's close() only hashes and queues it: no writer threads needed

    def __init__(self, service: FsBlobService) -> None:
        super().__init__(service)
        self._fs = service
        self._local = FsBlobBatch(service)
        self._lock = threading.Lock()  # writers may close from several threads
        self._small = 0
        self._no_helper = False  # set if starting one failed: the rest is written here
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False  # the helper said "ready": records are sent from then on
        self._waiting: list[bytes | bytearray] = []  # blobs queued (in _out) before it was ready
        self._out = bytearray()  # records not yet sent
        self._taken: set[bytes] = set()  # digests sent to the helper or found stored, this batch
        self._new_run = 0  # blobs in a row found not stored (see NEW_RUN)
        self._looked = 0

    def open_write(self) -> BlobWriter:
        return _HelperWriter(self)

    def put_whole(self, data: bytes | bytearray | memoryview, precommit: Precommit | None = None) -> B3Digest:
        """A small blob straight to the helper (no writer object: ~10% of the importer's CPU per small file)."""
        if precommit is None and len(data) <= SMALL_BLOB:
            data = data if isinstance(data, bytes) else bytes(data)  # held until sent: must not change
            return self._store_small(B3Digest(blake3.blake3(data).digest()), data)
        return super().put_whole(data, precommit)

    def _store_small(self, digest: B3Digest, data: bytes | bytearray, precommit: Precommit | None = None) -> B3Digest:
        """A hashed small blob to the helper, or (with a precommit, or no helper yet) through the local batch."""
        if precommit is None and self._take(digest, data):
            return digest
        digest = self._local.put_whole(data, precommit)
        self._remember(digest)
        return digest

    def _take(self, digest: bytes, data: bytes | bytearray) -> bool:
        """Queue a closed small blob for the helper; False while it is not started yet (write it here).

        A blob stored already is not sent (its name is made durable at commit, as a local
        writer would): re-importing a tree then costs the helper nothing (50,000 small
        files: 3.2 s with every blob sent and checked by the helper). Within a run of new
        blobs only a sample is looked up (``NEW_RUN``); one sent or found before in this
        batch is not looked up at all.
        """
        if digest in self._taken:
            return True
        self._looked += 1
        if self._new_run < NEW_RUN or self._looked % STORED_SAMPLE == 0:
            final = self._fs.path_of(digest)
            if os.path.exists(final):
                self._new_run = 0
                self._local._found(final)
                self._remember(digest)
                return True
            self._new_run += 1
        with self._lock:
            self._small += 1
            if self._small <= HELPER_AFTER or self._no_helper:
                return False
            if self._proc is None:
                try:
                    self._proc = _start_helper(self._fs.root)
                except OSError:
                    self._no_helper = True  # no interpreter to run it (or no memory): write them here
                    return False
            if not self._ready and not self._check_ready():
                if self._proc is None or len(self._out) >= WAIT_BYTES:
                    return False  # it died starting, or enough is held for it: write this one here
                self._waiting.append(data)  # written here if the commit comes before the helper is ready
            self._out += b"B" + digest + len(data).to_bytes(4, "little")
            self._out += data
            if self._ready and len(self._out) >= SEND_BYTES:
                self._send()
            self._remember(digest)
        return True

    def _remember(self, digest: bytes) -> None:
        if len(self._taken) < TAKEN_MAX:
            self._taken.add(digest)

    def _check_ready(self) -> bool:
        """Whether the helper has said "ready" (without waiting for it; under ``_lock``)."""
        import select

        proc = self._proc
        assert proc is not None and proc.stdout is not None
        if not select.select([proc.stdout], [], [], 0)[0]:
            return False
        if proc.stdout.readline() != b"ready\n":
            self._no_helper = True  # it died starting: write the rest here, and what it was to get
            self._write_here(self._stop())
            return False
        self._ready = True
        self._waiting.clear()  # their records go to the helper
        return True

    def _send(self) -> None:
        """Write the queued records to the helper (under ``_lock``; blocks while the helper is behind)."""
        proc = self._proc
        if proc is None or not self._out:
            return
        assert proc.stdin is not None
        try:
            proc.stdin.write(self._out)
        except OSError as e:  # BrokenPipeError: it is gone
            raise StorageError(f"the blob helper process is gone (exit status {proc.poll()}): {e}") from e
        self._out.clear()

    def commit_behind(self) -> None:
        with self._lock:
            if self._ready:
                self._out += b"C"
                self._send()
        self._local.commit_behind()

    def commit(self, precommit: Precommit | None = None) -> None:
        if precommit is not None:
            try:
                precommit()
            except BaseException:
                self.abort()
                raise
        with self._lock:
            proc = self._proc
            if proc is not None and not self._ready:
                try:
                    self._write_here(self._stop())  # started but not ready yet: it was given nothing
                except BaseException:
                    self._local.abort()
                    raise
            elif proc is not None:
                try:
                    self._out += b"D"
                    self._send()
                    assert proc.stdout is not None
                    answer = proc.stdout.readline().decode(errors="replace").rstrip("\n")
                finally:
                    self._stop()  # (the next small blobs of this batch, if any, start a new one)
                if answer != "ok":
                    self._local.abort()
                    raise StorageError(answer.removeprefix("error ") or "the blob helper process exited")
        self._local.commit()

    def abort(self) -> None:
        with self._lock:
            self._stop()
        self._local.abort()

    def _write_here(self, blobs: list[bytes | bytearray]) -> None:
        """Write blobs held for a helper that never became ready through the local batch."""
        for data in blobs:
            self._local.put_whole(data)

    def _stop(self) -> list[bytes | bytearray]:
        """End the helper (killed if not ready: it holds nothing); the blobs held for it, to write here."""
        proc, self._proc = self._proc, None
        ready, self._ready = self._ready, False
        held, self._waiting = self._waiting, []
        self._small = 0
        self._taken = set()  # what it was given is visible after this commit only, or never
        self._out = bytearray()
        if proc is None:
            return held
        if not ready:
            proc.kill()  # no need to wait for it to finish starting
        try:
            assert proc.stdin is not None
            proc.stdin.close()  # end of input: the helper aborts what is uncommitted and exits
        except OSError:
            pass
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        return held


class _HelperWriter(BlobWriter):
    """Keeps a blob in memory up to ``SMALL_BLOB`` (then hands it to the helper), else writes it locally."""

    def __init__(self, batch: HelperBlobBatch) -> None:
        self._batch = batch
        self._data: bytearray | None = bytearray()
        self._hasher = blake3.blake3()
        self._local: BlobWriter | None = None
        self._digest: B3Digest | None = None
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise AlreadyClosed("blob writer already closed")
        if self._local is not None:
            return self._local.write(data)
        assert self._data is not None
        if len(self._data) + len(data) > SMALL_BLOB:
            self._local = self._batch._local.open_write()
            self._local.write(self._data)
            self._data = None
            return self._local.write(data)
        self._data += data
        self._hasher.update(data)
        return len(data)

    def close(self, precommit: Precommit | None = None) -> B3Digest:
        if self._digest is not None:
            return self._digest
        if self._done:
            raise AlreadyClosed("blob writer was aborted or previously closed with an error")
        self._done = True
        if self._local is not None:
            self._digest = self._local.close(precommit)
            return self._digest
        data, self._data = self._data, None
        assert data is not None
        self._digest = self._batch._store_small(B3Digest(self._hasher.digest()), data, precommit)
        return self._digest

    def abort(self) -> None:
        self._done = True
        self._data = None
        if self._local is not None:
            self._local.abort()


def _start_helper(root: str) -> subprocess.Popen[bytes]:
    """Start ``python -P -m tvixd.blobservice.fs_helper ROOT`` with this tvixd first on its path (the same code)."""
    import subprocess

    import tvixd

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(tvixd.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        # -P: not the current directory first on the path, which may hold some other tvixd
        [sys.executable, "-P", "-m", "tvixd.blobservice.fs_helper", root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        bufsize=0,
    )
    assert proc.stdin is not None
    try:
        import fcntl

        # Room for the importer to run ahead: with the default 64 KiB pipe the two took turns.
        fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # a smaller pipe only means less overlap
    return proc


def serve(root: str, inp: object, out: object) -> int:
    """The helper's loop over its input records (see the module docstring); returns the exit status."""
    import signal

    # Ctrl-C reaches the whole process group: the importer decides, and ends the input to abort.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    read = inp.read  # type: ignore[attr-defined]
    service = FsBlobService(root)
    batch = FsBlobBatch(service)
    failed: str | None = None
    out.write(b"ready\n")  # type: ignore[attr-defined]
    out.flush()  # type: ignore[attr-defined]
    try:
        while kind := read(1):
            if kind == b"B":
                head = read(36)
                data = read(int.from_bytes(head[32:36], "little"))
            elif kind not in (b"C", b"D"):
                raise SystemExit(f"tvixd blob helper: unknown record {kind!r}")
            if failed is None:  # else this commit fails anyway: its blobs are discarded
                try:
                    if kind == b"B":
                        got = batch.put_new(data)  # the importer found it not stored
                        if got != head[:32]:
                            raise DataLoss(f"blob sent as {B3Digest(head[:32])} hashes to {got}")
                    elif kind == b"C":
                        batch.commit_behind()
                    else:
                        batch.commit()
                except TvixError as e:
                    failed = str(e)
                    batch.abort()
            if kind == b"D":
                out.write(b"ok\n" if failed is None else f"error {failed}\n".encode())  # type: ignore[attr-defined]
                out.flush()  # type: ignore[attr-defined]
                failed = None
    finally:
        batch.abort()  # end of input without a commit: nothing uncommitted becomes visible
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], open(sys.stdin.fileno(), "rb", buffering=PIPE_BYTES, closefd=False), sys.stdout.buffer))
