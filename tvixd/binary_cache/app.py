"""The binary cache as a WSGI application: Nix's HTTP binary cache protocol over a tvixd store.

Reads (what ``nix copy --from`` / substituters do):

- ``GET /nix-cache-info``;
- ``GET``/``HEAD /<hash>.narinfo`` (404 missing, 400 malformed hash);
- ``GET``/``HEAD /nar/<store hash>-<nixbase32 nar sha256>.nar[.zst]``: the NAR
  of that store path, if it still has that NAR hash. The URL names the store
  path, so no index from NAR hash to path is needed. ``Content-Length`` is
  always sent for uncompressed responses, ``Range`` is honoured, and zstd is
  used for ``.nar.zst`` or when ``Accept-Encoding`` asks for it (then the
  length is unknown in advance and the body is chunked).

Writes (what ``nix copy --to http://...`` sends): ``PUT /nix-cache-info``
(accepted, ignored), ``PUT /nar/...`` (.nar, .nar.xz, .nar.bz2, .nar.zst),
``PUT /<hash>.narinfo``, and optional files (``.ls`` listings, ``log/``,
``realisations/``, ``build-trace-v2/``, ``debuginfo/``) which are accepted
and discarded. See :mod:`tvixd.binary_cache.uploads` for how a NAR waits for
its narinfo.

Truncation safety: a NAR response starts only after :func:`render.plan_nar`
has checked the whole closure (every directory and blob present, sizes
right); failures give a 5xx with no body. Corruption found mid-stream (a blob
no longer hashing to its name) aborts the connection: the body then falls
short of the announced ``Content-Length`` (or, for chunked zstd, lacks the
final chunk), which every HTTP client including Nix reports as an error.

Blocking work (store lookups, blob reads, hashing, compression, parsing
uploads) goes through ``offload(fn, *args)``: the gevent server passes its
hub's thread pool, so the event loop only shuffles bytes between sockets and
threads and several large downloads proceed in parallel; with ``offload``
left as the default the app runs everything inline (any WSGI server).
"""

from __future__ import annotations

import base64
import bz2
import hashlib
import lzma
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog

from tvixd.binary_cache import render
from tvixd.binary_cache.ingest import ingest_nar
from tvixd.binary_cache.narinfo import NarInfo, NarInfoError, SigningKey, parse_narinfo, parse_signature
from tvixd.binary_cache.uploads import PendingNar, PendingUploads, SpoolingPutter
from tvixd.castore import nixbase32
from tvixd.castore.storepath import STORE_DIR, StorePath
from tvixd.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    ResourceExhausted,
    StorageError,
    TvixError,
    Unavailable,
)
from tvixd.proto.pathinfo_pb2 import NARInfo, Node, PathInfo
from tvixd.store import Store

log = structlog.get_logger("tvixd.binary_cache")

Offload = Callable[..., Any]
StartResponse = Callable[..., Any]

_NARINFO_RE = re.compile(r"^/([0-9a-z]{32})\.narinfo$")
_NAR_RE = re.compile(r"^/nar/([0-9a-z]{32})-([0-9a-z]{52})\.nar(\.zst)?$")
_UPLOAD_NAR_RE = re.compile(r"^/nar/([A-Za-z0-9._+-]+?)\.nar(\.xz|\.bz2|\.zst|\.[a-z0-9]+)?$")
_OPTIONAL_UPLOAD_RE = re.compile(
    r"^/(?:[0-9a-z]{32}\.ls|(?:log|realisations|build-trace-v2|debuginfo)/[^/]+(?:/[^/]+)*)$"
)
_NIX32_CHARS = set(nixbase32.ALPHABET)

_UPLOAD_CHUNK = 1 << 20
MAX_NARINFO_SIZE = 1 << 20
"""Largest narinfo body accepted (a narinfo with thousands of references is ~100 KiB)."""

_STATUS_TEXT = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


class _NeedsCalculation(Exception):
    """Raised by an inline narinfo lookup that would have to render the NAR."""


