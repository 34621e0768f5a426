"""``.narinfo`` files: parsing by Nix's rules, writing as Nix expects, ed25519 signatures.

Parsing follows Nix 2.8's ``NarInfo::NarInfo`` (src/libstore/nar-info.cc):
each line is ``Key: value\\n`` (the value starts two bytes after the colon),
unknown keys are ignored, ``References`` may appear once, ``Compression``
defaults to ``bzip2``, and ``StorePath``, ``NarHash``, ``URL`` and a non-zero
``NarSize`` are required. Hashes are accepted in the forms Nix's
``Hash::parseAnyPrefixed`` takes (``sha256:`` + nixbase32 / hex / base64, or
SRI ``sha256-<base64>``).

Signatures are Nix's: ed25519 over the fingerprint
``1;<store path>;sha256:<nixbase32 narhash>;<narsize>;<refs>`` where refs are
the absolute reference paths, sorted, comma-separated. Keys are Nix's files
from ``nix-store --generate-binary-cache-key``: ``name:base64(secret)`` with
the 64-byte secret = 32-byte seed + 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tvixd.castore import nixbase32
from tvixd.castore.storepath import STORE_DIR, StorePath
from tvixd.errors import InvalidRequest

SHA256_LEN = 32


class NarInfoError(InvalidRequest):
    """A .narinfo (or one of its fields) that Nix would call corrupt."""


def parse_sha256(value: str, what: str) -> bytes:
    """A sha256 in any form Nix accepts for narinfo hashes; other algorithms are refused."""
    if value.startswith("sha256:"):
        rest = value[len("sha256:") :]
        try:
            if len(rest) == 52:
                return nixbase32.decode(rest)
            if len(rest) == 64:
                return bytes.fromhex(rest)
            if len(rest) == 44:
                raw = base64.b64decode(rest, validate=True)
                if len(raw) == SHA256_LEN:
                    return raw
        except (InvalidRequest, ValueError, binascii.Error):
            pass
        raise NarInfoError(f"{what} {value!r} is not a valid sha256 hash")
    if value.startswith("sha256-"):
        try:
            raw = base64.b64decode(value[len("sha256-") :], validate=True)
        except (ValueError, binascii.Error):
            raw = b""
        if len(raw) == SHA256_LEN:
            return raw
        raise NarInfoError(f"{what} {value!r} is not a valid sha256 hash")
    raise NarInfoError(f"{what} {value!r} is not a sha256 hash (expected 'sha256:<hash>')")


def format_sha256(digest: bytes) -> str:
    """``sha256:<nixbase32>``, the form Nix writes."""
    return "sha256:" + nixbase32.encode(digest)


@dataclass
class NarInfo:
    """The fields of a .narinfo that tvixd uses."""

    store_path: StorePath
    url: str
    nar_hash: bytes
    nar_size: int
    compression: str = "bzip2"
    references: list[str] = field(default_factory=list)
    """Basenames, as written in the file."""
    signatures: list[str] = field(default_factory=list)
    """``name:base64`` strings, as written in the file."""
    file_hash: bytes | None = None
    file_size: int | None = None
    deriver: str | None = None
    system: str | None = None
    ca: str | None = None

    # nixbase32 encoding costs ~40 us in Python; a served narinfo needs each value 2-3 times.
    @cached_property
    def absolute_path(self) -> str:
        """``/nix/store/<hash>-<name>``."""
        return self.store_path.absolute()

    @cached_property
    def nar_hash_text(self) -> str:
        """``sha256:<nixbase32>`` of the NAR."""
        return format_sha256(self.nar_hash)

    def to_text(self) -> str:
        """The file as Nix writes it: every line newline-terminated, References always present."""
        lines = [
            f"StorePath: {self.absolute_path}",
            f"URL: {self.url}",
            f"Compression: {self.compression}",
        ]
        if self.file_hash is not None:
            file_hash = self.nar_hash_text if self.file_hash == self.nar_hash else format_sha256(self.file_hash)
            lines.append(f"FileHash: {file_hash}")
        if self.file_size is not None:
            lines.append(f"FileSize: {self.file_size}")
        lines += [
            f"NarHash: {self.nar_hash_text}",
            f"NarSize: {self.nar_size}",
            "References: " + " ".join(sorted(self.references)),
        ]
        if self.deriver:
            lines.append(f"Deriver: {self.deriver}")
        if self.system:
            lines.append(f"System: {self.system}")
        lines += [f"Sig: {sig}" for sig in self.signatures]
        if self.ca:
            lines.append(f"CA: {self.ca}")
        return "".join(line + "\n" for line in lines)

    def fingerprint(self) -> str:
        """What Nix signs (``ValidPathInfo::fingerprint``)."""
        refs = ",".join(f"{STORE_DIR}/{r}" for r in sorted(self.references))
        return f"1;{self.absolute_path};{self.nar_hash_text};{self.nar_size};{refs}"


def fingerprint(store_path: StorePath, nar_hash: bytes, nar_size: int, references: list[str]) -> str:
    """``1;<path>;sha256:<nixbase32>;<size>;<sorted absolute refs, comma-separated>``."""
    return NarInfo(store_path=store_path, url="-", nar_hash=nar_hash, nar_size=nar_size,
                   references=list(references)).fingerprint()


def _uint(value: str, key: str) -> int:
    # Nix's string2Int<uint64_t>: optional digits only, fits 64 bits.
    if not value.isascii() or not value.isdigit() or int(value) >= 2**64:
        raise NarInfoError(f"narinfo {key} {value!r} is not an unsigned integer")
    return int(value)


def parse_narinfo(text: bytes) -> NarInfo:
    """Parse a .narinfo by Nix's rules; :class:`NarInfoError` (InvalidRequest) naming the field if corrupt."""
    try:
        s = text.decode()
    except UnicodeDecodeError as e:
        raise NarInfoError(f"narinfo is not valid UTF-8 at byte {e.start}") from None
    store_path = url = nar_hash = nar_size = None
    info: dict = {"references": [], "signatures": []}
    have_refs = False
    pos = 0
    while pos < len(s):
        colon = s.find(":", pos)
        if colon < 0:
            raise NarInfoError(f"narinfo line at byte {pos} has no ':'")
        key = s[pos:colon]
        eol = s.find("\n", colon + 2)
        if eol < 0:
            raise NarInfoError(f"narinfo line {key!r} is not newline-terminated")
        value = s[colon + 2 : eol]
        if key == "StorePath":
            try:
                store_path = StorePath.from_absolute_path(value)
            except InvalidRequest as e:
                raise NarInfoError(f"narinfo StorePath: {e}") from None
        elif key == "URL":
            url = value
        elif key == "Compression":
            info["compression"] = value
        elif key == "FileHash":
            info["file_hash"] = parse_sha256(value, "narinfo FileHash")
        elif key == "FileSize":
            info["file_size"] = _uint(value, key)
        elif key == "NarHash":
            nar_hash = parse_sha256(value, "narinfo NarHash")
        elif key == "NarSize":
            nar_size = _uint(value, key)
        elif key == "References":
            if have_refs:
                raise NarInfoError("narinfo has more than one References line")
            have_refs = True
            for ref in value.split(" "):
                if ref:
                    try:
                        StorePath.from_basename(ref)
                    except InvalidRequest as e:
                        raise NarInfoError(f"narinfo References: {e}") from None
                    info["references"].append(ref)
        elif key == "Deriver":
            if value != "unknown-deriver":
                try:
                    StorePath.from_basename(value)
                except InvalidRequest as e:
                    raise NarInfoError(f"narinfo Deriver: {e}") from None
                info["deriver"] = value
        elif key == "System":
            info["system"] = value
        elif key == "Sig":
            info["signatures"].append(value)
        elif key == "CA":
            if "ca" in info:
                raise NarInfoError("narinfo has more than one CA line")
            info["ca"] = value
        pos = eol + 1
    if not info.get("compression"):
        info["compression"] = "bzip2"
    missing = [
        k for k, v in (("StorePath", store_path), ("NarHash", nar_hash), ("URL", url), ("NarSize", nar_size)) if not v
    ]
    if missing:
        raise NarInfoError(f"narinfo lacks {', '.join(missing)} (or NarSize is 0)")
    info["references"] = sorted(set(info["references"]))
    return NarInfo(store_path=store_path, url=url, nar_hash=nar_hash, nar_size=nar_size, **info)


