"""``tvixd config check`` and ``tvixd config show``: validate and explain the configuration."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``tvixd config {check,show}``."""
    parser = subparsers.add_parser(
        "config",
        help="check or show the configuration",
        description="Validate the configuration file, or show every effective value and where it came from "
        "(flag, environment variable, file:line, or default).",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a configuration file; exit 0 if it is usable")
    check.add_argument("file", nargs="?", default=None,
                       help="file to check (default: --config, $TVIXD_CONFIG, /etc/tvixd/tvixd.toml)")
    show = sub.add_parser("show", help="print the effective configuration with the source of each value")
    show.add_argument("file", nargs="?", default=None, help="file to read instead of the usual lookup")
    show.add_argument("--json", action="store_true", help="print JSON instead of commented TOML")
    parser.set_defaults(func=run, resolve_config=False)


def run(args: argparse.Namespace) -> int:
    """Load the configuration like every other command would, then report on it."""
    import json

    from tvixd import config

    try:
        cfg = config.load(args, path=args.file or None)
    except config.ConfigError as e:
        print(f"tvixd config {args.config_command}: error: {e}", file=sys.stderr)
        return 1
    if args.config_command == "check":
        where = f"{cfg.file}" if cfg.file else "no configuration file, built-in defaults"
        print(f"{where}: ok")
        return 0
    if args.json:
        json.dump(cfg.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(config.render(cfg))
    return 0
