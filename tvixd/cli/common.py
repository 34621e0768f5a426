"""Arguments and helpers shared by the subcommands that talk to a store."""

from __future__ import annotations

import argparse
import os

from tvixd.store import Store, StoreAddrs

ADDR_FLAGS = (
    ("blob", "--blob-service-addr", "BLOB_SERVICE_ADDR"),
    ("directory", "--directory-service-addr", "DIRECTORY_SERVICE_ADDR"),
    ("path_info", "--path-info-service-addr", "PATH_INFO_SERVICE_ADDR"),
)


def add_store_args(parser: argparse.ArgumentParser, defaults: StoreAddrs | None) -> None:
    """Add the three ``--*-service-addr`` flags (each also read from its env var).

    ``defaults`` is what is used when neither flag nor env var is given; ``None``
    means "the daemon's embedded store" and is resolved at run time (it needs the
    state directory).
    """
    for attr, flag, env in ADDR_FLAGS:
        parser.add_argument(
            flag,
            dest=f"{attr}_service_addr",
            metavar="URL",
            default=None,
            help=f"{attr.replace('_', ' ')} service address (env {env}; "
            f"default {getattr(defaults, attr) if defaults else 'the embedded store'})",
        )
    parser.set_defaults(store_defaults=defaults)


def store_addrs(args: argparse.Namespace) -> StoreAddrs:
    """The effective addresses: flag, else environment variable, else the command's default."""
    defaults = args.store_defaults
    if defaults is None:
        from tvixd.store import default_state_dir

        defaults = StoreAddrs.embedded(default_state_dir())
    values = {}
    for attr, _flag, env in ADDR_FLAGS:
        values[attr] = getattr(args, f"{attr}_service_addr") or os.environ.get(env) or getattr(defaults, attr)
    return StoreAddrs(**values)


def open_store(args: argparse.Namespace) -> Store:
    """Open the store the arguments point at."""
    return Store.open(store_addrs(args))
