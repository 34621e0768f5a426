"""``tvixd binary-cache``: the store as a Nix HTTP binary cache (the tvix ecosystem's nar-bridge).

- :mod:`tvixd.binary_cache.ingest` turns an uploaded NAR into blobs and directories;
- :mod:`tvixd.binary_cache.render` streams a stored path back as a NAR (with Range support);
- :mod:`tvixd.binary_cache.narinfo` parses and writes ``.narinfo`` files and signs them;
- :mod:`tvixd.binary_cache.app` is the WSGI application;
- :mod:`tvixd.binary_cache.server` runs it under gevent's pywsgi.
"""
