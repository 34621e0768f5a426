"""The checked-in generated code matches the .proto files, and carries the reference's names."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_generated_code_is_fresh(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "protos" / "generate.py"), "--check-into", str(tmp_path)],
        check=True,
    )
    checked_in = REPO_ROOT / "tvixd" / "proto"
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in checked_in.iterdir() if p.name != "__init__.py" and p.is_file())
    for name in fresh:
        assert (tmp_path / name).read_text() == (checked_in / name).read_text(), (
            f"tvixd/proto/{name} is stale: run python protos/generate.py"
        )


def test_descriptor_names_match_the_reference():
    from tvixd.proto import (
        castore_pb2,
        pathinfo_pb2,
        rpc_blobstore_pb2,
        rpc_directory_pb2,
        rpc_pathinfo_pb2,
    )

    assert castore_pb2.DESCRIPTOR.name == "tvix/store/protos/castore.proto"
    assert pathinfo_pb2.DESCRIPTOR.name == "tvix/store/protos/pathinfo.proto"
    assert rpc_blobstore_pb2.DESCRIPTOR.name == "tvix/store/protos/rpc_blobstore.proto"
    assert rpc_directory_pb2.DESCRIPTOR.name == "tvix/store/protos/rpc_directory.proto"
    assert rpc_pathinfo_pb2.DESCRIPTOR.name == "tvix/store/protos/rpc_pathinfo.proto"
    assert pathinfo_pb2.DESCRIPTOR.package == "tvix.store.v1"
    services = {
        s.full_name: [m.name for m in s.methods]
        for mod in (rpc_blobstore_pb2, rpc_directory_pb2, rpc_pathinfo_pb2)
        for s in mod.DESCRIPTOR.services_by_name.values()
    }
    assert services == {
        "tvix.store.v1.BlobService": ["Stat", "Read", "Put"],
        "tvix.store.v1.DirectoryService": ["Get", "Put"],
        "tvix.store.v1.PathInfoService": ["Get", "Put", "CalculateNAR", "List"],
    }
    assert rpc_pathinfo_pb2.DESCRIPTOR.services_by_name["PathInfoService"].methods_by_name[
        "CalculateNAR"
    ].input_type.full_name == "tvix.store.v1.Node"


def test_tvixd_extension_lives_in_its_own_package():
    """tvixd's batch upload service is ours: package tvixd.v1, not a change to tvix.store.v1."""
    from tvixd.proto import blob_batch_pb2, rpc_blobstore_pb2

    assert blob_batch_pb2.DESCRIPTOR.name == "tvixd/v1/blob_batch.proto"
    assert blob_batch_pb2.DESCRIPTOR.package == "tvixd.v1"
    assert list(blob_batch_pb2.DESCRIPTOR.dependencies) == []
    service = blob_batch_pb2.DESCRIPTOR.services_by_name["BlobBatchService"]
    assert [(m.name, m.client_streaming, m.server_streaming) for m in service.methods] == [("PutBlobs", True, False)]
    assert service.methods_by_name["PutBlobs"].input_type.full_name == "tvixd.v1.PutBlobsRequest"
    assert service.methods_by_name["PutBlobs"].output_type.full_name == "tvixd.v1.PutBlobsResponse"
    # A non-empty encoded BlobChunk is exactly one PutBlobsRequest.blobs entry (the client relies on it).
    chunk = rpc_blobstore_pb2.BlobChunk(data=b"abc").SerializeToString()
    assert blob_batch_pb2.PutBlobsRequest.FromString(chunk * 2).blobs == [b"abc", b"abc"]
