"""Generated protobuf and gRPC code of tvix.store.v1 and tvixd.v1 (see protos/generate.py)."""
