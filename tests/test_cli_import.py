"""``tvixd import`` as a command: partial failures, exit status, JSON, progress, no tracebacks."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time

import blake3
import pytest

from tests.conftest import REPO_ROOT, run_tvixd, tvixd_env
from tests.nix import store_args

HELLO_PATH = "/nix/store/zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root"


def test_import_prints_store_path(tmp_path):
    (tmp_path / "root").write_bytes(b"Hello World!")
    proc = run_tvixd("import", *store_args(tmp_path), str(tmp_path / "root"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (HELLO_PATH + "\n").encode()


def test_no_paths_is_fine(tmp_path):
    proc = run_tvixd("import", *store_args(tmp_path))
    assert (proc.returncode, proc.stdout) == (0, b"")


def test_partial_failure(tmp_path):
    """Bad paths each get one error line naming them; the good ones still complete; exit 1."""
    (tmp_path / "root").write_bytes(b"Hello World!")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "bad name").write_bytes(b"x")
    args = [str(tmp_path / n) for n in ("fifo", "root", "bad name", "missing")]
    proc = run_tvixd("import", *store_args(tmp_path), *args)
    assert proc.returncode == 1
    assert proc.stdout == (HELLO_PATH + "\n").encode()
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 3, lines
    assert (
        lines[0] == f"tvixd import: error: {tmp_path}/fifo: is a FIFO; only regular files, directories and "
        "symlinks can be imported"
    )
    assert lines[1].startswith(f"tvixd import: error: {tmp_path}/bad name: 'bad name' is not a valid store path name")
    assert lines[2] == f"tvixd import: error: {tmp_path}/missing: No such file or directory"
    assert b"Traceback" not in proc.stderr
    # The good path is really in the store.
    info = run_tvixd("path-info", *store_args(tmp_path), HELLO_PATH)
    assert info.stdout == (HELLO_PATH + "\n").encode()


def test_json_output(tmp_path):
    (tmp_path / "root").write_bytes(b"Hello World!")
    proc = run_tvixd("import", "--json", *store_args(tmp_path), str(tmp_path / "root"))
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {
        "path": HELLO_PATH,
        "narHash": "sha256:0h40zg6hakjv951nyhdad7mv9za56m3za5gnpiw5s1hbwcxzdrq3",
        "narSize": 128,
    }


def test_reimport_same_output(tmp_path):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(b"data")
    first = run_tvixd("import", *store_args(tmp_path), str(tree))
    second = run_tvixd("import", *store_args(tmp_path), str(tree))
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    assert first.stdout.startswith(b"/nix/store/")


def test_env_vars_select_the_store(tmp_path):
    (tmp_path / "root").write_bytes(b"Hello World!")
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in store_args(tmp_path))
    env = tvixd_env(
        BLOB_SERVICE_ADDR=flags["blob-service-addr"],
        DIRECTORY_SERVICE_ADDR=flags["directory-service-addr"],
        PATH_INFO_SERVICE_ADDR=flags["path-info-service-addr"],
    )
    assert run_tvixd("import", str(tmp_path / "root"), env=env).returncode == 0
    assert run_tvixd("path-info", *store_args(tmp_path), HELLO_PATH).returncode == 0


def test_bad_store_address_is_one_line(tmp_path):
    (tmp_path / "root").write_bytes(b"x")
    proc = run_tvixd("import", "--blob-service-addr=foo", str(tmp_path / "root"))
    assert proc.returncode == 1
    assert len(proc.stderr.decode().strip().splitlines()) == 1
    assert b"foo" in proc.stderr


def _run_with_tty_stderr(args: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvixd", *args], stdout=subprocess.PIPE, stderr=slave, env=env, cwd=REPO_ROOT
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read()
    proc.wait()
    os.close(master)
    return proc.returncode, out, b"".join(chunks)


def test_progress_on_a_terminal_only(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(50):
        (tree / f"f{i}").write_bytes(os.urandom(1000))
    env = tvixd_env(TVIXD_PROGRESS_DELAY="0")
    rc, out, err = _run_with_tty_stderr(["import", *store_args(tmp_path), str(tree)], env)
    assert rc == 0
    assert out.startswith(b"/nix/store/")
    assert b"importing " in err and b"files" in err
    # Not a terminal: nothing on stderr at all.
    proc = run_tvixd("import", *store_args(tmp_path), str(tree), env=env)
    assert proc.returncode == 0 and proc.stderr == b""


def test_killed_import_leaves_nothing_visible(tmp_path):
    """SIGKILL in the middle of an import: no path info, no directory, no blob outside tmp/."""
    from tests.test_blobservice import temp_files

    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "small").write_bytes(b"small file, written before the kill")
    with open(tree / "b-big", "wb") as f:
        f.truncate(512 << 20)  # sparse: cheap on disk, still 512 MiB to hash and write
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvixd", "import", *store_args(tmp_path), str(tree)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tvixd_env(),
    )
    blobs_tmp = tmp_path / "state" / "blobs" / "tmp"
    while proc.poll() is None and not (blobs_tmp.is_dir() and temp_files(blobs_tmp, proc.pid)):
        time.sleep(0.01)
    assert proc.poll() is None, "the import finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    visible = [
        os.path.join(d, n) for d, _, names in os.walk(tmp_path / "state" / "blobs") for n in names
        if not d.startswith(str(blobs_tmp))
    ]  # fmt: skip
    assert visible == []
    listing = run_tvixd("path-info", "--all", "--json", *store_args(tmp_path))
    assert listing.returncode == 0 and json.loads(listing.stdout) == []
    # The completed subdirectory "a" was not committed either.
    from tvixd.castore.directory import directory_digest
    from tvixd.directoryservice.from_addr import from_addr
    from tvixd.proto.castore_pb2 import Directory, FileNode

    data = (tree / "a" / "small").read_bytes()
    a = Directory(files=[FileNode(name=b"small", digest=blake3.blake3(data).digest(), size=len(data))])
    directories = from_addr(store_args(tmp_path)[1].split("=", 1)[1])
    try:
        assert directories.get(directory_digest(a)) is None
    finally:
        directories.close()


def _unprivileged_prefix() -> list[str]:
    """A command prefix under which permission bits apply (root without CAP_DAC_*), or [] if they already do."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and util-linux's setpriv is missing: cannot make a path unreadable")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, "--bounding-set", caps, "--inh-caps", caps]


