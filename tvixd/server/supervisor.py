"""``tvixd daemon --processes N``: a supervising parent and N serving processes sharing the ports.

Why: grpcio's Python server runs every call's Python code under one GIL, which caps one process at
about 2,000 small unary calls/s on the benchmark machine however many cores it has. N processes
binding the same TCP addresses with SO_REUSEPORT let the kernel spread the connections over N
GILs (a connection, and so a client's channel, stays with one process).

How, in order:

1. The parent stays free of grpc (grpc is not fork-safe once initialised) and of the store.
   It refuses what cannot be shared by processes: ``unix:`` listen addresses, ``memory://`` (and
   in-memory ``sqlite://``) backends, and the metrics endpoint (each process would report only its
   own calls; run metrics with ``processes = 1``).
2. It probes every TCP address with a plain bind (no SO_REUSEPORT), so an address anything already
   listens on fails with the usual "cannot listen on" error instead of being shared silently, and
   it fixes port 0 to one free port that all serving processes then bind.
3. It forks the serving processes; each opens the store, builds the full server (the services,
   health, reflection, TLS) with SO_REUSEPORT, and reports on a pipe once it listens. The parent
   logs "listening" and sends systemd READY=1 only when all of them do (only the parent notifies,
   so ``NotifyAccess=main`` fits).
4. SIGTERM/SIGINT to the parent is forwarded (SIGTERM) to every serving process: each drains
   within ``shutdown_grace`` and exits 0; the parent exits 0 once all did, non-zero if one failed.
5. A serving process that dies unexpectedly (a crash, ``kill -9``) is logged with its exit status
   and restarted on the same index; its connections are lost, the other processes keep serving.
   One that fails while starting stops the whole daemon with status 1 (its error is in the log):
   retrying a broken configuration would only loop.

Serving processes get SIGTERM if the parent dies (PR_SET_PDEATHSIG), so none outlives it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tvixd import errors

if TYPE_CHECKING:
    from tvixd.config import Config
    from tvixd.store import StoreAddrs

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1


def shared_store_problem(addrs: StoreAddrs) -> str | None:
    """Why ``addrs`` cannot be shared by several processes, or None."""
    for service in ("blob", "directory", "path_info"):
        addr = getattr(addrs, service)
        url = urlsplit(addr)
        if url.scheme == "memory" or (url.scheme == "sqlite" and url.path in ("", "/")):
            return (f"{service}_service_addr {addr!r} lives in one process's memory, so several serving "
                    "processes would each have their own store; use fs:// + sqlite:///file (or grpc+) "
                    "backends, or daemon.processes = 1 (--processes 1)")
    return None


@dataclass
class _Worker:
    """One serving process as the parent sees it."""

    index: int
    pid: int
    ready_fd: int  # read end of the pipe it writes b"R" to once it listens; -1 once read or closed
    ready: bool = False


def _child_main(serve: Callable[..., int], args: argparse.Namespace, cfg: Config, addresses: list[str],
                index: int, ready_w: int, parent: int) -> None:
    """Run one serving process after fork; never returns."""
    status = 1
    try:
        signal.set_wakeup_fd(-1)  # the parent's wake-up pipe is not ours
        for signum in (*_STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)  # still blocked: serve() installs handlers, then unblocks
        os.environ.pop("NOTIFY_SOCKET", None)  # only the parent talks to systemd
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass  # not Linux: the parent still forwards signals
        if os.getppid() != parent:
            os._exit(1)  # the parent died before PDEATHSIG was set

        def report_ready() -> None:
            os.write(ready_w, b"R")
            os.close(ready_w)

        status = serve(args, cfg, shared_addresses=addresses, worker=index, on_ready=report_ready)
    except errors.TvixError as e:
        print(f"tvixd daemon: error: {e}", file=sys.stderr)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"tvixd daemon: error:{where}: {e.strerror or e}", file=sys.stderr)
    except BaseException:
        sys.excepthook(*sys.exc_info())
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def supervise(args: argparse.Namespace, cfg: Config, addrs: StoreAddrs, serve: Callable[..., int]) -> int:
    """Run ``cfg.daemon.processes`` serving processes (``serve``, see daemon_cmd) until SIGTERM/SIGINT."""
    import structlog

    from tvixd import sdnotify
    from tvixd.server.listen import resolve_shared

    daemon = cfg.daemon
    count = daemon.processes
    if "grpc" in sys.modules:  # a bug of ours: children forked after grpc's initialisation misbehave
        raise errors.TvixError("internal error: grpc was imported before the serving processes were forked")
    if cfg.metrics.listen_address:
        raise errors.InvalidRequest(
            f"[metrics] listen_address is set but daemon.processes = {count}: each serving process would "
            "report only its own calls; serve metrics with processes = 1")
    problem = shared_store_problem(addrs)
    if problem:
        raise errors.InvalidRequest(f"daemon.processes = {count}: {problem}")
    addresses = resolve_shared(list(daemon.listen_address))
    if not any(getattr(addrs, s).startswith("grpc+") for s in ("blob", "directory", "path_info")):
        # Open (and create) the store once before forking: a bad address fails here in one line, not
        # once per serving process. grpc+ backends are left to the serving processes: their clients
        # would import grpc here.
        from tvixd.store import Store

        Store.open(addrs).close()
    log = structlog.get_logger("tvixd.daemon")

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    for signum in (*_STOP_SIGNALS, signal.SIGCHLD):
        signal.signal(signum, lambda *_: None)  # the wake-up fd carries the signal number to the loop
    parent = os.getpid()
    workers: dict[int, _Worker] = {}

    def spawn(index: int) -> None:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(wake_r)
            for w in workers.values():
                if w.ready_fd >= 0:
                    os.close(w.ready_fd)
            _child_main(serve, args, cfg, addresses, index, ready_w, parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(ready_w)
        workers[pid] = _Worker(index=index, pid=pid, ready_fd=ready_r)

    for index in range(count):
        spawn(index)
    announced = stopping = False
    status = 0
    while workers:
        waiting = [w.ready_fd for w in workers.values() if w.ready_fd >= 0]
        readable, _, _ = select.select([wake_r, *waiting], [], [], 5.0)
        signals: bytes = b""
        if wake_r in readable:
            try:
                signals = os.read(wake_r, 512)
            except BlockingIOError:
                pass
        for w in workers.values():
            if w.ready_fd in readable:
                w.ready = os.read(w.ready_fd, 1) == b"R"
                os.close(w.ready_fd)
                w.ready_fd = -1
        if not announced and not stopping and len(workers) == count and all(w.ready for w in workers.values()):
            announced = True
            log.info("listening", addresses=addresses, processes=count, pids=sorted(workers),
                     tls=daemon.tls_cert is not None, blob_service=addrs.blob, directory_service=addrs.directory,
                     path_info_service=addrs.path_info)
            sdnotify.ready(f"listening on {', '.join(addresses)} ({count} processes)")
        if not stopping and any(s in _STOP_SIGNALS for s in signals):
            stopping = True
            log.info("signal received, draining", signal=signal.Signals(
                next(s for s in signals if s in _STOP_SIGNALS)).name, processes=len(workers))
            sdnotify.stopping("draining")
            for pid in workers:
                os.kill(pid, signal.SIGTERM)
        while workers:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            w = workers.pop(pid, None)
            if w is None:
                continue
            if w.ready_fd >= 0:
                os.close(w.ready_fd)
            code = os.waitstatus_to_exitcode(wait_status)
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            if stopping:
                if code != 0:
                    log.error("serving process failed while draining", worker=w.index, pid=pid, status=how)
                    status = 1
            elif not w.ready:
                log.error("serving process failed to start; stopping the daemon", worker=w.index, pid=pid,
                          status=how)
                status, stopping = 1, True
                for other in workers:
                    os.kill(other, signal.SIGTERM)
            else:
                log.warning("serving process exited unexpectedly; restarting it", worker=w.index, pid=pid,
                            status=how)
                time.sleep(0.1)  # a process dying in a tight loop must not take the machine with it
                spawn(w.index)
    signal.set_wakeup_fd(-1)
    os.close(wake_r)
    os.close(wake_w)
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # drained: a late signal must not change the exit status
    log.info("stopped", status=status)
    return status
