"""The metadata database: one SQLAlchemy engine per store, SQLite (embedded default) or PostgreSQL.

SQLite is opened for use from several threads of one process: ``check_same_thread=False``, WAL
journal, a busy timeout, ``secure_delete`` (deleted rows are overwritten, so a purged user's ids
do not linger in free pages) and ``BEGIN IMMEDIATE`` transactions (writers queue up instead of
failing half-way on a lock upgrade).
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    database = parsed.database
    in_memory = not database or database == ":memory:" or database.startswith("file::memory:")
    if not in_memory:
        _precreate_private_file(Path(database).expanduser())
        parsed = parsed.set(database=str(Path(database).expanduser()))
    engine = create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": 30},
        **({"poolclass": StaticPool} if in_memory else {}),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # let the "begin" hook below open transactions
        cur = dbapi_connection.cursor()
        if not in_memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL" if not in_memory else "PRAGMA synchronous=OFF")
        cur.execute("PRAGMA secure_delete=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def checkpoint_sqlite(engine: Engine) -> None:
    """Fold the WAL back into the database file and truncate it (so deleted rows leave no copy there)."""
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cur.close()
    finally:
        raw.close()


def _precreate_private_file(path: Path) -> None:
    """Create the SQLite file owner-only before SQLite does (its -wal/-shm files copy that mode)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
