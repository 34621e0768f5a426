"""The store as a read-only FUSE filesystem (``tvixd mount``; SPEC Part B §8, Part A §10).

``inodes`` holds the pure inode bookkeeping (no FUSE import, testable anywhere);
``fs`` holds the pyfuse3 operations; ``tvixd.cli.mount_cmd`` mounts it.
"""
