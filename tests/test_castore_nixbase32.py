"""nixbase32 (SPEC Part B §4.1): the reference's vectors, error cases, and round trips
checked against an independent bit-by-bit formulation."""

from __future__ import annotations

import random

import pytest

from tvixd.castore import nixbase32
from tvixd.castore.nixbase32 import ALPHABET, Nixbase32Error, decode, decode_len, encode, encode_len
from tvixd.errors import InvalidRequest

VECTORS = [
    ("", ""),
    ("1f", "0z"),
    ("8a12321522fd91efbd60ebb2481af88580f61600", "00bgd045z0d4icpbc2yyz4gx48ak44la"),
    (
        "b3a24de97a8fdbc835b9833169501030b8977031bcb54b3b3ac13740f846ab30",
        "0c5b8vw40dy178xlpddw65q9gf1h2186jcc3p4swinwggbllv8mk",
    ),
    ("00" * 20, "0" * 32),
    ("ff" * 20, "z" * 32),
    ("a594524a29a594524a29a594524a29a594524a29", "5" * 32),
    ("2184104208218410420821841042082184104208", "1" * 32),
]


@pytest.mark.parametrize(("hexbytes", "encoded"), VECTORS)
def test_encode_vectors(hexbytes: str, encoded: str) -> None:
    assert encode(bytes.fromhex(hexbytes)) == encoded


@pytest.mark.parametrize(("hexbytes", "encoded"), VECTORS)
def test_decode_vectors(hexbytes: str, encoded: str) -> None:
    assert decode(encoded) == bytes.fromhex(hexbytes)
    assert decode(encoded.encode()) == bytes.fromhex(hexbytes)


