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
