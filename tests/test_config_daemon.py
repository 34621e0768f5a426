"""Bad input to a real daemon: one plain error line and a non-zero exit, never a traceback."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
from pathlib import Path

import pytest

from tests.conftest import run_tvixd, tvixd_env
from tests.daemon import start_daemon
from tests.test_log_daemon import store_args


def run_daemon(*args: str, **env: str) -> tuple[int, list[str]]:
    """Run ``tvixd --log-format json daemon ARGS`` to its (failing) end: (exit code, stderr lines)."""
    r = run_tvixd("--log-format", "json", "daemon", *args, env=tvixd_env(**env), timeout=120)
    assert r.stdout == b""
    return r.returncode, r.stderr.decode().splitlines()


def assert_one_error_line(lines: list[str], *needles: str) -> None:
    """The last line is the plain error naming the problem; anything before it is a JSON log event."""
    assert lines, "no output"
    assert not any("Traceback" in ln for ln in lines), "\n".join(lines)
    *logs, error = lines
    assert error.startswith("tvixd daemon: error: ") or error.startswith("tvixd: error: "), error
    for needle in needles:
        assert needle in error, error
    for ln in logs:
        assert json.loads(ln)["level"] in {"debug", "info", "warning", "error"}, ln


def test_config_typo(tmp_path: Path):
    conf = tmp_path / "tvixd.toml"
    conf.write_text("[daemon]\nlisten-address = '127.0.0.1:0'\n")
    rc, lines = run_daemon(TVIXD_CONFIG=str(conf), STATE_DIRECTORY=str(tmp_path / "state"))
    assert rc != 0 and len(lines) == 1
    assert_one_error_line(lines, f"{conf}:2: unknown key 'listen-address' in [daemon] (did you mean listen_address?)")
    assert not (tmp_path / "state").exists()  # refused before touching anything


def test_unusable_state_dir(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    rc, lines = run_daemon("-l", "127.0.0.1:0", STATE_DIRECTORY=str(blocker / "tvixd"))
    assert rc != 0
    assert_one_error_line(lines, str(blocker / "tvixd"), "Not a directory")


def test_grpc_port_in_use(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, lines = run_daemon("-l", f"127.0.0.1:{port}", *store_args(), STATE_DIRECTORY=str(tmp_path / "s"))
    assert rc != 0
    assert_one_error_line(lines, f"127.0.0.1:{port}")


def test_second_daemon_on_the_same_port(tmp_path: Path):
    """grpc's SO_REUSEPORT would let two daemons share a port silently; the second must fail instead."""
    with start_daemon(tmp_path / "a", *store_args()) as first:
        rc, lines = run_daemon("-l", f"127.0.0.1:{first.port}", *store_args(), STATE_DIRECTORY=str(tmp_path / "b"))
        assert rc != 0
        assert_one_error_line(lines, f"127.0.0.1:{first.port}")
        assert first.proc.poll() is None


def test_metrics_port_in_use(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, lines = run_daemon("-l", "127.0.0.1:0", "--metrics-listen-address", f"127.0.0.1:{port}", *store_args(),
                               STATE_DIRECTORY=str(tmp_path / "s"))
    assert rc != 0
    assert_one_error_line(lines, f"cannot serve metrics on 127.0.0.1:{port}", "in use")


def test_bad_listen_address_flag(tmp_path: Path):
    rc, lines = run_daemon("-l", "localhost", STATE_DIRECTORY=str(tmp_path / "s"))
    assert rc != 0 and len(lines) == 1
    assert_one_error_line(lines, "--listen-address: [daemon] listen_address: expected host:port")


@pytest.mark.skipif(importlib.util.find_spec("tvixd.directoryservice.sqlite") is None,
                    reason="the SQLite backends (backends helper) have not landed yet")
def test_two_daemons_share_one_sqlite_file(tmp_path: Path):
    """Two daemons on the same embedded store (blob dir + SQLite file) work concurrently."""
    from tests.fixtures import EMPTY_DIGEST
    from tvixd.castore.directory import directory_digest
    from tvixd.directoryservice.from_addr import from_addr
    from tvixd.proto.castore_pb2 import Directory, FileNode

    state = tmp_path / "shared"
    env = {"STATE_DIRECTORY": str(state)}
    with start_daemon(tmp_path / "a", env=env) as a, start_daemon(tmp_path / "b", env=env) as b:
        clients = [from_addr(a.addr), from_addr(b.addr)]
        made: list[bytes] = []
        errors: list[BaseException] = []

        def writer(k: int) -> None:
            try:
                for i in range(40):
                    d = Directory(files=[FileNode(name=f"w{k}-{i}".encode(), digest=EMPTY_DIGEST, size=0)])
                    putter = clients[(k + i) % 2].put_multiple_start()
                    putter.put(d)
                    assert putter.close() == directory_digest(d)
                    made.append(directory_digest(d))
            except BaseException as e:  # reported below, with the daemons' logs
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, (errors, a.stderr_lines()[-5:], b.stderr_lines()[-5:])
        assert len(made) == 160
        for digest in made:  # every directory is visible through both daemons
            for client in clients:
                assert client.get(digest) is not None
        for client in clients:
            client.close()
        assert a.stop() == 0 and b.stop() == 0
    assert state.is_dir() and not [e for d in (a, b) for e in d.events() if e["level"] == "error"]
