"""The SQLite database shared by the directory and path info services (``sqlite:///abs/file``).

One file may hold both services' tables and be opened at the same time by
several processes (the daemon, ``import``, the binary cache, ``mount``) and
many threads:

- WAL mode, so readers never block the writer and vice versa; writers queue
  on SQLite's lock for up to ``busy_timeout`` seconds, after which the call
  fails with ``Unavailable`` (transient: retry later), never a traceback.
- One connection per thread (``sqlite3`` connections must not be shared
  between threads while in use), all closed by :meth:`SqliteDatabase.close`.
- ``synchronous=NORMAL``: in WAL mode a crash of the process never loses a
  commit, and a power loss can only drop the most recent commits *in commit
  order* — each commit is a whole directory upload or one path info, so the
  store never becomes inconsistent (a path info is committed after its
  directories). FULL would cost one fsync per commit.
- The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS`
  (plain SQL) run in one ``BEGIN IMMEDIATE`` transaction, so two processes
  opening a fresh file at once cannot both migrate it.

``sqlite://`` (no path) is a temporary database in a fresh temp directory,
removed on close (or at exit).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator

from tvixd.errors import DataLoss, ResourceExhausted, StorageError, TvixError, Unavailable

BUSY_TIMEOUT = 30.0
"""Seconds a writer waits for another writer (any process) before failing ``Unavailable``."""


# Plain SQL, not sqlite-utils (which made version 1): importing sqlite_utils took ~0.3 s (it imports numpy
# whenever installed), paid by the first command on every new store. The text is exactly what
# sqlite-utils (4.2) wrote, so stores made by either code have the same schema in sqlite_master
# (tests/test_sqlite_schema.py compares them).
_MIGRATION_1 = (
    """CREATE TABLE IF NOT EXISTS "directories" (
   "digest" BLOB PRIMARY KEY,
   "data" BLOB NOT NULL
) STRICT""",
    """CREATE TABLE IF NOT EXISTS "path_infos" (
   "digest" BLOB PRIMARY KEY,
   "data" BLOB NOT NULL
) STRICT""",
    """CREATE TABLE IF NOT EXISTS "nar_cache" (
   "node_key" BLOB PRIMARY KEY,
   "nar_size" INTEGER NOT NULL,
   "nar_sha256" BLOB NOT NULL
) STRICT""",
)
"""Directories by digest, path infos by store path digest, the CalculateNAR cache."""

MIGRATIONS: list[tuple[str, ...]] = [_MIGRATION_1]
"""Migration ``i`` (its SQL statements) brings the schema from version ``i`` to ``i + 1``.
Append only; never edit a released one."""
SCHEMA_VERSION = len(MIGRATIONS)

_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 5, 6, 11, 13, 26


def classify(e: sqlite3.Error, what: str, path: str) -> TvixError:
    """The TvixError for a sqlite3 error: locked → Unavailable, full → ResourceExhausted, corrupt → DataLoss."""
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(e)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text:
        return Unavailable(f"{what}: database {path} is locked by another writer (busy timeout expired): {text}")
    if code == _SQLITE_FULL:
        return ResourceExhausted(f"{what}: database {path} is full (disk full?): {text}")
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return DataLoss(f"{what}: database {path} is corrupt: {text}")
    return StorageError(f"{what}: database {path}: {text}")


class SqliteDatabase:
    """A SQLite file with per-thread connections, the current schema, and error classification."""

    def __init__(self, path: str | None, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self._tmp_dir: str | None = None
        if path is None:
            import shutil  # these three only for sqlite:// (a throw-away database): not at every command's start-up
            import tempfile
            import weakref

            self._tmp_dir = tempfile.mkdtemp(prefix="tvixd-sqlite-")
            path = os.path.join(self._tmp_dir, "store.sqlite")
            weakref.finalize(self, shutil.rmtree, self._tmp_dir, True)
        self.path = path
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        try:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the directory of database {path}: {e.strerror or e}") from e
        with self.errors("open"):
            self._migrate(self.conn())

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Turn sqlite3 errors inside the block into classified TvixErrors naming the file."""
        try:
            yield
        except sqlite3.Error as e:
            raise classify(e, what, self.path) from e

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StorageError(f"database {self.path} is closed")
        # Autocommit mode; transactions are explicit (see transaction()). check_same_thread=False only
        # so close() can close every thread's connection; each is used by its own thread alone.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            conn.close()
            raise
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL mode (persistent: a no-op once any connection did it).

        SQLite answers a journal-mode change that meets another connection's lock with "database is
        locked" at once, without its busy handler: several processes opening a fresh file together
        (``tvixd import`` twice, a daemon's serving processes) would fail. So this waits, like every
        other lock does, up to ``busy_timeout``.
        """
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @contextlib.contextmanager
    def transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: take the write lock up front, waiting at most busy_timeout)."""
        conn = self.conn()
        with self.errors(what):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database {self.path} has schema version {version}, newer than this tvixd knows ({SCHEMA_VERSION})"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for migration in MIGRATIONS[version:]:
                for statement in migration:  # one by one: executescript() would COMMIT first
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection; a temporary database is deleted."""
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()
        if self._tmp_dir is not None:
            import shutil  # imported already: __init__ did for this database

            shutil.rmtree(self._tmp_dir, ignore_errors=True)
