"""Nix store paths: parsing, validation and content-addressed construction (SPEC Part B §4.2-§4.4).

A store path basename is ``<nixbase32 of a 20-byte digest>-<name>``. Parsing follows
nix-compat's ``StorePath::from_bytes`` step by step (so errors come in the same order),
plus Nix's 211-byte name limit, which nix-compat lacked (SPEC Part A §5).

Paths are built from a *fingerprint* ``<type>:sha256:<hex>:/nix/store:<name>``,
sha256-hashed and XOR-folded to 20 bytes, exactly as Nix's ``makeStorePath``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Literal

from tvixd.castore import nixbase32
from tvixd.errors import InvalidRequest


def _sha256(data: bytes) -> bytes:
    """sha256 of ``data``; hashlib is imported on first use: reading store paths never hashes (start-up time)."""
    import hashlib

    return hashlib.sha256(data).digest()

STORE_DIR = "/nix/store"
STORE_DIR_WITH_SLASH = STORE_DIR + "/"
DIGEST_SIZE = 20
ENCODED_DIGEST_SIZE = nixbase32.encode_len(DIGEST_SIZE)  # 32
NAME_MAX = 211
"""Nix's ``StorePath::MaxPathLen``: longer names are refused by C++ Nix, so by us too."""

_NAME_OK = re.compile(rb"[A-Za-z0-9+\-._?=]*")

ErrorKind = Literal[
    "InvalidLength", "InvalidHashEncoding", "MissingDash", "InvalidName", "NameTooLong", "MissingStoreDir"
]


class StorePathError(InvalidRequest):
    """A string is not a valid store path. ``kind`` names the rule, as nix-compat's error variants do."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _show(value: bytes) -> str:
    """Input for an error message: text if it decodes, shortened if hostilely long."""
    text = value.decode("utf-8", "backslashreplace")
    return repr(text) if len(text) <= 300 else repr(text[:300]) + f"... ({len(value)} bytes)"


def _as_bytes(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return os.fsencode(value)
    return bytes(value)


def validate_name(name: str | bytes) -> str:
    """Check a store path name (the part after ``<hash>-``) and return it as ``str``.

    Nix's rules, in Nix's order: not empty, at most 211 bytes, not starting with
    ``.``, only ASCII letters, digits and ``+-._?=``. The error names the first
    offending byte and its position.
    """
    raw = _as_bytes(name)
    if not raw:
        raise StorePathError("InvalidLength", "invalid store path name: empty")
    if len(raw) > NAME_MAX:
        raise StorePathError(
            "NameTooLong", f"invalid store path name {_show(raw)}: {len(raw)} bytes, longer than {NAME_MAX}"
        )
    if raw[0] == 0x2E:
        raise StorePathError("InvalidName", f"invalid store path name {_show(raw)}: it starts with '.'")
    good = _NAME_OK.match(raw).end()  # type: ignore[union-attr]  # matches the empty string at least
    if good != len(raw):
        raise StorePathError(
            "InvalidName",
            f"invalid store path name {_show(raw)}: character {bytes([raw[good]])!r} at position {good} "
            "is not allowed (only A-Z a-z 0-9 + - . _ ? =)",
        )
    return raw.decode("ascii")


class StorePath:
    """A parsed store path: 20-byte ``digest`` and validated ``name`` (immutable, hashable).

    ``str()`` is the basename ``<hash>-<name>``; :meth:`absolute` adds ``/nix/store/``.
    Equality compares digest and name; ordering compares the digest only (as the
    reference does). A plain class, not a frozen dataclass: ``dataclasses`` imports
    ``inspect``, 12-17 ms of the start-up of every command that reads a store path.
    """

    __slots__ = ("digest", "name")
    digest: bytes
    name: str

    def __init__(self, digest: bytes, name: str) -> None:
        if len(digest) != DIGEST_SIZE:
            raise StorePathError(
                "InvalidLength", f"invalid store path digest: {len(digest)} bytes, expected {DIGEST_SIZE}"
            )
        object.__setattr__(self, "digest", bytes(digest))
        object.__setattr__(self, "name", validate_name(name))

    def __setattr__(self, attr: str, value: object) -> None:
        raise AttributeError(f"StorePath is immutable: cannot set {attr!r}")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"StorePath is immutable: cannot delete {attr!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StorePath):
            return NotImplemented
        return self.digest == other.digest and self.name == other.name

    def __hash__(self) -> int:
        return hash((self.digest, self.name))

    @classmethod
    def from_basename(cls, basename: bytes | str) -> StorePath:
        """Parse ``<32 nixbase32 chars>-<name>`` (no ``/nix/store/`` prefix, no sub-path)."""
        raw = _as_bytes(basename)
        if len(raw) < ENCODED_DIGEST_SIZE + 2:
            raise StorePathError(
                "InvalidLength", f"invalid store path {_show(raw)}: too short for '<32-char hash>-<name>'"
            )
        try:
            digest = nixbase32.decode(raw[:ENCODED_DIGEST_SIZE])
        except nixbase32.Nixbase32Error as exc:
            raise StorePathError(
                "InvalidHashEncoding", f"invalid store path {_show(raw)}: hash encoding is invalid: {exc}"
            ) from None
        if raw[ENCODED_DIGEST_SIZE] != 0x2D:
            raise StorePathError("MissingDash", f"invalid store path {_show(raw)}: dash missing between hash and name")
        try:
            name = validate_name(raw[ENCODED_DIGEST_SIZE + 1 :])
        except StorePathError as exc:
            raise StorePathError(exc.kind, f"invalid store path {_show(raw)}: {exc}") from None
        return cls._trusted(digest, name)

    @classmethod
    def _trusted(cls, digest: bytes, name: str) -> StorePath:
        """Construct from parts already validated (skips ``__init__``'s checks: parsing is on hot paths)."""
        self = object.__new__(cls)
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "name", name)
        return self

    @classmethod
    def from_absolute_path(cls, path: str | bytes) -> StorePath:
        """Parse ``/nix/store/<hash>-<name>`` exactly (a sub-path or trailing slash is an error)."""
        raw = _as_bytes(path)
        prefix = STORE_DIR_WITH_SLASH.encode()
        if not raw.startswith(prefix):
            raise StorePathError("MissingStoreDir", f"{_show(raw)} is not in the store directory {STORE_DIR}")
        return cls.from_basename(raw[len(prefix) :])

    @classmethod
    def from_absolute_path_full(cls, path: str | bytes) -> tuple[StorePath, str]:
        """Parse ``/nix/store/<hash>-<name>[/sub/path]`` into the store path and the sub-path.

        The sub-path is rebuilt from its components like Rust's ``Path::components``:
        repeated slashes, ``.`` components and a trailing slash disappear (``..`` is
        kept, it can never match a Directory entry); ``""`` when there is none.
        """
        raw = _as_bytes(path)
        prefix = STORE_DIR_WITH_SLASH.encode()
        if not raw.startswith(prefix):
            raise StorePathError("MissingStoreDir", f"{_show(raw)} is not in the store directory {STORE_DIR}")
        first, _, rest = raw[len(prefix) :].partition(b"/")
        store_path = cls.from_basename(first)
        parts = [p for p in rest.split(b"/") if p and p != b"."]
        return store_path, os.fsdecode(b"/".join(parts))

    def absolute(self) -> str:
        """``/nix/store/<hash>-<name>``."""
        return f"{STORE_DIR_WITH_SLASH}{self}"

    def __str__(self) -> str:
        return f"{nixbase32.encode(self.digest)}-{self.name}"

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __lt__(self, other: StorePath) -> bool:
        return self.digest < other.digest

    def __le__(self, other: StorePath) -> bool:
        return self.digest <= other.digest

    def __gt__(self, other: StorePath) -> bool:
        return self.digest > other.digest

    def __ge__(self, other: StorePath) -> bool:
        return self.digest >= other.digest


