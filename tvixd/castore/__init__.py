"""The content-addressed store model: pure, I/O-free code.

Digests, nixbase32, store paths, Directory validation and digests, the NAR
writer. Nothing in this package touches the disk, the network or gRPC, so all
of it is tested exhaustively with the SPEC's vectors.
"""
