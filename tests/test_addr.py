"""Address splitting: the fast path for plain local addresses gives exactly urllib.parse.urlsplit's parts."""

from __future__ import annotations

import random
from urllib.parse import urlsplit

import pytest

from tvixd.addr import _PLAIN, _split_plain, parse
from tvixd.errors import InvalidRequest

PLAIN_CASES = [
    "fs:///var/lib/tvixd/blobs", "fs://host/x", "fs:/x", "fs:x", "fs:", "fs://", "fs:///", "fs:////x",
    "fs://a:b@h:1/p", "fs://h/", "fs:///a/b=c,d+e~f", "sqlite://", "sqlite:", "sqlite:///a/b.sqlite",
    "sqlite:///a//b", "sqlite:////", "memory://", "memory:", "memory:///", "memory://x", "memory:foo",
]  # fmt: skip
SLOW_CASES = [
    "fs:///a b", "fs:///a?x", "fs:///a#f", "fs://[::1]/x", "FS:///x", " fs:///x", "fs:///\u00e4", "fs:///a%20b",
    "fs:///a\tb", "fs:///a\nb", "grpc+unix:///run/tvixd.sock", "grpc+http://[::1]:8000", "foo",
]  # fmt: skip


@pytest.mark.parametrize("addr", PLAIN_CASES)
def test_plain_local_addresses_split_as_urlsplit_does(addr):
    assert _split_plain(addr) is not None
    assert tuple(parse(addr)) == tuple(urlsplit(addr))


@pytest.mark.parametrize("addr", SLOW_CASES)
def test_everything_else_goes_through_urlsplit(addr):
    assert _split_plain(addr) is None
    if addr == "foo":
        with pytest.raises(InvalidRequest, match="no scheme"):
            parse(addr)
    else:
        assert tuple(parse(addr)) == tuple(urlsplit(addr))


def test_random_plain_addresses_split_as_urlsplit_does():
    rng = random.Random(5)
    alphabet = sorted(_PLAIN) + ["/"] * 20
    for _ in range(3000):
        addr = rng.choice(["fs", "sqlite", "memory"]) + ":" + "".join(rng.choices(alphabet, k=rng.randrange(12)))
        assert tuple(parse(addr)) == tuple(urlsplit(addr)), addr
