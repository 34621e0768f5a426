"""Real tvixd gRPC servers for tests: a daemon subprocess, or an in-process server on a Unix socket.

``start_daemon(tmp_path, *extra_args, env=None)`` runs ``python -m tvixd daemon``
on an ephemeral port (``-l 127.0.0.1:0``) with an embedded store in ``tmp_path``
and reads the bound port from its JSON "listening" log line.

``serve_in_process(stack, store)`` serves ``store`` from this process on a
Unix socket (used by the conformance suites, see tests/backends.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import stop_gracefully, tvixd_env

START_TIMEOUT = 60.0


@dataclass
class Daemon:
    """A running daemon subprocess: where it listens and what it logged."""

    proc: subprocess.Popen[bytes]
    port: int
    addresses: list[str]
    state_dir: Path
    _lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def addr(self) -> str:
        """The grpc+http:// address of its first TCP listener."""
        return f"grpc+http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT`` for grpcio and grpcurl."""
        return f"127.0.0.1:{self.port}"

    def stderr_lines(self) -> list[str]:
        """Everything the daemon logged so far (JSON lines)."""
        return list(self._lines)

    def events(self) -> list[dict]:
        """The log lines parsed as JSON (lines that are not JSON are skipped)."""
        out = []
        for line in self.stderr_lines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def status(self) -> dict[str, str]:
        """/proc/PID/status of the daemon as a dict (Threads, VmRSS, ...)."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return fields

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return rc


@contextmanager
def start_daemon(tmp_path: Path, *extra_args: str, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """Run ``tvixd daemon`` until the block ends (SIGTERM, then SIGKILL if it does not stop).

    Unless ``extra_args`` contain ``-l``/``--listen-address`` it listens on
    127.0.0.1:0; unless they name service addresses (flags or ``env``), the
    store is the embedded one under ``tmp_path / "state"``.
    """
    state_dir = tmp_path / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    args = list(extra_args)
    if not any(a in ("-l", "--listen-address") or a.startswith("--listen-address=") for a in args):
        args = ["-l", "127.0.0.1:0", *args]
    full_env = tvixd_env(STATE_DIRECTORY=str(state_dir))
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvixd", "--log-format", "json", "daemon", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=full_env,
    )
    lines: list[str] = []
    listening = threading.Event()
    found: dict = {}

    def read_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if not listening.is_set():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "listening":
                    found.update(event)
                    listening.set()
        listening.set()  # EOF: the daemon died; let the waiter see it

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        if not listening.wait(START_TIMEOUT) or not found:
            proc.kill()
            proc.wait()
            reader.join(timeout=10)
            raise RuntimeError("tvixd daemon did not start:\n" + "\n".join(lines))
        addresses = found["addresses"]
        tcp = [a for a in addresses if not a.startswith("unix:")]
        port = int(tcp[0].rsplit(":", 1)[1]) if tcp else 0
        daemon = Daemon(proc=proc, port=port, addresses=addresses, state_dir=state_dir, _lines=lines,
                        _reader=reader)
        yield daemon
    finally:
        stop_gracefully(proc)
        reader.join(timeout=10)


def make_tls_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key (PEM files in ``directory``)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def short_socket_dir(stack: ExitStack) -> Path:
    """A fresh directory with a short path (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tvixd-", dir="/tmp"))
    stack.callback(shutil.rmtree, path, True)
    return path


def serve_in_process(stack: ExitStack, store: object, **kwargs: object) -> str:
    """Serve ``store`` (a tvixd.store.Store) on a Unix socket until ``stack`` closes; return its grpc+unix URL."""
    from tvixd.server.server import build_server

    sock = short_socket_dir(stack) / "tvixd.sock"
    kwargs.setdefault("workers", 16)
    server = build_server(store, [f"unix:{sock}"], **kwargs)
    server.start()
    stack.callback(server.stop, 0)
    return f"grpc+unix://{sock}"


def memory_store_url(stack: ExitStack) -> str:
    """A fresh in-process server over memory backends; its grpc+unix URL."""
    from tvixd.store import Store, StoreAddrs

    store = Store.open(StoreAddrs(blob="memory://", directory="memory://", path_info="memory://"))
    stack.callback(store.close)
    return serve_in_process(stack, store)


def daemon_env_without_addrs() -> dict[str, str]:
    """The environment tvixd subprocesses get (no inherited *_SERVICE_ADDR)."""
    return {k: v for k, v in os.environ.items() if not k.endswith("_SERVICE_ADDR")}
