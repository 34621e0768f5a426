"""The shipped systemd units verify cleanly, and the sd_notify protocol works over a real socket."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, tvixd_env

UNIT_DIR = REPO_ROOT / "systemd"
UNITS = sorted([*UNIT_DIR.glob("*.service"), *UNIT_DIR.glob("*.socket")])
INSTALLED_TVIXD = "/opt/tvixd/bin/tvixd"  # README "Run as a system service" installs the venv there

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (apt-get install systemd; CI installs it)")


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for every assignment (units may repeat keys, so not configparser)."""
    out, section = [], ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.append((section, k.strip(), v.strip()))
    return out


def tvixd_wrapper(tmp_path: Path) -> Path:
    """An executable that runs this checkout's tvixd: the venv's console script, else a shell wrapper."""
    installed = Path(sys.executable).parent / "tvixd"
    if installed.is_file():
        return installed
    wrapper = tmp_path / "bin" / "tvixd"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} -m tvixd "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def verifiable_copy(unit: Path, dest: Path, tvixd: Path) -> Path:
    """``unit`` copied into ``dest`` with the installed tvixd path in Exec*= lines replaced by ``tvixd``.

    verify checks that ExecStart's binary exists and is executable; on a test machine the
    installed path does not exist, so the copy points at a real tvixd instead.
    """
    text = unit.read_text()
    for path in set(re.findall(r"^Exec\w+=[-@:+!]*(/\S+/tvixd)\b", text, flags=re.M)):
        text = text.replace(path, str(tvixd))
    copy = dest / unit.name
    copy.write_text(text)
    return copy


# Lines systemd-analyze prints about the *host* rather than the unit under test: verify also loads
# the dependency graph (network.target, multi-user.target, ...) and reports problems in the host's
# own unit files under these directories. They say nothing about our units and we cannot fix them.
HOST_NOISE = re.compile(r"^(/usr)?/lib/systemd/|^/etc/systemd/|^/run/systemd/")


def test_there_are_units():
    assert UNIT_DIR / "tvixd.service" in UNITS


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_is_silent(unit: Path, tmp_path: Path):
    """`systemd-analyze verify` prints nothing about any shipped unit: every warning fails the test."""
    units = tmp_path / "units"
    units.mkdir()
    tvixd = tvixd_wrapper(tmp_path)
    copies = [verifiable_copy(u, units, tvixd) for u in UNITS]  # siblings, for Requires=/After= between them
    target = units / unit.name
    assert target in copies
    # --man=no: Documentation=man:... pages are not installed on minimal CI machines.
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(target)], capture_output=True, text=True,
                       cwd=units, check=False)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip() and not HOST_NOISE.search(ln)]
    assert r.returncode == 0 and lines == [], "\n".join(lines)


@needs_analyze
def test_verify_catches_a_bad_unit(tmp_path: Path):
    """The check above can fail: a typo'd key and a missing binary are both reported."""
    units = tmp_path / "units"
    units.mkdir()
    bad = verifiable_copy(UNIT_DIR / "tvixd.service", units, tvixd_wrapper(tmp_path))
    bad.write_text(bad.read_text().replace("PrivateTmp=yes", "PrivateTmp=yes\nPrivateTemp=yes"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True,
                       check=False)
    assert "Unknown key 'PrivateTemp'" in r.stderr
    missing = units / "missing.service"
    missing.write_text((UNIT_DIR / "tvixd.service").read_text())  # still points at /opt/tvixd/bin/tvixd
    if not Path(INSTALLED_TVIXD).exists():
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(missing)], capture_output=True,
                           text=True, check=False)
        assert r.returncode != 0 and "not executable" in r.stderr


