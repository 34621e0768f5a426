"""``tvixd daemon --processes N``: serving processes sharing the port, and their supervisor.

Every test runs a real daemon subprocess (tests/daemon.py) on an ephemeral port, with the embedded
store (fs:// + sqlite://, shareable between processes).
"""

from __future__ import annotations

import json
import os
import signal

import grpc
import pytest

from tests.conftest import run_tvixd, tvixd_env
from tests.daemon import make_tls_cert, start_daemon
from tests.test_grpc_daemon import MEMORY, health_status, wait_for_log
from tvixd.proto import rpc_blobstore_pb2_grpc
from tvixd.proto.rpc_blobstore_pb2 import StatBlobRequest


def stat_on_fresh_connection(target: str, digest: bytes) -> None:
    """One Stat over a connection of its own (a local subchannel pool: no connection reuse)."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        rpc_blobstore_pb2_grpc.BlobServiceStub(ch).Stat(StatBlobRequest(digest=digest))


def access_pids(daemon) -> set[int]:
    return {e["pid"] for e in daemon.events() if e.get("event") == "rpc"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def put_blob(addr: str, data: bytes) -> bytes:
    from tvixd.blobservice.grpc import from_url

    client = from_url(addr)
    try:
        w = client.open_write()
        w.write(data)
        return bytes(w.close())
    finally:
        client.close()


def test_connections_are_spread_over_the_serving_processes(tmp_path):
    with start_daemon(tmp_path, "--processes", "3") as d:
        listening = wait_for_log(d, "listening")
        pids = listening["pids"]
        assert listening["processes"] == 3 and len(set(pids)) == 3 and d.proc.pid not in pids
        digest = put_blob(d.addr, b"shared by every serving process")
        # The kernel hashes each connection to one of the 3 processes: 3 * (1/3)**n that n land on one.
        for _ in range(200):
            stat_on_fresh_connection(d.target, digest)  # found on every process: the store is shared
            if len(access_pids(d)) >= 2:
                break
        assert d.stop() == 0
        assert access_pids(d) <= set(pids) and len(access_pids(d)) >= 2, d.stderr_lines()[-5:]
        for line in d.stderr_lines():  # several processes, one stderr: whole lines, never interleaved
            json.loads(line)


def test_sigterm_drains_every_process_and_exits_0(tmp_path):
    with start_daemon(tmp_path, "--processes", "2") as d:
        pids = wait_for_log(d, "listening")["pids"]
        assert health_status(d.target) == 1  # SERVING
        assert d.stop(signal.SIGTERM) == 0
        events = d.events()
        assert [e["event"] for e in events].count("stopped") == 3  # both serving processes, then the parent
        assert events[-1]["event"] == "stopped" and events[-1]["status"] == 0
        assert not [p for p in pids if alive(p)]


def test_sigint_exits_0(tmp_path):
    with start_daemon(tmp_path, "--processes", "2") as d:
        pids = wait_for_log(d, "listening")["pids"]
        assert d.stop(signal.SIGINT) == 0
        assert not [p for p in pids if alive(p)]


def test_a_killed_serving_process_is_restarted(tmp_path):
    with start_daemon(tmp_path, "--processes", "2") as d:
        pids = wait_for_log(d, "listening")["pids"]
        os.kill(pids[0], signal.SIGKILL)
        died = wait_for_log(d, "serving process exited unexpectedly; restarting it")
        assert died["pid"] == pids[0] and died["status"] == "signal SIGKILL" and died["level"] == "warning"
        wait_for_log_all(d, "serving process listening", 3)  # the first two, then the replacement
        digest = put_blob(d.addr, b"after the restart")
        for _ in range(50):
            stat_on_fresh_connection(d.target, digest)
        assert d.stop() == 0
        assert pids[0] not in access_pids(d)


def wait_for_log_all(d, event: str, count: int) -> list[dict]:
    """Wait until ``event`` was logged ``count`` times; return those events."""
    import time

    for _ in range(600):
        found = [e for e in d.events() if e.get("event") == event]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{event!r} not logged {count} times:\n" + "\n".join(d.stderr_lines()))


@pytest.mark.parametrize("second", ["1", "2"])
def test_port_in_use_fails_also_against_serving_processes(tmp_path, second):
    with start_daemon(tmp_path, "--processes", "2") as d:
        r = run_tvixd("daemon", "-l", d.target, "--processes", second,
                      env=tvixd_env(STATE_DIRECTORY=str(tmp_path / "other")))
        assert r.returncode == 1, r.stderr
        err = r.stderr.decode()
        assert f"cannot listen on {d.target}" in err.strip().splitlines()[-1] and "Traceback" not in err
        assert health_status(d.target) == 1  # the first one is unharmed
    # And the other way round: a multi-process daemon on a single-process daemon's port.
    with start_daemon(tmp_path / "single") as d:
        r = run_tvixd("daemon", "-l", d.target, "--processes", "2",
                      env=tvixd_env(STATE_DIRECTORY=str(tmp_path / "other2")))
        assert r.returncode == 1 and f"cannot listen on {d.target}" in r.stderr.decode(), r.stderr


def test_ephemeral_localhost_port_is_one_port_for_all(tmp_path):
    with start_daemon(tmp_path, "-l", "localhost:0", "--processes", "2") as d:
        listening = wait_for_log(d, "listening")
        ports = {a.rsplit(":", 1)[1] for a in listening["addresses"]}
        assert ports == {str(d.port)} and d.port != 0
        workers = [e for e in d.events() if e.get("event") == "serving process listening"]
        assert [w["addresses"] for w in workers] == [listening["addresses"]] * 2


@pytest.mark.parametrize("what", ["memory", "sqlite-in-memory", "unix", "metrics"])
def test_what_processes_cannot_share_is_refused(tmp_path, what):
    args = ["--processes", "2"]
    if what == "memory":
        args += MEMORY
        expected = "memory://"
    elif what == "sqlite-in-memory":
        args += ["--directory-service-addr", "sqlite://"]
        expected = "sqlite://"
    elif what == "unix":
        args += ["-l", f"unix:{tmp_path}/d.sock"]
        expected = "unix socket"
    else:
        args += ["-l", "127.0.0.1:0", "--metrics-listen-address", "127.0.0.1:0"]
        expected = "metrics"
    r = run_tvixd("daemon", *args, env=tvixd_env(STATE_DIRECTORY=str(tmp_path / "state")))
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1, err
    assert expected in err and "processes" in err, err


def test_processes_from_config_file_and_env(tmp_path):
    conf = tmp_path / "tvixd.toml"
    conf.write_text("[daemon]\nprocesses = 2\n")
    r = run_tvixd("--config", str(conf), "config", "show", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["values"]["daemon"]["processes"]["value"] == 2
    r = run_tvixd("config", "show", "--json", env=tvixd_env(TVIXD_DAEMON_PROCESSES="3"))
    assert json.loads(r.stdout)["values"]["daemon"]["processes"]["value"] == 3
    conf.write_text("[daemon]\nprocesses = 0\n")
    r = run_tvixd("--config", str(conf), "daemon")
    assert r.returncode == 2 and "processes" in r.stderr.decode()


def test_tls_in_every_serving_process(tmp_path):
    cert, key = make_tls_cert(tmp_path)
    with start_daemon(tmp_path, "--processes", "2", "--tls-cert", str(cert), "--tls-key", str(key)) as d:
        assert wait_for_log(d, "listening")["tls"] is True
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.ssl_target_name_override", "localhost")]
        for _ in range(200):
            with grpc.secure_channel(d.target, creds, options=options) as ch:
                with pytest.raises(grpc.RpcError) as e:
                    rpc_blobstore_pb2_grpc.BlobServiceStub(ch).Stat(StatBlobRequest(digest=bytes(32)))
                assert e.value.code() == grpc.StatusCode.NOT_FOUND
            if len(access_pids(d)) >= 2:
                break
        assert len(access_pids(d)) >= 2


def test_proxy_backends_in_serving_processes(tmp_path):
    """grpc+ backends are opened by each serving process (the parent never imports grpc)."""
    with start_daemon(tmp_path / "origin") as origin:
        remote = ("--blob-service-addr", origin.addr, "--directory-service-addr", origin.addr,
                  "--path-info-service-addr", origin.addr)
        with start_daemon(tmp_path / "proxy", "--processes", "2", *remote) as proxy:
            digest = put_blob(proxy.addr, b"through the proxy's processes")
            for _ in range(20):
                stat_on_fresh_connection(proxy.target, digest)
            stat_on_fresh_connection(origin.target, digest)
            assert proxy.stop() == 0
