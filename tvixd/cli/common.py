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
    """The effective addresses: flag, else environment variable, else config file, else the command's default.

    ``args.cfg`` (the resolved :class:`tvixd.config.Config`, set by ``tvixd.cli.main``) already
    applies flag > env > file; without it (a namespace built by hand) flags and env vars are read here.
    The embedded default creates the state directory (0700) and fails in one line if it is unusable.
    """
    cfg = getattr(args, "cfg", None)
    values = {}
    for attr, _flag, env in ADDR_FLAGS:
        if cfg is not None:
            values[attr] = getattr(cfg.store, f"{attr}_service_addr")
        else:
            values[attr] = getattr(args, f"{attr}_service_addr", None) or os.environ.get(env)
    if all(values.values()):
        return StoreAddrs(**values)
    defaults = getattr(args, "store_defaults", None)
    if defaults is None:
        from tvixd.store import default_state_dir, ensure_state_dir

        state = cfg.store.state_dir if cfg is not None and cfg.store.state_dir else None
        defaults = StoreAddrs.embedded(ensure_state_dir(state or default_state_dir()))
    return StoreAddrs(**{attr: values[attr] or getattr(defaults, attr) for attr in values})


def open_store(args: argparse.Namespace) -> Store:
    """Open the store the arguments point at."""
    return Store.open(store_addrs(args))
