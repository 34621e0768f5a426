"""``tvixd mount DEST``: the store as a read-only FUSE filesystem (SPEC Part B §8, Part A §10)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tvixd.cli.common import add_store_args
from tvixd.store import StoreAddrs


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``tvixd mount``."""
    p = subparsers.add_parser(
        "mount",
        help="mount the store read-only with FUSE (the mount point shows /nix/store)",
        description="Mount the store read-only at DEST; DEST's children are store path basenames. "
        "SIGTERM or SIGINT unmounts and exits 0.",
    )
    p.add_argument("dest", metavar="DEST", type=Path, help="an existing, empty directory to mount on")
    p.add_argument(
        "--list-root",
        action="store_true",
        help="allow listing DEST (every store path); without it listing DEST fails with EPERM, as in tvix-store",
    )
    p.add_argument("--allow-other", action="store_true", help="let other users access the mount (FUSE allow_other)")
    p.add_argument(
        "--show-xattr",
        action="store_true",
        help="expose blake3 digests as extended attributes user.tvix.castore.{blob,directory}.digest",
    )
    add_store_args(p, StoreAddrs.daemon())
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Mount, serve until a signal or an external unmount, unmount; 0 on a clean stop."""
    from tvixd.cli.common import open_store
    from tvixd.fuse.mount import MountError, check_mountpoint, serve

    # Flag > env (TVIXD_MOUNT_*) > [mount] in the config file > default, resolved by tvixd.config.
    cfg = args.cfg.mount if getattr(args, "cfg", None) is not None else args
    dest = args.dest.absolute()
    try:
        check_mountpoint(dest)
    except MountError as e:
        print(f"tvixd mount: error: {e}", file=sys.stderr)
        return 1
    with open_store(args) as store:
        try:
            serve(store, dest, list_root=cfg.list_root, allow_other=cfg.allow_other, show_xattr=cfg.show_xattr)
        except MountError as e:
            print(f"tvixd mount: error: {e}", file=sys.stderr)
            return 1
    return 0