def test_lengths() -> None:
    assert encode_len(20) == 32
    assert encode_len(32) == 52
    assert encode_len(1) == 2
    assert encode_len(0) == 0
    assert decode_len(32) == 20
    assert decode_len(52) == 32
    assert decode_len(0) == 0
    for n in range(200):
        assert encode_len(n) == -(-8 * n // 5)
        assert decode_len(encode_len(n)) == n


def test_alphabet() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 32
    assert set(ALPHABET).isdisjoint("eotu")
    assert ALPHABET == "".join(sorted(ALPHABET))


@pytest.mark.parametrize("bad", ["zz", "c0", "z" * 52, "2" + "0" * 51, "h" + "0" * 12])
def test_decode_nonzero_carry(bad: str) -> None:
    with pytest.raises(Nixbase32Error, match="nonzero carry"):
        decode(bad)


@pytest.mark.parametrize(
    ("bad", "char", "pos"),
    [
        ("0" * 31 + "u", "0x75", 31),
        ("00bgd045z0d4icpbc2yyz4gx48aku4la", "0x75", 28),
        ("00bgd045z0d4icpbc2yy-net-tools-", "0x2d", 20),
        ("E" + "0" * 31, "0x45", 0),  # upper case is not in the alphabet
        ("0" * 30 + "t0", "0x74", 30),
        ("0" * 31 + "\n", "0x0a", 31),
        ("0" * 31 + "\x00", "0x00", 31),
    ],
)
def test_decode_bad_character(bad: str, char: str, pos: int) -> None:
    with pytest.raises(Nixbase32Error, match=f"character {char} at position {pos} "):
        decode(bad)
    with pytest.raises(Nixbase32Error, match="not in alphabet"):
        decode(bad.encode())


def test_decode_non_ascii_str() -> None:
    with pytest.raises(Nixbase32Error, match="character 'é' at position 1 not in alphabet"):
        decode("0é")
    with pytest.raises(Nixbase32Error, match="not in alphabet"):
        decode("0é".encode())


def test_int_parser_syntax_is_not_accepted() -> None:
    """decode() hands digits to int(x, 32); nothing int() tolerates beyond digits may pass."""
    for bad in ["0_00", "+000", "-000", " 000", "000 ", "00\t0", "0X00"]:
        with pytest.raises(Nixbase32Error):
            decode(bad)


@pytest.mark.parametrize("length", [1, 3, 6, 9, 11, 14, 17, 19, 22, 25, 27, 30, 33, 51, 54])
def test_decode_impossible_length(length: int) -> None:
    with pytest.raises(Nixbase32Error, match=f"no input encodes to {length} characters"):
        decode("0" * length)


def test_impossible_lengths_are_exactly_those_no_encoding_produces() -> None:
    produced = {encode_len(n) for n in range(100)}
    for m in range(encode_len(99) + 1):
        if m in produced:
            assert len(decode("0" * m)) == decode_len(m)
        else:
            with pytest.raises(Nixbase32Error):
                decode("0" * m)


def test_error_is_invalid_request_not_index_error() -> None:
    assert issubclass(Nixbase32Error, InvalidRequest)
    rng = random.Random(1)
    for _ in range(3000):
        s = "".join(rng.choice(ALPHABET + "eotuE-/ ") for _ in range(rng.randrange(0, 60)))
        try:
            decode(s)
        except Nixbase32Error:
            pass


def test_error_message_is_bounded() -> None:
    with pytest.raises(Nixbase32Error) as info:
        decode("0" * 10**6 + "u")
    assert len(str(info.value)) < 300
    assert "1000001 characters" in str(info.value)


# --- an independent formulation: the reference's bit-by-bit algorithm -------------------------------


def reference_encode(data: bytes) -> str:
    """nix-compat's encoder: character k takes bits [5(L-1-k), 5(L-1-k)+5) of the byte string."""
    length = encode_len(len(data))
    out = []
    for n in range(length - 1, -1, -1):
        b = n * 5
        i, j = b // 8, b % 8
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        out.append(ALPHABET[c & 0x1F])
    return "".join(out)


def reference_decode(s: str) -> bytes:
    """nix-compat's decoder: characters from the right, OR-ed into bytes with carry; error on overflow."""
    out = bytearray(decode_len(len(s)))
    for n, ch in enumerate(reversed(s)):
        digit = ALPHABET.index(ch)
        b = n * 5
        i, j = b // 8, b % 8
        out[i] |= (digit << j) & 0xFF
        carry = digit >> (8 - j)
        if i + 1 < len(out):
            out[i + 1] |= carry
        elif carry:
            raise ValueError("nonzero carry")
    return bytes(out)


def bigint_encode(data: bytes) -> str:
    """The §4.1 formulation: V little-endian, base-32 digits most significant first, zero-padded."""
    v = int.from_bytes(data, "little")
    digits = []
    while v:
        v, d = divmod(v, 32)
        digits.append(ALPHABET[d])
    return "".join(reversed(digits)).rjust(encode_len(len(data)), "0")


@pytest.mark.parametrize("n", range(65))
def test_round_trip_random(n: int) -> None:
    rng = random.Random(n)
    samples = [bytes(n), b"\xff" * n] + [rng.randbytes(n) for _ in range(40)]
    for data in samples:
        enc = encode(data)
        assert len(enc) == encode_len(n)
        assert enc == reference_encode(data) == bigint_encode(data)
        assert decode(enc) == data
        assert reference_decode(enc) == data


@pytest.mark.parametrize("m", [2, 4, 5, 7, 8, 32, 52])
def test_decode_agrees_with_reference_on_random_strings(m: int) -> None:
    """For lengths an encoder produces, our decode accepts and rejects exactly what the reference does."""
    rng = random.Random(m)
    for _ in range(500):
        s = "".join(rng.choice(ALPHABET) for _ in range(m))
        try:
            expected = reference_decode(s)
        except ValueError:
            with pytest.raises(Nixbase32Error, match="nonzero carry"):
                decode(s)
        else:
            assert decode(s) == expected


def test_module_exports() -> None:
    assert {"encode", "decode", "encode_len", "decode_len", "Nixbase32Error"} <= set(dir(nixbase32))


# --- against real Nix ----------------------------------------------------------------------------------


@pytest.mark.nix
@pytest.mark.parametrize(("algo", "size"), [("md5", 16), ("sha1", 20), ("sha256", 32), ("sha512", 64)])
def test_against_nix_hash(algo: str, size: int) -> None:
    """``nix-hash --to-base32`` / ``--to-base16`` agree with encode/decode on random digests."""
    from tests.nix import run_nix

    rng = random.Random(size)
    digests = [bytes(size), b"\xff" * size] + [rng.randbytes(size) for _ in range(60)]
    out = run_nix("nix-hash", "--type", algo, "--to-base32", *(d.hex() for d in digests)).decode().split()
    assert out == [encode(d) for d in digests]
    back = run_nix("nix-hash", "--type", algo, "--to-base16", *out).decode().split()
    assert [bytes.fromhex(h) for h in back] == [decode(s) for s in out] == digests
