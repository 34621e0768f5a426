"""Structured logs: every stderr line is one JSON object; nothing reaches stdout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime

from tests.conftest import tvixd_env

PROGRAM = r'''
import logging, os, socket, threading, warnings
import structlog
from tvixd import log

log.configure(level="debug", fmt="json")
structlog.get_logger("tvixd.test").info("hello", answer=42)
logging.getLogger("some.library").warning("stdlib %s record", "formatted")
warnings.warn("a python warning")
try:
    1 / 0
except ZeroDivisionError:
    structlog.get_logger("tvixd.test").exception("it broke", request_id="r1")
t = threading.Thread(target=lambda: [][1], name="worker-1")
t.start(); t.join()
with log.capture_stderr():
    os.write(2, b"E1125 08:42:05.370422   22637 add_port.cc:83] a fake core error\n")
    os.write(2, b"plain text from C\n")
    # A real grpc C-core message: binding a port that is taken.
    import grpc, concurrent.futures as cf
    taken = socket.socket(); taken.bind(("127.0.0.1", 0)); taken.listen()
    server = grpc.server(cf.ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 0)])
    try:
        server.add_insecure_port("127.0.0.1:%d" % taken.getsockname()[1])
    except RuntimeError as e:
        structlog.get_logger("tvixd.test").error("bind failed", error=str(e))
    structlog.get_logger("tvixd.test").info("inside capture")
structlog.get_logger("tvixd.test").warn("after capture")
'''


def run_program() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120,
                          check=False, env=tvixd_env())


def test_every_line_is_json_with_the_standard_fields():
    r = run_program()
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    events = []
    for line in r.stderr.splitlines():
        event = json.loads(line)  # fails the test on any non-JSON line
        assert {"timestamp", "level", "event", "logger"} <= event.keys(), line
        ts = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0, line
        assert event["level"] in {"debug", "info", "warning", "error", "critical"}
        events.append(event)
    by_event = {e["event"]: e for e in events}

    assert by_event["hello"]["answer"] == 42 and by_event["hello"]["logger"] == "tvixd.test"
    assert by_event["stdlib formatted record"]["logger"] == "some.library"
    assert by_event["stdlib formatted record"]["level"] == "warning"
    assert any("a python warning" in e["event"] and e["logger"] == "py.warnings" for e in events)

    # Exceptions are data, not a multi-line traceback.
    broke = by_event["it broke"]
    assert broke["level"] == "error" and broke["request_id"] == "r1"
    (exc,) = broke["exception"]
    assert exc["exc_type"] == "ZeroDivisionError" and exc["exc_value"] == "division by zero"
    assert exc["frames"] and exc["frames"][-1]["name"] == "<module>"
    # Local variables stay out of log lines (size, and request bytes must not leak into logs).
    assert all("locals" not in frame for frame in exc["frames"])
    thread = by_event["uncaught exception in thread"]
    assert thread["thread"] == "worker-1" and thread["exception"][0]["exc_type"] == "IndexError"

    # Raw writes to fd 2 (grpc's C core) became events too, levels from their glog prefix.
    core = [e for e in events if e["logger"] == "stderr"]
    fake = next(e for e in core if "a fake core error" in e["event"])
    assert fake["level"] == "error"
    assert any(e["event"] == "plain text from C" and e["level"] == "warning" for e in core)
    assert any(re.search(r"Failed to add port|Address already in use", e["event"]) for e in core), core
    assert "bind failed" in by_event and "inside capture" in by_event
    assert by_event["after capture"]["level"] == "warning"


def test_console_format_is_for_humans():
    r = subprocess.run([sys.executable, "-c", "from tvixd import log\nimport structlog\n"
                        "log.configure(fmt='console')\nstructlog.get_logger('x').info('hello', a=1)"],
                       capture_output=True, text=True, timeout=60, check=False, env=tvixd_env())
    assert r.returncode == 0 and r.stdout == ""
    assert "hello" in r.stderr and "a=1" in r.stderr and not r.stderr.startswith("{")


def test_auto_format_is_json_when_not_a_terminal():
    r = subprocess.run([sys.executable, "-c", "from tvixd import log\nimport structlog\n"
                        "log.configure(fmt='auto', level='warn')\nstructlog.get_logger('x').info('hidden')\n"
                        "structlog.get_logger('x').warning('shown')"],
                       capture_output=True, text=True, timeout=60, check=False, env=tvixd_env())
    assert [json.loads(ln)["event"] for ln in r.stderr.splitlines()] == ["shown"]


LAZY_PROGRAM = r'''
import os, sys, threading, warnings
from tvixd import log

log.configure(level="info", fmt="json")
lazy = log.get_logger("tvixd.lazy")
lazy.debug("below the level")
# configure() and a filtered event import neither structlog nor logging (start-up time, see tvixd.log).
print(sorted(m for m in ("structlog", "logging", "asyncio") if m in sys.modules))
warnings.warn("an early warning")  # the first warning imports logging, which configures it
import logging
logging.getLogger("late.library").error("stdlib after configure: %d", 7)
print("structlog" in sys.modules)
lazy.info("emitted", n=1)  # imports structlog: configured on import
import structlog
structlog.get_logger("tvixd.direct").warning("direct after lazy")
t = threading.Thread(target=lambda: {}["missing"], name="worker-2")
t.start(); t.join()
'''


def test_configure_imports_neither_structlog_nor_logging_until_a_line_is_logged():
    r = subprocess.run([sys.executable, "-c", LAZY_PROGRAM], capture_output=True, text=True, timeout=60,
                       check=False, env=tvixd_env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]", "True"]  # logging a stdlib record renders it with structlog
    events = [json.loads(line) for line in r.stderr.splitlines()]  # every line is JSON
    for e in events:
        assert {"timestamp", "level", "event", "logger"} <= e.keys()
    by_logger = {e["logger"]: e for e in events}
    assert "below the level" not in {e["event"] for e in events}
    assert "an early warning" in by_logger["py.warnings"]["event"]
    assert by_logger["py.warnings"]["level"] == "warning"
    assert by_logger["late.library"]["event"] == "stdlib after configure: 7"
    assert by_logger["tvixd.lazy"] == {**by_logger["tvixd.lazy"], "event": "emitted", "n": 1, "level": "info"}
    assert by_logger["tvixd.direct"]["level"] == "warning"
    thread = next(e for e in events if e["event"] == "uncaught exception in thread")
    assert thread["thread"] == "worker-2" and thread["exception"][0]["exc_type"] == "KeyError"


def test_lazy_logger_respects_the_level_and_console_format():
    prog = ("from tvixd import log\nlog.configure(level='warning', fmt='console')\n"
            "lg = log.get_logger('x')\nlg.info('hidden')\nlg.error('shown', a=1)\n"
            "import sys\nprint('structlog' in sys.modules)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, check=False,
                       env=tvixd_env())  # fmt: skip
    assert r.returncode == 0 and r.stdout == "True\n"
    assert "shown" in r.stderr and "a=1" in r.stderr and "hidden" not in r.stderr
    assert not r.stderr.startswith("{")
