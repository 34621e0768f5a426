"""The gRPC side of tvixd: servicers, the status-code table, the server builder, client channels.

- ``status``: the one table mapping :mod:`tvixd.errors` classes to gRPC status codes (and back).
- ``servicers``: thin BlobService / DirectoryService / PathInfoService servicers over a Store.
- ``server``: ``build_server`` (listeners, TLS, reflection, health, message-size limits).
- ``channel``: ``grpc+http://``, ``grpc+https://``, ``grpc+unix://`` URLs to shared lazy channels,
  used by the client backends in ``tvixd/*service/grpc.py``.

Importing this package is cheap; the submodules import grpc.
"""