# --- building store paths ------------------------------------------------------------------------------


def compress_hash(digest: bytes, size: int = DIGEST_SIZE) -> bytes:
    """XOR-fold ``digest`` to ``size`` bytes (byte i goes onto byte i mod size), as Nix's ``compressHash``."""
    out = bytearray(size)
    for i, b in enumerate(digest):
        out[i % size] ^= b
    return bytes(out)


def build_store_path_from_fingerprint(path_type: str, inner_sha256: bytes, name: str | bytes) -> StorePath:
    """Nix's ``makeStorePath``: fingerprint ``<type>:sha256:<hex>:/nix/store:<name>``, sha256, fold.

    ``name`` is validated first (the reference validates after hashing and panics).
    """
    valid_name = validate_name(name)
    if len(inner_sha256) != 32:
        raise InvalidRequest(f"sha256 digest must be 32 bytes, got {len(inner_sha256)}")
    fingerprint = f"{path_type}:sha256:{inner_sha256.hex()}:{STORE_DIR}:{valid_name}"
    return StorePath._trusted(compress_hash(_sha256(fingerprint.encode())), valid_name)


def _make_type(base: str, references: Iterable[str | StorePath], self_reference: bool) -> str:
    """``<base>[:<ref>...][:self]``; references as absolute paths, sorted (Nix keeps them in a sorted set)."""
    refs = sorted((r if isinstance(r, StorePath) else StorePath.from_absolute_path(r)).absolute() for r in references)
    return ":".join([base, *refs, *(["self"] if self_reference else [])])


HASH_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}


def build_ca_path(
    name: str | bytes,
    algo: str,
    digest: bytes,
    recursive: bool,
    references: Iterable[str | StorePath] = (),
    self_reference: bool = False,
) -> StorePath:
    """A fixed-output (content-addressed) store path, as Nix's ``makeFixedOutputPath``.

    Recursive sha256 ("NAR hash") paths are ``source`` paths and may have references;
    every other kind hashes ``fixed:out:[r:]<algo>:<hex>:`` into an ``output:out``
    path and may not.
    """
    if HASH_SIZES.get(algo) != len(digest):
        raise InvalidRequest(f"invalid {algo} digest of {len(digest)} bytes for store path {name!r}")
    refs = list(references)
    if recursive and algo == "sha256":
        return build_store_path_from_fingerprint(_make_type("source", refs, self_reference), digest, name)
    if refs or self_reference:
        raise InvalidRequest(f"store path {name!r}: only recursive sha256 content addresses may have references")
    inner = f"fixed:out:{'r:' if recursive else ''}{algo}:{digest.hex()}:".encode()
    return build_store_path_from_fingerprint("output:out", _sha256(inner), name)


def build_text_path(name: str | bytes, content: bytes, references: Iterable[str | StorePath] = ()) -> StorePath:
    """The store path of a text file (``builtins.toFile``): type ``text[:refs]``, sha256 of the content."""
    return build_store_path_from_fingerprint(
        _make_type("text", references, False), _sha256(content), name
    )


def build_nar_based_store_path(nar_sha256: bytes, name: str | bytes) -> StorePath:
    """The store path ``nix-store --add-fixed --recursive sha256`` gives a tree whose NAR has this sha256.

    Raises :class:`StorePathError` for a name Nix would refuse (``.hidden``, ``my file``),
    where the reference panics.
    """
    return build_store_path_from_fingerprint("source", nar_sha256, name)