def test_unreadable_paths(tmp_path):
    """Unreadable file and directory: one error line each naming the path; others still complete."""
    (tmp_path / "root").write_bytes(b"Hello World!")
    (tmp_path / "t1").mkdir()
    (tmp_path / "t1" / "secret").write_bytes(b"s")
    (tmp_path / "t1" / "secret").chmod(0)
    (tmp_path / "t2" / "closed").mkdir(parents=True)
    (tmp_path / "t2" / "closed").chmod(0)
    try:
        proc = subprocess.run(
            [*_unprivileged_prefix(), sys.executable, "-m", "tvixd", "import", *store_args(tmp_path),
             str(tmp_path / "t1"), str(tmp_path / "root"), str(tmp_path / "t2")],
            capture_output=True, env=tvixd_env(), timeout=120, check=False,
        )  # fmt: skip
    finally:
        (tmp_path / "t2" / "closed").chmod(0o755)
    assert proc.returncode == 1
    assert proc.stdout == (HELLO_PATH + "\n").encode()
    assert proc.stderr.decode().splitlines() == [
        f"tvixd import: error: {tmp_path}/t1/secret: Permission denied",
        f"tvixd import: error: {tmp_path}/t2/closed: Permission denied",
    ]


def _daemon_flags(daemon) -> list[str]:
    return [f"--{s}-service-addr={daemon.addr}" for s in ("blob", "directory", "path-info")]


def test_import_through_daemon_uploads_each_distinct_blob_once(tmp_path):
    """Identical and empty files are uploaded once per import; store paths as with the embedded store."""
    from tests.daemon import start_daemon

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for name in ("a", "b", "sub/a"):
        (tree / name).write_bytes(b"same bytes\n")
    for name in ("empty", "sub/empty"):
        (tree / name).write_bytes(b"")
    (tree / "sub" / "other").write_bytes(os.urandom(5000))
    (tree / "big").write_bytes(os.urandom(3 << 20))  # streamed in chunks, not batched
    embedded = run_tvixd("import", *store_args(tmp_path / "emb"), str(tree))
    assert embedded.returncode == 0, embedded.stderr
    with start_daemon(tmp_path / "daemon") as daemon:
        proc = run_tvixd("import", *_daemon_flags(daemon), str(tree))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == embedded.stdout
        assert daemon.stop() == 0  # all access-log lines written
    puts = [e for e in daemon.events() if e.get("method") == "/tvix.store.v1.BlobService/Put"]
    assert len(puts) == 1  # big
    batched = [e for e in daemon.events() if e.get("method") == "/tvixd.v1.BlobBatchService/PutBlobs"]
    # "same bytes\n", "", other: each once, as a PutBlobsRequest.blobs entry (tag, length, bytes)
    assert sum(e["bytes_in"] for e in batched) == (2 + 11) + 2 + (3 + 5000)


def test_failed_upload_through_daemon_fails_only_its_path(tmp_path):
    """A blob the daemon refuses fails the import of the path holding it, naming the path; others complete."""
    from tests.daemon import start_daemon

    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "small").write_bytes(b"fits")
    (tmp_path / "tree" / "large").write_bytes(os.urandom(100_000))  # over the daemon's message limit
    (tmp_path / "root").write_bytes(b"Hello World!")
    with start_daemon(tmp_path / "daemon", "--max-message-size", "64KiB") as daemon:
        flags = _daemon_flags(daemon)
        proc = run_tvixd("import", *flags, str(tmp_path / "tree"), str(tmp_path / "root"))
        assert proc.returncode == 1
        assert proc.stdout.decode() == HELLO_PATH + "\n"
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1 and str(tmp_path / "tree") in lines[0] and "max_message_size=65536" in lines[0]
        assert "Traceback" not in proc.stderr.decode()
        listing = run_tvixd("path-info", "--all", *flags)
        assert listing.stdout.decode().split() == [HELLO_PATH]  # the failed tree left no path info
