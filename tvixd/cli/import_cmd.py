"""``tvixd import PATH...``: add filesystem paths to the store as Nix's ``--add-fixed --recursive sha256``."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from tvixd.cli.common import add_store_args
from tvixd.store import StoreAddrs

PROGRESS_DELAY = 0.5
"""Seconds an import must run before the progress line appears (small imports stay quiet)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare the ``import`` subcommand."""
    p = subparsers.add_parser(
        "import",
        help="import paths into the store; print their store paths",
        description="Import each PATH (file, directory or symlink; symlinks are not followed) and print "
        "its absolute store path, the one `nix-store --add-fixed --recursive sha256 PATH` gives. "
        "A path that fails is reported on stderr; the others still complete; the exit status is 1 "
        "if any failed.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="paths to import")
    p.add_argument("--json", action="store_true", help="print one JSON object per path (path, narHash, narSize)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="blob writer threads (default 0: the walking thread writes each blob; threads pay only where "
        "creating a file blocks for long). Uploads to a daemon (grpc+ addresses) are pipelined from the "
        "walking thread instead",
    )
    add_store_args(p, StoreAddrs.daemon())
    p.set_defaults(func=run)


class ProgressLine:
    """A one-line progress display on a terminal: files and bytes done, percent once totals are known.

    Totals come from a quick ``lstat`` walk in a background thread, so the import does not
    wait for them. Nothing is shown for imports shorter than :data:`PROGRESS_DELAY`.
    """

    def __init__(self, path: str, stream: object) -> None:
        self.path = path
        self.stream = stream
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        delay = os.environ.get("TVIXD_PROGRESS_DELAY")
        self.delay = float(delay) if delay else PROGRESS_DELAY
        threading.Thread(target=self._count, daemon=True).start()

    def _count(self) -> None:
        files = size = 0
        try:
            if not os.path.isdir(self.path) or os.path.islink(self.path):
                st = os.lstat(self.path)
                self.total_files, self.total_bytes = 1, st.st_size
                return
            for dirpath, _dirs, names in os.walk(self.path):
                for name in names:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    if st.st_mode & 0o170000 == 0o100000:  # regular files only: what progress counts
                        files += 1
                        size += st.st_size
        except OSError:
            return
        self.total_files, self.total_bytes = files, size

    def __call__(self, files: int, nbytes: int) -> None:
        now = time.monotonic()
        if now - self.start < self.delay or now - self.last < 0.1:
            return
        self.last = now
        self.shown = True
        mib = nbytes / (1 << 20)
        rate = mib / max(now - self.start, 1e-6)
        text = f"{files} files, {mib:.1f} MiB, {rate:.1f} MiB/s"
        if self.total_bytes is not None and self.total_files is not None:
            frac = min(1.0, (nbytes / self.total_bytes) if self.total_bytes else files / max(self.total_files, 1))
            bar = "#" * int(frac * 24)
            text = f"[{bar:<24}] {frac * 100:3.0f}% {files}/{self.total_files} files, {mib:.1f} MiB, {rate:.1f} MiB/s"
        self.stream.write(f"\r\x1b[2Kimporting {self.path}: {text}")  # type: ignore[attr-defined]
        self.stream.flush()  # type: ignore[attr-defined]

    def finish(self) -> None:
        """Clear the line (the store path goes to stdout, not here)."""
        if self.shown:
            self.stream.write("\r\x1b[2K")  # type: ignore[attr-defined]
            self.stream.flush()  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> int:
    """Import each path; print store paths on stdout and per-path errors on stderr."""
    from tvixd.castore import nixbase32
    from tvixd.cli.common import open_store
    from tvixd.errors import TvixError
    from tvixd.importer import DEFAULT_WORKERS, IngestError, import_path, show_path
    from tvixd.log import get_logger

    logger = get_logger("tvixd.import")  # imports structlog only if a line is logged (start-up time)
    _collect_garbage_less_often()
    failed = 0
    with open_store(args) as store:
        for path in args.paths:
            progress = ProgressLine(path, sys.stderr) if sys.stderr.isatty() else None
            try:
                result = import_path(
                    store, path, workers=DEFAULT_WORKERS if args.workers is None else args.workers, progress=progress
                )
            except TvixError as e:
                failed += 1
                message = str(e) if isinstance(e, IngestError) else f"{show_path(path)}: {e}"
                _error(progress, message)
                continue
            except Exception as e:  # never a traceback from the CLI; details at debug level
                failed += 1
                logger.debug("import failed", path=show_path(path), exc_info=True)
                _error(progress, f"{show_path(path)}: internal error: {type(e).__name__}: {e}")
                continue
            if progress is not None:
                progress.finish()
            absolute = result.store_path.absolute()
            logger.debug("import successful", path=show_path(path), store_path=absolute, nar_size=result.nar_size)
            if args.json:
                import json  # only here: ~2 ms of every other import's start-up

                line = json.dumps(
                    {
                        "path": absolute,
                        "narHash": "sha256:" + nixbase32.encode(result.nar_sha256),
                        "narSize": result.nar_size,
                    }
                )
            else:
                line = absolute
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    return 1 if failed else 0


GC_GEN0_THRESHOLD = 20_000
"""Container allocations between young-generation collections during an import (Python's default: 700)."""


def _collect_garbage_less_often() -> None:
    """Let the collector run about 30x less often while this process imports.

    Every file allocates short-lived containers (gRPC call state, futures, protobuf
    messages) that die by reference counting, so at the default threshold the
    collector runs every few files and rescans what survives (pending directories,
    the store's objects); the start-up objects are frozen already (``tvixd.cli.main``).
    Through a daemon, /usr/share/doc: client CPU 3.47 -> 3.20 s (mean of 6 alternated
    runs, load 13-15). Cycles are still collected, only later.
    """
    import gc

    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def _error(progress: ProgressLine | None, message: str) -> None:
    if progress is not None:
        progress.finish()
    print(f"tvixd import: error: {message}", file=sys.stderr, flush=True)
