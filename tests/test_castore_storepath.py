"""Store paths (SPEC Part B §4.2-§4.4, Part A §5): parsing, the 211-byte name limit, building."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tvixd.castore import nixbase32
from tvixd.castore.storepath import (
    DIGEST_SIZE,
    ENCODED_DIGEST_SIZE,
    NAME_MAX,
    STORE_DIR,
    StorePath,
    StorePathError,
    build_ca_path,
    build_nar_based_store_path,
    build_store_path_from_fingerprint,
    build_text_path,
    compress_hash,
    validate_name,
)
from tvixd.errors import InvalidRequest

NET_TOOLS = "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432"
NET_TOOLS_DIGEST = bytes.fromhex("8a12321522fd91efbd60ebb2481af88580f61600")


def test_constants() -> None:
    assert STORE_DIR == "/nix/store"
    assert DIGEST_SIZE == 20
    assert ENCODED_DIGEST_SIZE == 32
    assert NAME_MAX == 211


def test_happy_path() -> None:
    sp = StorePath.from_basename(NET_TOOLS)
    assert sp.digest == NET_TOOLS_DIGEST
    assert sp.name == "net-tools-1.60_p20170221182432"
    assert str(sp) == NET_TOOLS
    assert sp.absolute() == "/nix/store/" + NET_TOOLS
    assert StorePath.from_basename(NET_TOOLS.encode()) == sp
    assert StorePath.from_basename(str(sp)) == sp


def test_dummy() -> None:
    sp = StorePath.from_basename("00000000000000000000000000000000-dummy")
    assert sp.digest == bytes(20)
    assert sp.name == "dummy"


def test_frozen_and_hashable() -> None:
    sp = StorePath.from_basename(NET_TOOLS)
    with pytest.raises(AttributeError):
        sp.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del sp.digest  # type: ignore[misc]
    with pytest.raises(AttributeError):
        sp.other = 1  # type: ignore[attr-defined]
    assert (sp.digest, sp.name) == (NET_TOOLS_DIGEST, "net-tools-1.60_p20170221182432")
    assert sp != (NET_TOOLS_DIGEST, "net-tools-1.60_p20170221182432")  # equal only to a StorePath
    assert {sp: 1}[StorePath(NET_TOOLS_DIGEST, "net-tools-1.60_p20170221182432")] == 1


def test_equality_uses_name_ordering_uses_digest() -> None:
    a = StorePath(bytes(20), "b")
    b = StorePath(bytes(20), "a")
    c = StorePath(b"\x01" + bytes(19), "a")
    assert a != b
    assert not a < b and not b < a
    assert a <= b and a >= b
    assert a < c and c > b
    assert sorted([c, a]) == [a, c]


@pytest.mark.parametrize(
    ("basename", "kind"),
    [
        ("00bgd045z0d4icpbc2yy-net-tools-1.60_p20170221182432", "InvalidHashEncoding"),  # '-' in hash region
        ("00bgd045z0d4icpbc2yyz4gx48aku4la-net-tools-1.60_p20170221182432", "InvalidHashEncoding"),  # 'u'
        (NET_TOOLS + "/bin/arp", "InvalidName"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44lanet-tools-1.60_p20170221182432", "MissingDash"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-", "InvalidLength"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la", "InvalidLength"),
        ("", "InvalidLength"),
        ("invalid", "InvalidLength"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-.hidden", "InvalidName"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-my file", "InvalidName"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-caf\u00e9", "InvalidName"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-a\x00", "InvalidName"),
        ("00bgd045z0d4icpbc2yyz4gx48ak44la-" + "a" * 212, "NameTooLong"),
        ("00BGD045Z0D4ICPBC2YYZ4GX48AK44LA-net-tools", "InvalidHashEncoding"),
    ],
)
def test_invalid_basenames(basename: str, kind: str) -> None:
    with pytest.raises(StorePathError) as info:
        StorePath.from_basename(basename)
    assert info.value.kind == kind
    assert isinstance(info.value, InvalidRequest)
    with pytest.raises(StorePathError):
        StorePath.from_basename(basename.encode())


def test_invalid_name_message_names_character_and_position() -> None:
    with pytest.raises(StorePathError, match=r"character b' ' at position 2 "):
        StorePath.from_basename("00000000000000000000000000000000-my file")
    with pytest.raises(StorePathError, match=r"starts with '\.'"):
        StorePath.from_basename("00000000000000000000000000000000-.keep")
    with pytest.raises(StorePathError, match="212 bytes, longer than 211"):
        StorePath.from_basename("00000000000000000000000000000000-" + "x" * 212)


def test_name_length_limit_is_211_bytes() -> None:
    assert StorePath.from_basename("0" * 32 + "-" + "a" * 211).name == "a" * 211
    with pytest.raises(StorePathError):
        StorePath.from_basename("0" * 32 + "-" + "a" * 212)
    assert validate_name("a" * NAME_MAX) == "a" * NAME_MAX


def test_name_alphabet() -> None:
    """Exactly ASCII letters, digits and + - . _ ? = are allowed (a leading '.' is not)."""
    allowed = {c for c in range(128) if chr(c).isalnum()} | set(b"+-._?=")
    for c in range(256):
        name = b"x" + bytes([c])
        if c in allowed:
            assert validate_name(name) == name.decode()
        else:
            with pytest.raises(StorePathError, match="at position 1 "):
                validate_name(name)
    for first in b"-_?=+":
        assert validate_name(bytes([first]) + b"a")
    with pytest.raises(StorePathError):
        validate_name("")
    with pytest.raises(StorePathError):
        validate_name(".")


def test_hostile_input_message_is_bounded() -> None:
    with pytest.raises(StorePathError) as info:
        StorePath.from_basename("0" * 32 + "-" + "a" * 10**6)
    assert len(str(info.value)) < 1000


def test_constructor_validates() -> None:
    with pytest.raises(StorePathError):
        StorePath(bytes(19), "foo")
    with pytest.raises(StorePathError):
        StorePath(bytes(20), "foo bar")
    with pytest.raises(StorePathError):
        StorePath(bytes(20), "")


def test_absolute_path() -> None:
    sp = StorePath.from_absolute_path("/nix/store/" + NET_TOOLS)
    assert sp == StorePath.from_basename(NET_TOOLS)
    assert StorePath.from_absolute_path(sp.absolute()) == sp
    assert StorePath.from_absolute_path(sp.absolute().encode()) == sp


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("foobar-123", "MissingStoreDir"),
        ("/nix/store", "MissingStoreDir"),
        ("/nix/stor/" + NET_TOOLS, "MissingStoreDir"),
        ("nix/store/" + NET_TOOLS, "MissingStoreDir"),
        ("/nix/store/", "InvalidLength"),
        ("/nix/store/foo", "InvalidLength"),
        ("/nix/store/" + NET_TOOLS + "/", "InvalidName"),
        ("/nix/store/" + NET_TOOLS + "/bin/arp", "InvalidName"),
    ],
)
def test_absolute_path_errors(path: str, kind: str) -> None:
    with pytest.raises(StorePathError) as info:
        StorePath.from_absolute_path(path)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    ("path", "rest"),
    [
        ("/nix/store/" + NET_TOOLS, ""),
        ("/nix/store/" + NET_TOOLS + "/", ""),
        ("/nix/store/" + NET_TOOLS + "/bin/arp", "bin/arp"),
        ("/nix/store/" + NET_TOOLS + "/bin/arp/", "bin/arp"),
        ("/nix/store/" + NET_TOOLS + "//bin/./arp//", "bin/arp"),
        ("/nix/store/" + NET_TOOLS + "/a b/\u00e9", "a b/\u00e9"),
    ],
)
def test_from_absolute_path_full(path: str, rest: str) -> None:
    sp, got = StorePath.from_absolute_path_full(path)
    assert sp == StorePath.from_basename(NET_TOOLS)
    assert got == rest
    assert StorePath.from_absolute_path_full(path.encode()) == (sp, rest)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/nix/store/", "InvalidLength"),
        ("/nix/store/foo", "InvalidLength"),
        ("/nix/store//" + NET_TOOLS, "InvalidLength"),
        ("/nix/store/foo/" + NET_TOOLS, "InvalidLength"),
        (NET_TOOLS, "MissingStoreDir"),
        ("/tmp/" + NET_TOOLS + "/bin", "MissingStoreDir"),
    ],
)
def test_from_absolute_path_full_errors(path: str, kind: str) -> None:
    with pytest.raises(StorePathError) as info:
        StorePath.from_absolute_path_full(path)
    assert info.value.kind == kind


def test_round_trip_random_digests() -> None:
    for i in range(200):
        digest = hashlib.sha256(str(i).encode()).digest()[:20]
        sp = StorePath(digest, f"name-{i}")
        assert StorePath.from_basename(str(sp)) == sp
        assert StorePath.from_absolute_path(sp.absolute()) == sp
        assert str(sp)[:32] == nixbase32.encode(digest)


# --- building ----------------------------------------------------------------------------------------


def test_compress_hash() -> None:
    h = bytes.fromhex("dd9eb6cc84774d911b21c6b14f74908933913dfc582aa3a5681b9086a702e4c7")
    assert compress_hash(h).hex() == "85b41569ec6cdd17bc2322764f74908933913dfc"
    assert compress_hash(bytes(range(32)), 20) == bytes((i ^ (i + 20)) if i < 12 else i for i in range(20))


def test_worked_example() -> None:
    nar_sha256 = bytes.fromhex("03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040")
    fingerprint = "source:sha256:" + nar_sha256.hex() + ":/nix/store:root"
    h = hashlib.sha256(fingerprint.encode()).digest()
    assert h.hex() == "dd9eb6cc84774d911b21c6b14f74908933913dfc582aa3a5681b9086a702e4c7"
    sp = build_nar_based_store_path(nar_sha256, "root")
    assert sp.digest.hex() == "85b41569ec6cdd17bc2322764f74908933913dfc"
    assert sp.absolute() == "/nix/store/zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root"


@pytest.mark.parametrize(
    ("nar_sha256", "name", "path"),
    [
        ("097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1", "doesntmatter",
         "/nix/store/v3r2js24npzm0ikvgyfbhnjgh2a96k1w-doesntmatter"),
        ("03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040", "root",
         "/nix/store/zhyr2cw9j1s4yxi24fy1gpbcxilibd45-root"),
        ("3b63b97bae149b3e6650437b9077c3d75b130192145792ec94ea3af96a8c567a", "exe",
         "/nix/store/pdbhxvljzqwghdmjwsp13ml8qxhyb5bs-exe"),
        ("a50a5ab6d992f5598edd92105059fae9acfc192981e08bd88534c2167e92526a", "emptydir",
         "/nix/store/lllr7wi039bd69ihd6vfarlcz5j7v52d-emptydir"),
        ("ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a", "cx",
         "/nix/store/dk5gf94s23q9amfr91nphc0pj8qsa17c-cx"),
        ("ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a", "x",
         "/nix/store/1sizlppzjkvq1yv830fg29pgdhxpvi8b-x"),
        ("f9d9f3095423caca1578097baa5b8f3d51c90198a91f1e3e4edf10203b99d215", "docs",
         "/nix/store/v06ia672qwxjclhh7kc6cs8d6cz9np68-docs"),
    ],
)  # fmt: skip
def test_nar_based_store_path_vectors(nar_sha256: str, name: str, path: str) -> None:
    sp = build_nar_based_store_path(bytes.fromhex(nar_sha256), name)
    assert sp.absolute() == path
    assert build_nar_based_store_path(bytes.fromhex(nar_sha256), name.encode()) == sp
    assert build_ca_path(name, "sha256", bytes.fromhex(nar_sha256), recursive=True) == sp
    assert StorePath.from_absolute_path(path) == sp


@pytest.mark.parametrize("name", [".hidden", "my file", "", "a/b", "caf\u00e9", "x" * 212, b"\xff"])
def test_nar_based_store_path_invalid_name_raises_not_panics(name: str | bytes) -> None:
    with pytest.raises(StorePathError):
        build_nar_based_store_path(bytes(32), name)


def test_nar_based_store_path_needs_sha256() -> None:
    with pytest.raises(InvalidRequest, match="32 bytes, got 20"):
        build_nar_based_store_path(bytes(20), "foo")


def test_build_text_path_with_zero_references() -> None:
    fingerprint = "text:sha256:" + hashlib.sha256(b"bar").hexdigest() + ":/nix/store:foo"
    sp = build_text_path("foo", b"bar")
    assert sp.absolute() == "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
    assert sp.digest == compress_hash(hashlib.sha256(fingerprint.encode()).digest())


def test_build_text_path_with_non_zero_references() -> None:
    foo = "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
    sp = build_text_path("baz", foo.encode(), [foo])
    assert sp.absolute() == "/nix/store/5xd714cbfnkz02h2vbsj4fm03x3f15nf-baz"
    assert build_text_path("baz", foo.encode(), [StorePath.from_absolute_path(foo)]) == sp
    assert build_store_path_from_fingerprint("text:" + foo, hashlib.sha256(foo.encode()).digest(), "baz") == sp


def test_build_sha1_path() -> None:
    sp = build_ca_path("bar", "sha1", bytes.fromhex("0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33"), recursive=True)
    assert sp.absolute() == "/nix/store/mp57d33657rf34lzvlbpfa1gjfv5gmpg-bar"


def test_build_store_path_with_non_zero_references() -> None:
    digest = nixbase32.decode("1xqkzcb3909fp07qngljr4wcdnrh1gdam1m2n29i6hhrxlmkgkv1")
    sp = build_ca_path(
        "baz", "sha256", digest, recursive=True, references=["/nix/store/dxwkwjzdaq7ka55pkk252gh32bgpmql4-foo"]
    )
    assert sp.absolute() == "/nix/store/s89y431zzhmdn3k8r96rvakryddkpv2v-baz"


def test_references_are_sorted_like_nix() -> None:
    a = "/nix/store/dxwkwjzdaq7ka55pkk252gh32bgpmql4-foo"
    b = "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
    digest = bytes(32)
    assert build_ca_path("x", "sha256", digest, True, [a, b]) == build_ca_path("x", "sha256", digest, True, [b, a])
    assert build_ca_path("x", "sha256", digest, True, [a]) != build_ca_path("x", "sha256", digest, True)
    assert build_ca_path("x", "sha256", digest, True, self_reference=True) != build_ca_path("x", "sha256", digest, True)


def test_flat_and_non_sha256_paths_use_output_out() -> None:
    digest = hashlib.sha256(b"hello").digest()
    inner = hashlib.sha256(f"fixed:out:sha256:{digest.hex()}:".encode()).digest()
    assert build_ca_path("h", "sha256", digest, recursive=False) == build_store_path_from_fingerprint(
        "output:out", inner, "h"
    )
    inner_r = hashlib.sha256(f"fixed:out:r:sha1:{bytes(20).hex()}:".encode()).digest()
    assert build_ca_path("h", "sha1", bytes(20), recursive=True) == build_store_path_from_fingerprint(
        "output:out", inner_r, "h"
    )


def test_build_ca_path_errors() -> None:
    with pytest.raises(InvalidRequest, match="references"):
        build_ca_path("x", "sha1", bytes(20), True, ["/nix/store/dxwkwjzdaq7ka55pkk252gh32bgpmql4-foo"])
    with pytest.raises(InvalidRequest, match="sha1 digest of 32 bytes"):
        build_ca_path("x", "sha1", bytes(32), True)
    with pytest.raises(InvalidRequest):
        build_ca_path("x", "blake3", bytes(32), True)
    with pytest.raises(StorePathError):
        build_ca_path("x", "sha256", bytes(32), True, ["not-a-store-path"])


@pytest.mark.nix
def test_nar_based_store_path_against_nix(tmp_path: Path) -> None:
    """build_nar_based_store_path(nix's own NAR hash, name) is the path ``nix-store --add-fixed`` gives."""
    from tests.nix import make_nasty_tree, nix_add_fixed, nix_hash, nix_store_dir

    trees = [make_nasty_tree(tmp_path / "nasty-tree", big_file_size=1000)]
    for name, data in [("f", b""), ("a-b_c.d+e?f=g", b"x"), ("x" * 211, b"long name")]:
        (tmp_path / name).write_bytes(data)
        trees.append(tmp_path / name)
    with nix_store_dir() as store:
        for tree in trees:
            expected = nix_add_fixed(tree, store=store)
            ours = build_nar_based_store_path(bytes.fromhex(nix_hash(tree)), tree.name)
            assert ours.absolute() == expected
