"""tvixd: a content-addressed Nix store daemon, a Python implementation of tvix-store."""

__version__ = "0.1.0"
