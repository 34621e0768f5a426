"""Generated protobuf and gRPC modules of package tvix.store.v1 (see protos/generate.py)."""