class HttpError(Exception):
    """An error response with a status and a one-line message (sent as text/plain)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status_for(exc: TvixError, *, content_missing_is_server_error: bool = False) -> int:
    """One table from error class to HTTP status."""
    if isinstance(exc, NotFound):
        return 500 if content_missing_is_server_error else 404
    if isinstance(exc, InvalidRequest | FailedPrecondition):
        return 400
    if isinstance(exc, Unavailable):
        return 503
    if isinstance(exc, ResourceExhausted):
        return 507
    return 500  # DataLoss, StorageError, anything else


def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) for a single satisfiable byte range; None to serve everything.

    Multiple ranges and malformed headers are ignored (RFC 9110 allows serving
    the whole representation); an unsatisfiable range raises ``HttpError(416)``.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, dash, last = header[len("bytes=") :].strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            raise HttpError(416, "empty suffix range")
        return max(size - n, 0), size
    start = int(first)
    end = int(last) + 1 if last else size
    if end <= start and last:
        return None  # invalid (last < first): ignored
    if start >= size:
        raise HttpError(416, f"range starts at {start}, the NAR has {size} bytes")
    return start, min(end, size)


def _wants_zstd(accept_encoding: str | None) -> bool:
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "zstd":
            q = params.strip().replace(" ", "")
            return not (q.startswith("q=") and float(q[2:] or 0) == 0)
    return False


class _OffloadedIterator:
    """A WSGI response iterable that produces each chunk through ``offload`` (i.e. in the thread pool).

    Errors after the headers went out are logged here and re-raised: the server
    then closes the connection, leaving the body short of its Content-Length.
    """

    def __init__(self, gen: Iterator[bytes], offload: Offload, what: str) -> None:
        self._gen = gen
        self._offload = offload
        self._what = what
        self._sent = 0

    def __iter__(self) -> _OffloadedIterator:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = self._offload(next, self._gen, None)
        except Exception as e:
            log.error("aborting response mid-stream", what=self._what, sent=self._sent, error=str(e),
                      error_type=type(e).__name__)
            raise
        if chunk is None:
            raise StopIteration
        self._sent += len(chunk)
        return chunk

    def close(self) -> None:
        self._gen.close()


def _zstd_stream(chunks: Iterable[bytes], level: int) -> Iterator[bytes]:
    import zstandard

    cobj = zstandard.ZstdCompressor(level=level).compressobj()
    for chunk in chunks:
        out = cobj.compress(chunk)
        if out:
            yield out
    tail = cobj.flush()
    if tail:
        yield tail


class BinaryCacheApp:
    """The WSGI callable. One instance serves one store; it is safe to use from many greenlets and threads."""

    def __init__(
        self,
        store: Store,
        signing_keys: Iterable[SigningKey] = (),
        priority: int = 40,
        offload: Offload = _inline,
        chunk_size: int = render.DEFAULT_CHUNK_SIZE,
        zstd_level: int = 3,
        upload_tmp_dir: str | None = None,
        max_pending_uploads: int = 1024,
        pending_upload_ttl: float = 3600.0,
        inline_lookups: bool = False,
    ) -> None:
        self.store = store
        self.signing_keys = list(signing_keys)
        self.priority = priority
        self.offload = offload
        self.chunk_size = chunk_size
        self.zstd_level = zstd_level
        self.upload_tmp_dir = upload_tmp_dir
        self.pending = PendingUploads(max_pending_uploads, pending_upload_ttl)
        self.inline_lookups = inline_lookups
        """Answer narinfo lookups on the calling (hub) thread: only for local path info backends (memory,
        SQLite in WAL mode: a read never waits for a writer), where a lookup takes microseconds and the
        two thread switches of ``offload`` would cost more than the lookup itself."""

    # -- WSGI entry ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        try:
            if method in ("GET", "HEAD"):
                return self._get(environ, start_response, path, head=method == "HEAD")
            if method == "PUT":
                return self._put(environ, start_response, path)
            raise HttpError(405, f"method {method} not allowed")
        except HttpError as e:
            return self._error(start_response, e.status, str(e), environ)
        except TvixError as e:
            status = _status_for(e)
            return self._error(start_response, status, str(e), environ)
        except Exception as e:  # a bug: log it with its traceback, answer 500
            log.exception("internal error", method=method, path=path)
            return self._error(start_response, 500, f"internal error: {type(e).__name__}", environ)

    def _error(self, start_response: StartResponse, status: int, message: str, environ: dict) -> list[bytes]:
        if status >= 500:
            log.error("request failed", method=environ.get("REQUEST_METHOD"), path=environ.get("PATH_INFO"),
                      status=status, error=message)
        body = (message + "\n").encode("utf-8", "backslashreplace")
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        if isinstance(exc_range := environ.get("tvixd.nar_size"), int) and status == 416:
            headers.append(("Content-Range", f"bytes */{exc_range}"))
        if status == 405:
            headers.append(("Allow", "GET, HEAD, PUT"))
        start_response(f"{status} {_STATUS_TEXT.get(status, '')}", headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    @staticmethod
    def _ok(start_response: StartResponse, body: bytes, content_type: str, head: bool) -> list[bytes]:
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [] if head else [body]

    # -- reads -----------------------------------------------------------------------------------

    def _get(self, environ: dict, start_response: StartResponse, path: str, head: bool) -> Iterable[bytes]:
        if path == "/nix-cache-info":
            body = f"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {self.priority}\n".encode()
            return self._ok(start_response, body, "text/x-nix-cache-info", head)
        if path.endswith(".narinfo"):
            m = _NARINFO_RE.match(path)
            digest = _decode_store_hash(m.group(1) if m else None, path)
            text = self._lookup_narinfo(digest)
            if text is None:
                raise HttpError(404, f"no store path with hash {m.group(1)}")
            return self._ok(start_response, text.encode(), "text/x-nix-narinfo", head)
        if path.startswith("/nar/"):
            return self._get_nar(environ, start_response, path, head)
        raise HttpError(404, f"{path} not found")

    def _lookup_narinfo(self, digest: bytes) -> str | None:
        if self.inline_lookups:
            try:
                return self.narinfo_text(digest, may_calculate=False)
            except _NeedsCalculation:
                pass  # a PathInfo without NAR size/hash: rendering the NAR is blocking work
        return self.offload(self.narinfo_text, digest)

    def narinfo_text(self, digest: bytes, may_calculate: bool = True) -> str | None:
        """The .narinfo served for the store path with this 20-byte digest, or None if absent (blocking)."""
        path_info = self.store.path_info.get(digest)
        if path_info is None:
            return None
        info = self._narinfo_for(path_info, may_calculate)
        for key in self.signing_keys:
            sig = key.sign(info.fingerprint())
            if sig not in info.signatures:
                info.signatures.append(sig)
        return info.to_text()

    def _narinfo_for(self, path_info: PathInfo, may_calculate: bool = True) -> NarInfo:
        root = path_info.node
        kind = root.WhichOneof("node")
        if kind is None:
            raise DataLoss("stored PathInfo has no root node")
        store_path = StorePath.from_basename(getattr(root, kind).name)
        nar_size, nar_sha256 = path_info.narinfo.nar_size, path_info.narinfo.nar_sha256
        if not path_info.HasField("narinfo") or len(nar_sha256) != 32 or not nar_size:
            if not may_calculate:
                raise _NeedsCalculation
            nar_size, nar_sha256 = self.store.path_info.calculate_nar(root)
        names = list(path_info.narinfo.reference_names)
        if len(names) != len(path_info.references):
            raise DataLoss(
                f"PathInfo of {store_path} has {len(path_info.references)} references but "
                f"{len(names)} reference names: cannot write its narinfo"
            )
        sigs = [f"{s.name}:{base64.b64encode(s.data).decode()}" for s in path_info.narinfo.signatures]
        info = NarInfo(
            store_path=store_path,
            url="",
            compression="none",
            nar_hash=nar_sha256,
            nar_size=nar_size,
            file_hash=nar_sha256,
            file_size=nar_size,
            references=sorted(names),
            signatures=sigs,
        )
        store_hash = info.absolute_path[len(STORE_DIR) + 1 : len(STORE_DIR) + 33]
        info.url = f"nar/{store_hash}-{info.nar_hash_text[len('sha256:') :]}.nar"
        return info

    def _plan(self, digest: bytes, nar_sha256: bytes) -> render.NarPlan | None:
        """Look the path up and check its whole NAR can be produced (blocking). None: no such NAR."""
        path_info = self.store.path_info.get(digest)
        if path_info is None:
            return None
        info = self._narinfo_for(path_info)
        if info.nar_hash != nar_sha256:
            return None  # the path exists but has (now) a different NAR: this URL is stale
        root = Node()
        root.CopyFrom(path_info.node)
        plan = render.plan_nar(root, self.store.blob, self.store.directory)
        if plan.size != info.nar_size:
            raise DataLoss(
                f"{info.store_path}: the NAR renders to {plan.size} bytes, its PathInfo says {info.nar_size}"
            )
        return plan

    def _get_nar(self, environ: dict, start_response: StartResponse, path: str, head: bool) -> Iterable[bytes]:
        m = _NAR_RE.match(path)
        if m is None:
            raise HttpError(404, f"{path} not found (NAR URLs are nar/<store hash>-<nar hash>.nar[.zst])")
        digest = _decode_store_hash(m.group(1), path)
        try:
            nar_sha256 = nixbase32.decode(m.group(2))
        except InvalidRequest as e:
            raise HttpError(400, f"{path}: malformed NAR hash: {e}") from None
        try:
            plan = self.offload(self._plan, digest, nar_sha256)
        except (NotFound, DataLoss) as e:
            # The path exists but its content is incomplete or corrupt: a server-side problem.
            raise HttpError(500, f"cannot produce {path}: {e}") from None
        if plan is None:
            raise HttpError(404, f"{path} not found")
        zstd_file = m.group(3) is not None
        range_header = environ.get("HTTP_RANGE")
        encode = not zstd_file and range_header is None and _wants_zstd(environ.get("HTTP_ACCEPT_ENCODING"))
        headers = [("Content-Type", "application/x-nix-nar"), ("Cache-Control", "max-age=31536000, immutable")]
        what = f"{path} ({plan.size} bytes)"
        if zstd_file or encode:
            if encode:
                headers += [("Content-Encoding", "zstd"), ("Vary", "Accept-Encoding")]
            start_response("200 OK", headers)
            if head:
                return []
            chunks = _zstd_stream(render.render_nar(plan, self.store.blob, chunk_size=self.chunk_size),
                                  self.zstd_level)
            return _OffloadedIterator(chunks, self.offload, what)
        headers.append(("Accept-Ranges", "bytes"))
        environ["tvixd.nar_size"] = plan.size
        span = parse_range(range_header, plan.size)
        if span is None:
            start, end = 0, plan.size
            start_response("200 OK", [*headers, ("Content-Length", str(plan.size))])
        else:
            start, end = span
            headers += [("Content-Length", str(end - start)), ("Content-Range", f"bytes {start}-{end - 1}/{plan.size}")]
            start_response("206 Partial Content", headers)
        if head or start == end:
            return []
        gen = render.render_nar(plan, self.store.blob, start, end, chunk_size=self.chunk_size)
        return _OffloadedIterator(gen, self.offload, what)

    # -- writes ----------------------------------------------------------------------------------

    def _put(self, environ: dict, start_response: StartResponse, path: str) -> Iterable[bytes]:
        if path == "/nix-cache-info":
            self._drain(environ)
            return self._no_content(start_response)
        if path.endswith(".narinfo"):
            m = _NARINFO_RE.match(path)
            digest = _decode_store_hash(m.group(1) if m else None, path)
            body = self._read_small(environ, MAX_NARINFO_SIZE, "max narinfo size")
            self._put_narinfo(digest, body)
            return self._no_content(start_response)
        if path.startswith("/nar/"):
            self._put_nar(environ, path)
            return self._no_content(start_response)
        if _OPTIONAL_UPLOAD_RE.match(path):
            self._drain(environ)
            return self._no_content(start_response)
        raise HttpError(404, f"cannot upload to {path}")

    @staticmethod
    def _no_content(start_response: StartResponse) -> list[bytes]:
        start_response("204 No Content", [])
        return []

    @staticmethod
    def _body_chunks(environ: dict) -> Iterator[bytes]:
        stream = environ["wsgi.input"]
        while True:
            data = stream.read(_UPLOAD_CHUNK)
            if not data:
                return
            yield data

    def _drain(self, environ: dict) -> None:
        for _ in self._body_chunks(environ):
            pass

    def _read_small(self, environ: dict, limit: int, limit_name: str) -> bytes:
        parts, total = [], 0
        for data in self._body_chunks(environ):
            total += len(data)
            if total > limit:
                raise HttpError(413, f"request body larger than the {limit_name} of {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    def _put_nar(self, environ: dict, path: str) -> None:
        m = _UPLOAD_NAR_RE.match(path)
        if m is None:
            raise HttpError(400, f"{path}: NAR uploads go to nar/<name>.nar[.xz|.bz2|.zst]")
        ext = m.group(2) or ""
        compression = {"": "none", ".xz": "xz", ".bz2": "bzip2", ".zst": "zstd"}.get(ext)
        if compression is None:
            raise HttpError(400, f"{path}: unsupported compression {ext[1:]!r} (use none, xz, bzip2 or zstd)")
        url = path[1:]
        # Spool the request body (read cooperatively here) to an anonymous temp file, hashing it;
        # then decompress and parse it in one blocking call.
        spool = tempfile.TemporaryFile(dir=self.upload_tmp_dir)
        try:
            file_hash = hashlib.sha256()

            def write(data: bytes) -> None:
                file_hash.update(data)
                spool.write(data)

            file_size = 0
            for data in self._body_chunks(environ):
                file_size += len(data)
                self.offload(write, data)
            file_sha256 = file_hash.digest()
            name = m.group(1)
            if len(name) == 52 and set(name) <= _NIX32_CHARS and nixbase32.encode(file_sha256) != name:
                raise HttpError(
                    400, f"{path}: the uploaded file hashes to sha256:{nixbase32.encode(file_sha256)}, not to its name"
                )
            pending = self.offload(self._ingest_upload, spool, compression, url, file_size, file_sha256)
        finally:
            spool.close()
        self.pending.add(pending)
        log.info("NAR uploaded", url=url, nar_size=pending.nar_size, file_size=file_size, compression=compression)

    def _ingest_upload(self, spool: Any, compression: str, url: str, file_size: int, file_sha256: bytes) -> PendingNar:
        import zstandard

        spool.seek(0)
        if compression == "xz":
            stream: Any = lzma.LZMAFile(spool)
        elif compression == "bzip2":
            stream = bz2.BZ2File(spool)
        elif compression == "zstd":
            stream = zstandard.ZstdDecompressor().stream_reader(spool, read_across_frames=True, closefd=False)
        else:
            stream = spool
        putter = SpoolingPutter(self.upload_tmp_dir)
        try:
            result = ingest_nar(stream.read, self.store.blob, putter, chunk_size=self.chunk_size)
        except (lzma.LZMAError, OSError, EOFError, zstandard.ZstdError) as e:
            # What the decompressors raise for corrupt or truncated input (bz2: OSError/EOFError).
            raise InvalidRequest(f"{url}: cannot decompress the {compression} upload: {e}") from None
        finally:
            if stream is not spool:
                stream.close()
        return PendingNar(url=url, root=result.root, nar_size=result.nar_size, nar_sha256=result.nar_sha256,
                          file_size=file_size, file_sha256=file_sha256, spool=putter)

    def _put_narinfo(self, digest: bytes, body: bytes) -> None:
        info = parse_narinfo(body)
        if info.store_path.digest != digest:
            raise HttpError(400, f"narinfo for {info.store_path} uploaded under the hash {nixbase32.encode(digest)}")
        signatures = [NARInfo.Signature(name=n, data=d) for n, d in map(parse_signature, info.signatures)]
        pending = self.pending.take(info.url.lstrip("/"))
        if pending is None:
            raise HttpError(400, f"narinfo of {info.store_path}: its NAR {info.url} was not uploaded (or expired)")
        try:
            problems = []
            if pending.nar_size != info.nar_size:
                problems.append(f"NarSize {info.nar_size} but the uploaded NAR has {pending.nar_size} bytes")
            if pending.nar_sha256 != info.nar_hash:
                problems.append(
                    f"NarHash sha256:{nixbase32.encode(info.nar_hash)} but the uploaded NAR hashes to "
                    f"sha256:{nixbase32.encode(pending.nar_sha256)}"
                )
            if info.file_size is not None and info.file_size != pending.file_size:
                problems.append(f"FileSize {info.file_size} but {pending.file_size} bytes were uploaded")
            if info.file_hash is not None and info.file_hash != pending.file_sha256:
                problems.append("FileHash differs from the uploaded file's sha256")
            if problems:
                raise HttpError(400, f"narinfo of {info.store_path} does not match {info.url}: " + "; ".join(problems))
            self.offload(self._commit, info, pending, signatures)
        finally:
            pending.discard()
        log.info("path added", store_path=info.store_path.absolute(), nar_size=info.nar_size,
                 references=len(info.references), signatures=len(signatures))

    def _commit(self, info: NarInfo, pending: PendingNar, signatures: list[NARInfo.Signature]) -> None:
        """Make the uploaded NAR visible: its directories in one putter, then the PathInfo (blocking)."""
        root = Node()
        root.CopyFrom(pending.root)
        kind = root.WhichOneof("node")
        getattr(root, kind).name = str(info.store_path).encode()
        if not pending.spool.empty:
            committed = pending.spool.replay(self.store.directory)
            if committed != root.directory.digest:
                raise StorageError(f"committed directory {committed} is not the NAR's root {root.directory.digest}")
        refs = sorted(info.references)
        path_info = PathInfo(
            node=root,
            references=[StorePath.from_basename(r).digest for r in refs],
            narinfo=NARInfo(nar_size=info.nar_size, nar_sha256=info.nar_hash, signatures=signatures,
                            reference_names=refs),
        )
        self.store.path_info.put(path_info)

    def close(self) -> None:
        """Drop pending uploads (their spools)."""
        self.pending.clear()


def _decode_store_hash(text: str | None, path: str) -> bytes:
    if text is None:
        raise HttpError(400, f"{path}: expected /<32-character nixbase32 store path hash>.narinfo")
    try:
        return nixbase32.decode(text)
    except InvalidRequest as e:
        raise HttpError(400, f"{path}: malformed store path hash: {e}") from None


__all__ = ["BinaryCacheApp", "HttpError", "NarInfoError", "parse_range"]
