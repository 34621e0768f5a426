"""The ``tvixd`` command line: one module per group of subcommands.

Start-up time matters for short imports, so this module imports nothing
heavy: each subcommand module's ``register`` only declares arguments, and its
``run`` imports what it needs.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import os
import sys

from tvixd import __version__

# Each module defines ``register(subparsers) -> None``; the parser it adds sets
# ``func`` (called with the parsed args, returns the exit status).
COMMAND_MODULES = (
    "daemon_cmd",
    "import_cmd",
    "read_cmds",
    "mount_cmd",
    "binary_cache_cmd",
    "config_cmd",
)

COMMANDS = {
    "daemon": "daemon_cmd",
    "import": "import_cmd",
    "dump-path": "read_cmds",
    "path-info": "read_cmds",
    "ls": "read_cmds",
    "cat": "read_cmds",
    "mount": "mount_cmd",
    "binary-cache": "binary_cache_cmd",
    "config": "config_cmd",
}
"""Subcommand -> the module that registers it (a test checks it against what the modules register)."""

_GLOBAL_OPTIONS_WITH_VALUE = ("--log-level", "--log-format", "--config")


def command_module(argv: list[str]) -> str | None:
    """The module of the subcommand ``argv`` names, or None (no subcommand, ``--help``, a typo).

    Why: declaring every subcommand's arguments imports all command modules and builds a
    dozen parsers, ~50 ms of a ``tvixd path-info`` that takes ~0.2 s; a one-shot command
    only needs its own. Anything unusual gets the full parser (and its messages).
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("--") and arg.split("=", 1)[0] in _GLOBAL_OPTIONS_WITH_VALUE:
            i += 1
            continue
        if arg.startswith("-"):
            return None  # --help, --version, or something the full parser should judge
        return COMMANDS.get(arg)
    return None


@functools.cache
def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: ``$COLUMNS``, else the width of stdout's terminal, else 80.

    Cached: argparse makes a formatter for every ``add_argument``, and the lookups (a KeyError
    from ``os.environ`` without ``$COLUMNS``, an ioctl) were ~1.5 ms of a command's start-up.
    """
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, the terminal width found without ``import shutil``.

    Why: argparse builds a formatter for every ``add_argument`` (to check the metavar), and the
    first one imports shutil for its width, with bz2, lzma, fnmatch and zlib: ~3 ms of every
    command's start-up, for a width only ``--help`` uses.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, _terminal_columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser formatting with :class:`_HelpFormatter`; subcommand parsers are of its class too."""

    def __init__(self, *args: object, formatter_class: type = _HelpFormatter, **kwargs: object) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)  # type: ignore[arg-type,misc]


def _untranslated_argparse() -> None:
    """Let argparse's own messages ("usage:", "show this help message and exit") skip gettext.

    Why: argparse passes each of them through ``gettext.gettext``, which searches the disk for
    message catalogues on every call (20-30 calls for one command's parser: 4-6 ms of start-up).
    Python ships no catalogues for them, and tvixd's own help is English, so nothing changes.
    """
    argparse._ = str  # type: ignore[attr-defined]
    argparse.ngettext = lambda singular, plural, n: singular if n == 1 else plural  # type: ignore[attr-defined]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand, or only those of module ``only`` (see :func:`command_module`)."""
    parser = _Parser(prog="tvixd", description="A content-addressed Nix store daemon.")
    parser.add_argument("--version", action="version", version=f"tvixd {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        help="error, warning, info (default) or debug",
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "console", "auto"],
        default=None,
        help="json lines, human-readable console, or auto (console on a terminal; the default)",
    )
    parser.add_argument("--config", metavar="FILE", default=None, help="TOML configuration file")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES if only is None else (only,):
        if importlib.util.find_spec(f"tvixd.cli.{name}") is None:
            continue
        importlib.import_module(f"tvixd.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tvixd`` console script."""
    import gc

    # Start-up creates tens of thousands of objects that live as long as the process (modules, classes,
    # functions, the parser, the configuration); the collector would scan them again and again while they
    # are made (~2.5% of the instructions of `dump-path` of /usr/lib/python3 or of a one-file import).
    # Frozen afterwards, later collections (a daemon's) skip them.
    gc.disable()
    from tvixd.errors import TvixError

    if argv is None:
        argv = sys.argv[1:]
    _untranslated_argparse()
    args = build_parser(command_module(argv)).parse_args(argv)
    from tvixd import config, log

    # The resolved configuration (flag > env > file > default) for every subcommand: ``args.cfg``.
    # ``tvixd config`` resolves it itself (it may be asked about another file).
    if getattr(args, "resolve_config", True):
        try:
            args.cfg = config.load(args)
        except config.ConfigError as e:
            print(f"tvixd: error: {e}", file=sys.stderr)
            sys.exit(2)
        log.configure(level=args.cfg.log.level, fmt=args.cfg.log.format)
    else:
        log.configure(level=args.log_level, fmt=args.log_format)
    gc.freeze()
    gc.enable()
    try:
        status = args.func(args)
    except TvixError as e:
        print(f"tvixd {args.command}: error: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        # stdout went away (e.g. `| head`): not an error worth a traceback; keep exit from flushing it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 141
    except OSError as e:  # after BrokenPipeError, its subclass
        # The environment said no (permissions, a file in the way, a full disk): one line, no traceback.
        where = f" {e.filename}" if e.filename else ""
        print(f"tvixd {args.command}: error:{where}: {e.strerror or e}", file=sys.stderr)
        status = 1
    sys.exit(status or 0)
