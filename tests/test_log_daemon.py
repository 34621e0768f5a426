"""A real daemon subprocess: JSON-only stderr, one access-log line per RPC, metrics scraped over HTTP."""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime
from pathlib import Path

import blake3
import grpc
import pytest

from tests.daemon import start_daemon
from tests.fixtures import DIRECTORY_A, DIRECTORY_B
from tests.test_log_metrics import sample, scrape
from tvixd.proto import rpc_blobstore_pb2 as pb
from tvixd.proto.rpc_blobstore_pb2_grpc import BlobServiceStub
from tvixd.proto.rpc_directory_pb2_grpc import DirectoryServiceStub


def store_args() -> list[str]:
    """The embedded store once the SQLite backends exist; until then memory directories/path infos."""
    if importlib.util.find_spec("tvixd.directoryservice.sqlite") is None:
        return ["--directory-service-addr", "memory://", "--path-info-service-addr", "memory://"]
    return []


def test_stderr_is_json_lines_with_one_access_line_per_rpc(tmp_path: Path):
    blob = b"some bytes " * 1000
    digest = blake3.blake3(blob).digest()
    with start_daemon(tmp_path, "--metrics-listen-address", "127.0.0.1:0", *store_args(),
                      env={"TVIXD_METRICS_STORE_STATS_INTERVAL": "0"}) as daemon:
        with grpc.insecure_channel(daemon.target) as channel:
            stub = BlobServiceStub(channel)
            put = stub.Put(iter([pb.BlobChunk(data=blob)]), metadata=[("x-request-id", "test-put-1")])
            assert put.digest == digest
            stub.Stat(pb.StatBlobRequest(digest=digest))
            with pytest.raises(grpc.RpcError):
                stub.Stat(pb.StatBlobRequest(digest=b"\0" * 32))
            chunks = list(stub.Read(pb.ReadBlobRequest(digest=digest)))
            DirectoryServiceStub(channel).Put(iter([DIRECTORY_A, DIRECTORY_B]))
        metrics_at = next(e["address"] for e in daemon.events() if e["event"] == "metrics listening")
        scraped = scrape(metrics_at)
        rc = daemon.stop()
        assert rc == 0
        assert daemon.proc.stdout is None  # start_daemon sends stdout to /dev/null; check the content below
        lines = daemon.stderr_lines()

    events = [json.loads(line) for line in lines]  # every single line is JSON
    for e in events:
        assert {"timestamp", "level", "event", "logger"} <= e.keys(), e
        assert datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    rpcs = [e for e in events if e["event"] == "rpc"]
    tvix = [e for e in rpcs if e["method"].startswith("/tvix.store.v1.BlobService/")]
    (dir_put,) = [e for e in rpcs if e["method"] == "/tvix.store.v1.DirectoryService/Put"]
    assert dir_put["code"] == "OK" and dir_put["messages_in"] == 2
    assert [(e["method"].rsplit("/", 1)[1], e["code"]) for e in tvix] == [
        ("Put", "OK"), ("Stat", "OK"), ("Stat", "NOT_FOUND"), ("Read", "OK")]
    put_line, stat_line, _missing, read_line = tvix
    assert put_line["request_id"] == "test-put-1" and put_line["logger"] == "tvixd.access"
    assert put_line["bytes_in"] == pb.BlobChunk(data=blob).ByteSize() and put_line["bytes_out"] == 34
    assert read_line["bytes_out"] == sum(c.ByteSize() for c in chunks)
    assert stat_line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:")) and stat_line["duration_ms"] >= 0
    assert len({e["request_id"] for e in tvix}) == 4
    assert [e["event"] for e in events if e["logger"] == "tvixd.daemon"][-1] == "stopped"

    svc = {"grpc_service": "tvix.store.v1.BlobService"}
    assert sample(scraped, "grpc_server_handled_total", **svc, grpc_method="Stat", grpc_code="NOT_FOUND") == 1
    assert sample(scraped, "grpc_server_handled_total", **svc, grpc_method="Put", grpc_code="OK") == 1
    assert sample(scraped, "tvixd_grpc_server_received_bytes_total", **svc, grpc_method="Put") == put_line["bytes_in"]
    assert sample(scraped, "tvixd_grpc_server_sent_bytes_total", **svc, grpc_method="Read") == read_line["bytes_out"]
    assert sample(scraped, "grpc_server_handling_seconds_count", **svc, grpc_method="Read") == 1
    assert sample(scraped, "tvixd_store_blobs") == 1 and sample(scraped, "tvixd_store_blob_bytes") == len(blob)
    assert sample(scraped, "tvixd_store_directories") == 2 and sample(scraped, "tvixd_store_path_infos") == 0


def test_nothing_on_stdout(tmp_path: Path):
    """The daemon's stdout stays empty from start to stop (start_daemon discards it, so run it here)."""
    import signal
    import subprocess
    import sys

    from tests.conftest import tvixd_env

    env = tvixd_env(STATE_DIRECTORY=str(tmp_path / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "tvixd", "daemon", "-l", "127.0.0.1:0", *store_args()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    for raw in proc.stderr:  # auto format, not a terminal: JSON
        if json.loads(raw)["event"] == "listening":
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == b"", (proc.returncode, out, err)
    assert all(json.loads(line) for line in err.splitlines())


def test_access_log_can_be_turned_off(tmp_path: Path):
    with start_daemon(tmp_path, *store_args(), env={"TVIXD_LOG_ACCESS_LOG": "false"}) as daemon:
        with grpc.insecure_channel(daemon.target) as channel:
            with pytest.raises(grpc.RpcError):
                BlobServiceStub(channel).Stat(pb.StatBlobRequest(digest=b"\0" * 32))
        daemon.stop()
        assert not [e for e in daemon.events() if e["event"] == "rpc"]
        assert all(json.loads(line) for line in daemon.stderr_lines())