@needs_analyze
def test_daemon_unit_is_hardened(tmp_path: Path):
    """The directives the issue asks for are there, and systemd rates the exposure "OK" (<= 2.0)."""
    settings = parse_unit(UNIT_DIR / "tvixd.service")
    service = {(k, v) for s, k, v in settings if s == "Service"}
    for required in [("Type", "notify"), ("StateDirectory", "tvixd"), ("DynamicUser", "yes"),
                     ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                     ("NoNewPrivileges", "yes"), ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
                     ("ExecStart", f"{INSTALLED_TVIXD} daemon")]:
        assert required in service, required
    assert ("Install", "WantedBy", "multi-user.target") in settings
    copy = verifiable_copy(UNIT_DIR / "tvixd.service", tmp_path, tvixd_wrapper(tmp_path))
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", str(copy)],
                       capture_output=True, text=True, check=False)
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert exposure and r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert float(exposure[1]) <= 2.0


def test_readme_install_steps_match_the_unit():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "## Run as a system service" in readme
    section = readme.split("## Run as a system service", 1)[1].split("\n## ", 1)[0]
    for step in ("python3 -m venv /opt/tvixd", "/opt/tvixd/bin/pip install", "systemd/tvixd.service",
                 "/etc/systemd/system/", "systemctl daemon-reload", "systemctl enable --now tvixd"):
        assert step in section, step


# --- sd_notify ---------------------------------------------------------------------------------


def notify_in_subprocess(notify_socket: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (with ``sdnotify`` imported and logging configured) with ``$NOTIFY_SOCKET`` set."""
    prog = f"from tvixd import log, sdnotify\nlog.configure(fmt='json')\n{code}\n"
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, check=False,
                          env=tvixd_env(NOTIFY_SOCKET=notify_socket))


def bound_datagram_socket(addr: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(30)
    return sock


def test_notify_to_a_path_socket(tmp_path: Path):
    path = tmp_path / "notify.sock"
    with bound_datagram_socket(str(path)) as sock:
        r = notify_in_subprocess(str(path), "assert sdnotify.ready('listening on x')\nassert sdnotify.stopping()")
        assert r.returncode == 0, r.stderr
        assert sock.recv(4096) == b"READY=1\nSTATUS=listening on x"
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_to_an_abstract_socket():
    name = f"tvixd-test-{uuid.uuid4().hex}"
    with bound_datagram_socket("\0" + name) as sock:
        r = notify_in_subprocess("@" + name, "assert sdnotify.notify('READY=1')")
        assert r.returncode == 0, r.stderr
        assert sock.recv(4096) == b"READY=1"


def test_notify_without_a_listener_is_a_logged_warning(tmp_path: Path):
    gone = tmp_path / "nobody.sock"
    r = notify_in_subprocess(str(gone), "assert not sdnotify.ready()\nassert not sdnotify.notify('X=1')")
    assert r.returncode == 0, r.stderr
    import json

    events = [json.loads(ln) for ln in r.stderr.splitlines()]
    assert [e["event"] for e in events] == ["sd_notify failed", "sd_notify failed"]
    assert events[0]["level"] == "warning" and events[0]["notify_socket"] == str(gone)


def test_notify_unset_is_a_no_op():
    from tvixd import sdnotify

    assert sdnotify.notify("READY=1", environ={}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1"}) is False


def test_daemon_sends_ready_once_listening_and_stopping_on_sigterm(tmp_path: Path):
    """The real daemon with a real $NOTIFY_SOCKET: READY=1 only when the port answers, STOPPING=1 on SIGTERM."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.daemon import start_daemon
    from tests.test_log_daemon import store_args

    path = tmp_path / "notify.sock"
    with bound_datagram_socket(str(path)) as sock:
        with start_daemon(tmp_path, *store_args(), env={"NOTIFY_SOCKET": str(path)}) as daemon:
            ready = sock.recv(4096).decode()
            assert ready.splitlines()[0] == "READY=1", ready
            assert f"127.0.0.1:{daemon.port}" in ready  # STATUS=listening on ...
            with grpc.insecure_channel(daemon.target) as channel:  # it does listen
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
                assert status.status == health_pb2.HealthCheckResponse.SERVING
            assert daemon.stop() == 0
            stopping = sock.recv(4096).decode()
            assert stopping.splitlines()[0] == "STOPPING=1", stopping
            events = [e["event"] for e in daemon.events()]
            assert events.index("signal received, draining") < events.index("stopped")
