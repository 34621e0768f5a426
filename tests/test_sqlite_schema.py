"""The SQLite schema is plain SQL now; stores whose schema sqlite-utils created must keep opening unchanged."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tvixd_env
from tests.fixtures import DIRECTORY_A, DIRECTORY_A_DIGEST
from tvixd.directoryservice.from_addr import from_addr
from tvixd.sqlite import SCHEMA_VERSION, SqliteDatabase


def sqlite_utils_store(path: Path) -> None:
    """A version-1 store exactly as the previous code (tvixd.sqlite before plain SQL) created it."""
    sqlite_utils = pytest.importorskip("sqlite_utils")  # a test dependency only since the plain-SQL schema
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
    db["directories"].create({"digest": bytes, "data": bytes}, pk="digest", not_null=["data"], strict=True)
    db["path_infos"].create({"digest": bytes, "data": bytes}, pk="digest", not_null=["data"], strict=True)
    db["nar_cache"].create({"node_key": bytes, "nar_size": int, "nar_sha256": bytes}, pk="node_key",
                           not_null=["nar_size", "nar_sha256"], strict=True)  # fmt: skip
    conn.execute("PRAGMA user_version=1")
    conn.close()


def schema(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_fresh_schema_is_the_one_sqlite_utils_made(tmp_path: Path):
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    sqlite_utils_store(old)
    SqliteDatabase(str(new)).close()
    assert SCHEMA_VERSION == 1
    assert schema(new) == schema(old)
    assert [row[1] for row in schema(new) if row[0] == "table"] == ["directories", "nar_cache", "path_infos"]


def test_a_store_made_by_sqlite_utils_opens_and_works(tmp_path: Path):
    path = tmp_path / "old.sqlite"
    sqlite_utils_store(path)
    before = schema(path)
    svc = from_addr(f"sqlite://{path}")
    svc.put(DIRECTORY_A)
    assert svc.get(DIRECTORY_A_DIGEST) == DIRECTORY_A
    svc.close()
    assert schema(path) == before
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_the_strict_schema_rejects_wrong_types(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    SqliteDatabase(str(path)).close()
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO directories (digest, data) VALUES (?, ?)", (b"d", "text, not a blob"))
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO nar_cache (node_key, nar_size, nar_sha256) VALUES (?, NULL, ?)", (b"k", b"h"))


def test_creating_a_store_does_not_import_sqlite_utils(tmp_path: Path):
    db = str(tmp_path / "fresh.sqlite")
    prog = f"import sys\nfrom tvixd.sqlite import SqliteDatabase\nSqliteDatabase({db!r}).close()\n"
    prog += "print('sqlite_utils' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, check=False,
                       env=tvixd_env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "False\n"
    assert len(schema(tmp_path / "fresh.sqlite")) >= 3
