"""Mounting and serving :class:`tvixd.fuse.fs.StoreFS`, with a clean unmount on SIGTERM/SIGINT.

A FUSE process that dies without unmounting leaves a *stale* mount: every
access to the mount point fails with ENOTCONN ("Transport endpoint is not
connected") until someone runs ``fusermount3 -u``. So: SIGTERM/SIGINT only set a
flag the main thread watches, the unmount always runs; and a stale mount found at
start-up is reported with the fix instead of a confusing failure.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import structlog

from tvixd.sdnotify import notify as sd_notify
from tvixd.store import Store

log = structlog.get_logger("tvixd.fuse")


class MountError(Exception):
    """The mount point is unusable; the message is one line saying why and what to do."""


def check_mountpoint(dest: Path) -> None:
    """Raise :class:`MountError` unless ``dest`` is an existing directory we can mount on.

    ``statvfs`` is asked too because the kernel may answer ``stat`` of a dead FUSE mount's root from
    its attribute cache; ``statfs`` always goes to the (missing) process and fails with ENOTCONN.
    """
    try:
        st = os.stat(dest)
        os.statvfs(dest)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(
                f"{dest} is a stale FUSE mount (its process died without unmounting: {e.strerror}); "
                f"run `fusermount3 -u {dest}` and try again"
            ) from None
        raise MountError(f"{dest}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"{dest} is not a directory")


THREADS = 8
"""Worker threads: a request that may block (a store fetch, a blob verification at open) holds one of them."""

STOP_POLL = 0.2
"""Seconds between looks at the signal flag while serving."""

STOP_GRACE = 5.0
"""Seconds to wait after unmounting for the connection to end before exiting anyway (the exit ends it)."""

GC_THRESHOLD = 20_000
"""Container allocations between the garbage collector's youngest-generation passes (Python's default: 700).

A first listing allocates an inode, a child tuple and a listing per entry, nearly none of them
garbage: a fresh mount's `find` of /usr/share/doc ran 26 collections (3 ms) with the default, none
with this. Cyclic garbage is rare here (the mount's objects are trees and tables), so it only waits longer."""

KERNEL_READ_AHEAD_KIB = 1024
"""The mount's kernel read-ahead window (the default is 128 KiB): the kernel then sends 1 MiB read
requests instead of 256 KiB ones, about a third less CPU per byte in tvixd (see BENCHMARKS.md, fuse)."""


def set_kernel_read_ahead(device: int, kib: int = KERNEL_READ_AHEAD_KIB) -> None:
    """Widen the read-ahead of the FUSE mount's own backing ``device`` (its st_dev); best effort, needs root.

    Call it after FUSE INIT, which lowers the read-ahead to what INIT negotiated.
    """
    name = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open(f"/sys/class/bdi/{name}/read_ahead_kb", "w") as f:
            f.write(str(kib))
    except OSError as e:
        log.debug("could not set the kernel read-ahead", device=name, error=str(e))


def serve(
    store: Store,
    dest: Path,
    *,
    list_root: bool = False,
    allow_other: bool = False,
    show_xattr: bool = False,
    on_ready: Callable[[], None] | None = None,
    threads: int = THREADS,
) -> None:
    """Mount ``store`` at ``dest`` and serve it until SIGTERM/SIGINT or an external unmount.

    Always unmounts before returning (unless someone else already did). Signals only set a flag
    (no exception halfway through a handler); the main thread polls it and the session's end.
    """
    from tvixd.fuse import kernel
    from tvixd.fuse.fs import StoreFS

    check_mountpoint(dest)
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    ops = StoreFS(store, list_root=list_root, show_xattr=show_xattr)
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    # From here on SIGTERM must not kill us outright: that would leave a stale mount.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        fd = kernel.mount(str(dest), allow_other=allow_other)
    except (kernel.MountFailed, OSError) as e:
        raise MountError(f"mounting at {dest} failed ({e}); is /dev/fuse usable and fusermount3 installed?") from None
    session = kernel.Session(fd, ops.handlers(), threads=threads, may_block=ops.may_block)
    ops.session = session
    try:
        session.start()
        # A stat through the mount returns once the kernel has finished FUSE INIT with us, which
        # clamps the read-ahead; only then can it be widened, and only then are we really ready.
        try:
            st = os.stat(dest)
        except OSError as e:  # e.g. unmounted from outside before INIT finished
            raise MountError(f"{dest}: the new mount is not usable ({e.strerror})") from None
        set_kernel_read_ahead(st.st_dev)
        log.info("mounted", dest=str(dest), list_root=list_root, show_xattr=show_xattr,
                 passthrough=session.passthrough)  # fmt: skip
        sd_notify("READY=1")
        if on_ready is not None:
            on_ready()
        while not received and not session.ended.wait(STOP_POLL):
            pass
        if received:
            log.info("unmounting", dest=str(dest), signal=signal.Signals(received[0]).name)
            sd_notify("STOPPING=1")
        else:
            # The request threads end by themselves when the filesystem is unmounted from outside.
            log.info("unmounted from outside", dest=str(dest))
    finally:
        kernel.unmount(str(dest))
        # Once unmounted (and no file is open on it any more) the kernel ends the connection.
        if session.ended.wait(STOP_GRACE):
            os.close(fd)
    log.info("stopped", dest=str(dest))
