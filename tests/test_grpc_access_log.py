"""The access log's own JSON rendering (tvixd.server.interceptors) matches structlog's, byte for byte."""

from __future__ import annotations

import datetime
import json

import grpc
import pytest
from structlog.processors import JSONRenderer

from tvixd.server.interceptors import CallRecord, _UtcTimestamps, render_access_line

ODD = ['plain', 'quote " and backslash \\', "control \x00\x1f\n\t", "unicode é ☃ \U0001f600", "<>&'", ""]


@pytest.mark.parametrize("text", ODD)
@pytest.mark.parametrize("code", [grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL])
def test_render_access_line_is_what_structlog_renders(text, code):
    call = CallRecord("/tvix.store.v1.BlobService/" + text, "rid-" + text + "x" * 100)
    call.peer = "ipv6:[::1]:" + text
    call.code = code
    call.duration = 0.000123456
    call.bytes_in, call.bytes_out, call.messages_in, call.messages_out = 34, 2**40, 1, 7
    level = "error" if code is grpc.StatusCode.INTERNAL else "info"
    timestamp = "2026-11-25T14:13:36.275870Z"
    ours = render_access_line(call, level, 4242, timestamp)
    # The event dict as tvixd.log's structlog chain builds it: the call's fields, then the processors'.
    event = {"method": call.method, "peer": call.peer, "code": code.name, "duration_ms": round(0.123456, 3),
             "bytes_in": 34, "bytes_out": 2**40, "messages_in": 1, "messages_out": 7,
             "request_id": call.request_id, "pid": 4242, "event": "rpc", "level": level,
             "logger": "tvixd.access", "timestamp": timestamp}
    assert ours == JSONRenderer()(None, "info", dict(event))
    assert json.loads(ours) == event and "\n" not in ours


@pytest.mark.parametrize("duration", [0.0, 0.0005, 1.23456789, 3600.0])
def test_duration_as_structlog_renders_it(duration):
    call = CallRecord("/m", "r")
    call.duration = duration
    assert json.loads(render_access_line(call, "info", 1, "t"))["duration_ms"] == round(duration * 1000, 3)


@pytest.mark.parametrize("ns", [0, 1_764_080_016_000_000_000, 1_764_080_016_275_870_123, 1_764_080_016_000_001_999,
                                1_764_080_016_999_999_999])
def test_timestamps_match_isoformat(ns):
    stamps = _UtcTimestamps()
    second, rest = divmod(ns, 10**9)
    expected = datetime.datetime.fromtimestamp(second, datetime.UTC).replace(microsecond=rest // 1000)
    assert stamps.format(ns) == expected.isoformat().replace("+00:00", "Z")
    assert stamps.format(ns) == stamps.format(ns)  # the cached second gives the same text
