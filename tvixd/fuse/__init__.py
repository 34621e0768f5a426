"""The store as a read-only FUSE filesystem (``tvixd mount``; SPEC Part B §8, Part A §10).

``inodes`` holds the pure inode bookkeeping (no FUSE import, testable anywhere);
``kernel`` speaks the FUSE protocol on /dev/fuse; ``fs`` holds the operations;
``mount`` serves them; ``tvixd.cli.mount_cmd`` is the command.
"""