def parse_signature(sig: str) -> tuple[str, bytes]:
    """``name:base64(64 bytes)`` → (name, data); ``NarInfoError`` otherwise."""
    name, colon, data = sig.partition(":")
    if not colon or not name:
        raise NarInfoError(f"signature {sig!r} is not 'keyname:base64'")
    try:
        raw = base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        raise NarInfoError(f"signature {sig!r}: invalid base64") from None
    if len(raw) != 64:
        raise NarInfoError(f"signature {sig!r}: {len(raw)} bytes, an ed25519 signature has 64")
    return name, raw


class SigningKey:
    """A Nix binary cache secret key (``name:base64(seed + public key)``)."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        self.name = name
        self._private = private

    @classmethod
    def parse(cls, text: str, origin: str = "signing key") -> SigningKey:
        """Parse the file format of ``nix-store --generate-binary-cache-key``; checks the embedded public key."""
        name, colon, data = text.strip().partition(":")
        if not colon or not name:
            raise InvalidRequest(f"{origin}: expected 'keyname:base64' (nix-store --generate-binary-cache-key)")
        try:
            raw = base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error):
            raise InvalidRequest(f"{origin}: the key is not valid base64") from None
        if len(raw) != 64:
            raise InvalidRequest(f"{origin}: the secret key has {len(raw)} bytes, expected 64 (is it a public key?)")
        key = Ed25519PrivateKey.from_private_bytes(raw[:32])
        if key.public_key().public_bytes_raw() != raw[32:]:
            raise InvalidRequest(f"{origin}: the public half does not match the secret seed (corrupt key file)")
        return cls(name, key)

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        """Read and parse a secret key file."""
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidRequest(f"cannot read signing key {str(path)!r}: {e}") from None
        return cls.parse(text, f"signing key {str(path)!r}")

    def public_key(self) -> str:
        """``name:base64(public key)``, the form ``trusted-public-keys`` takes."""
        return f"{self.name}:{base64.b64encode(self._private.public_key().public_bytes_raw()).decode()}"

    def sign(self, fingerprint: str) -> str:
        """``name:base64(signature)``: one ``Sig`` value."""
        return f"{self.name}:{base64.b64encode(self._private.sign(fingerprint.encode())).decode()}"
