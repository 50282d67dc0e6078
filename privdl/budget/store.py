"""Where a BudgetLedger keeps its records: the SQLite and PostgreSQL stores and their schema.

A store opens (or creates) the ledger's tables, checks that an existing database is a
privdl ledger of the schema version this privdl reads, and hands out transactions:
``with store.transaction(write=True) as tx: tx.rows(sql, params)``. The ledger
(:mod:`privdl.budget.ledger`) holds the domain (budgets, reservations, composition) and
writes its queries against :class:`Transaction`; a store knows nothing of budgets.

- :class:`SQLiteStore`: stdlib ``sqlite3``, one autocommit connection with explicit
  ``BEGIN`` / ``BEGIN IMMEDIATE`` (SQLite's single write lock), WAL journal, full fsync;
  the file is marked with an ``application_id`` header, read before any table, so a
  foreign or corrupt file is refused before anything is written.
- :class:`PostgresStore`: SQLAlchemy + psycopg (``pip install 'privdl[postgres]'``),
  READ COMMITTED plus a row lock per dataset (``SELECT ... FOR UPDATE``).

:func:`open_store` chooses the backend from a path or URL: a path or ``sqlite:///PATH``
is SQLite, ``postgresql://`` (or ``postgres://``, ``postgresql+psycopg://``) is PostgreSQL.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from privdl._optional import require
from privdl.errors import InputError, UsageError
from privdl.io import disk_full_error, is_disk_full

__all__ = [
    "APPLICATION",
    "RUN_COLUMNS",
    "SCHEMA_VERSION",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "Transaction",
    "open_store",
]

SCHEMA_VERSION = 2
# schema version -> the statements that bring a ledger of that version to the next one
# (version 2: the privacy unit of every dataset budget and run; old rows are "record")
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE privdl_datasets ADD COLUMN privacy_unit TEXT NOT NULL DEFAULT 'record'",
        "ALTER TABLE privdl_datasets ADD COLUMN max_records_per_user INTEGER",
        "ALTER TABLE privdl_runs ADD COLUMN privacy_unit TEXT NOT NULL DEFAULT 'record'",
        "ALTER TABLE privdl_runs ADD COLUMN charge TEXT",
    ),
}
APPLICATION = "privdl-budget-ledger"
# SQLite header field that marks the file as ours ("pdlb"), checked before any table.
_APPLICATION_ID = 0x70646C62
_BUSY_TIMEOUT_S = 120.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS privdl_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS privdl_datasets (
        dataset_id TEXT PRIMARY KEY,
        epsilon DOUBLE PRECISION NOT NULL,
        delta DOUBLE PRECISION NOT NULL,
        accountant TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        privacy_unit TEXT NOT NULL DEFAULT 'record',
        max_records_per_user INTEGER)""",
    """CREATE TABLE IF NOT EXISTS privdl_runs (
        run_id TEXT PRIMARY KEY,
        dataset_id TEXT NOT NULL REFERENCES privdl_datasets(dataset_id),
        created_at TEXT NOT NULL,
        settled_at TEXT,
        status TEXT NOT NULL,
        model_name TEXT NOT NULL,
        privdl_version TEXT NOT NULL,
        opacus_version TEXT NOT NULL,
        accountant TEXT NOT NULL,
        delta DOUBLE PRECISION NOT NULL,
        requested_epsilon DOUBLE PRECISION,
        epsilon DOUBLE PRECISION NOT NULL,
        history TEXT NOT NULL,
        privacy_unit TEXT NOT NULL DEFAULT 'record',
        charge TEXT)""",
    "CREATE INDEX IF NOT EXISTS privdl_runs_dataset ON privdl_runs (dataset_id, created_at)",
)
# The column order of a run row, as RunRecord takes its fields.
RUN_COLUMNS = (
    "run_id, dataset_id, created_at, settled_at, status, model_name, privdl_version, "
    "opacus_version, accountant, delta, requested_epsilon, epsilon, history, privacy_unit, charge"
)


class Transaction(Protocol):
    """One open transaction: run a statement with ``:name`` parameters, get its rows."""

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]: ...


class Store(Protocol):
    """A ledger's database; ``location`` names it in messages (never with a password)."""

    location: str

    def transaction(self, *, write: bool) -> AbstractContextManager[Transaction]: ...

    def lock_dataset_sql(self) -> str:
        """The dataset-row query that also takes the dataset's write lock."""
        ...

    def close(self) -> None: ...


class _SQLiteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, dict(params or {})).fetchall())


def _writable(path: Path) -> bool:
    """Whether SQLite can write the ledger and its journal files next to it."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


_FULL_BELOW_BYTES = 256 * 1024  # less free space than this: an I/O error means a full disk


class SQLiteStore:
    """stdlib sqlite3, autocommit connection with explicit BEGIN, WAL journal."""

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        self.location = str(path)
        self._create = create
        self._thread_lock = threading.RLock()
        if not path.parent.is_dir():
            raise InputError(f"ledger {path}: folder {path.parent} does not exist")
        fresh = not path.exists() or path.stat().st_size == 0
        if fresh and not create:
            raise InputError(f"no budget ledger at {path}")
        if path.exists() and not path.is_file():
            raise InputError(f"ledger {path} is not a file")
        # a ledger this object creates is removed again if its first write fails
        self._created = not os.path.lexists(path)
        self._written = False
        try:
            self._conn = sqlite3.connect(
                str(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise InputError(f"cannot open ledger {path}: {type(exc).__name__}") from exc
        try:
            self._check_or_init(fresh)
        except sqlite3.DatabaseError as exc:
            error = self._error(exc)
            self._conn.close()
            self._remove_if_created(exc)
            raise error from exc
        except BaseException:
            self._conn.close()
            raise

    def _disk_full(self, exc: BaseException) -> bool:
        """SQLite's "database or disk is full", or an I/O error on a full file system
        (growing the WAL index on a full tmpfs fails as SQLITE_IOERR_SHMSIZE)."""
        if is_disk_full(exc):
            return True
        name = str(getattr(exc, "sqlite_errorname", ""))
        if not name.startswith("SQLITE_IOERR"):
            return False
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < _FULL_BELOW_BYTES

    def _remove_if_created(self, exc: BaseException) -> None:
        """After a disk-full failure, remove the ledger files this object created, unless
        something was written to them since (by this object or another process)."""
        if not (self._created and not self._written and self._disk_full(exc)):
            return
        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as probe:
                tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "privdl_datasets" in tables and probe.execute(
                    "SELECT count(*) FROM privdl_datasets"
                ).fetchone()[0]:
                    return
        except sqlite3.Error:
            pass  # unreadable: nothing of value in it
        finally:
            with suppress(NameError, sqlite3.Error):
                probe.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def _error(self, exc: sqlite3.Error) -> InputError:
        text = str(exc).lower()
        if self._disk_full(exc):
            return disk_full_error(self.path)
        if "locked" in text or "busy" in text:
            return InputError(
                f"ledger {self.path} is locked by another process for more than {_BUSY_TIMEOUT_S:.0f} s"
            )
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return InputError(f"{self.path} is not a privdl budget ledger (corrupt or not SQLite)")
        if (
            "readonly" in text
            or "read-only" in text
            or ("unable to open" in text and not _writable(self.path))
        ):
            return InputError(f"ledger {self.path} is read-only")
        return InputError(f"ledger {self.path}: database error ({type(exc).__name__})")

    def _check_or_init(self, fresh: bool) -> None:
        conn = self._conn
        # Reading the header first makes a non-SQLite file fail here, before any write.
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id != _APPLICATION_ID:
            if tables:
                raise InputError(f"{self.path} is not a privdl budget ledger (foreign SQLite file)")
            if not fresh and not self._create:
                raise InputError(f"no budget ledger at {self.path} (empty SQLite file)")
            self._init_schema()
            return
        conn.execute("PRAGMA synchronous=FULL")
        _migrate(self.transaction, self.location)
        _check_meta(self.transaction(write=False), self.location)

    def _init_schema(self) -> None:
        conn = self._conn
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. a network file system without shared memory
            conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have initialized the file while we waited for the lock.
            if conn.execute("PRAGMA application_id").fetchone()[0] != _APPLICATION_ID:
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO privdl_meta (key, value) VALUES ('application', :a), ('schema_version', :v)",
                    {"a": APPLICATION, "v": str(SCHEMA_VERSION)},
                )
                conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Transaction]:
        # One connection per ledger object: threads sharing it take turns.
        with self._thread_lock:
            yield from self._transaction(write=write)

    def _transaction(self, *, write: bool) -> Iterator[Transaction]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.DatabaseError as exc:
            raise self._failed(exc) from exc
        try:
            yield _SQLiteTransaction(conn)
        except sqlite3.DatabaseError as exc:
            with suppress(sqlite3.Error):  # a full disk may have rolled it back already
                conn.execute("ROLLBACK")
            raise self._failed(exc) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise self._failed(exc) from exc
        if write:
            self._written = True

    def _failed(self, exc: sqlite3.Error) -> InputError:
        """The error for ``exc``; a ledger just created and never written is removed."""
        error = self._error(exc)
        if self._created and not self._written and self._disk_full(exc):
            self._conn.close()
            self._remove_if_created(exc)
        return error

    def lock_dataset_sql(self) -> str:
        # BEGIN IMMEDIATE already holds SQLite's single write lock.
        return "SELECT epsilon, delta, accountant FROM privdl_datasets WHERE dataset_id = :d"

    def close(self) -> None:
        self._conn.close()


class _SQLAlchemyTransaction:
    def __init__(self, conn: Any, text: Any) -> None:
        self._conn = conn
        self._text = text

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        result = self._conn.execute(self._text(sql), dict(params or {}))
        return [tuple(r) for r in result.fetchall()] if result.returns_rows else []


class PostgresStore:
    """PostgreSQL through SQLAlchemy; READ COMMITTED plus a row lock per dataset."""

    def __init__(self, url: str, *, create: bool) -> None:
        sqlalchemy: Any = require("sqlalchemy", "postgres")
        require("psycopg", "postgres")
        self._sa: Any = sqlalchemy
        driver_url = "postgresql+psycopg://" + url.split("://", 1)[1]
        # The location shown in messages never includes the password.
        self.location = str(sqlalchemy.engine.make_url(driver_url).render_as_string(True))
        self.location = self.location.replace("postgresql+psycopg://", "postgresql://")
        self._engine = sqlalchemy.create_engine(
            driver_url, isolation_level="READ COMMITTED", pool_pre_ping=True
        )
        try:
            with self._engine.begin() as conn:
                tables = set(sqlalchemy.inspect(conn).get_table_names())
            if "privdl_meta" not in tables:
                if {"privdl_datasets", "privdl_runs"} & tables:
                    raise InputError(f"{self.location} is not a privdl budget ledger")
                if not create:
                    raise InputError(f"no budget ledger at {self.location}")
                self._init_schema()
            _migrate(self.transaction, self.location, lock="SELECT pg_advisory_xact_lock(7064686)")
            _check_meta(self.transaction(write=False), self.location)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise InputError(
                f"cannot use ledger {self.location}: database error ({type(exc).__name__})"
            ) from exc

    def _init_schema(self) -> None:
        sa = self._sa
        with self._engine.begin() as conn:
            # One creator at a time; the others see the finished schema.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7064686)"))
            for stmt in _SCHEMA:
                conn.execute(sa.text(stmt))
            conn.execute(
                sa.text(
                    "INSERT INTO privdl_meta (key, value) VALUES ('application', :a), "
                    "('schema_version', :v) ON CONFLICT (key) DO NOTHING"
                ),
                {"a": APPLICATION, "v": str(SCHEMA_VERSION)},
            )

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Transaction]:
        sa = self._sa
        try:
            with self._engine.begin() as conn:
                yield _SQLAlchemyTransaction(conn, sa.text)
        except sa.exc.SQLAlchemyError as exc:
            raise InputError(f"ledger {self.location}: database error ({type(exc).__name__})") from exc

    def lock_dataset_sql(self) -> str:
        return "SELECT epsilon, delta, accountant FROM privdl_datasets WHERE dataset_id = :d FOR UPDATE"

    def close(self) -> None:
        self._engine.dispose()


def _migrate(transaction: Any, location: str, *, lock: str | None = None) -> None:
    """Bring a ledger of an older schema version to :data:`SCHEMA_VERSION`, in one write
    transaction (another process migrating at the same time waits, then finds it done).
    The migrations only add columns whose defaults keep every old row's meaning."""
    with transaction(write=False) as tx:
        version = _schema_version(tx)
    if version is None or version >= SCHEMA_VERSION or version not in _MIGRATIONS:
        return  # not ours, current, or unknown: _check_meta says which
    with transaction(write=True) as tx:
        if lock is not None:
            tx.rows(lock)
        version = _schema_version(tx)
        while version is not None and version < SCHEMA_VERSION and version in _MIGRATIONS:
            for stmt in _MIGRATIONS[version]:
                tx.rows(stmt)
            version += 1
            tx.rows("UPDATE privdl_meta SET value = :v WHERE key = 'schema_version'", {"v": str(version)})


def _schema_version(tx: Transaction) -> int | None:
    try:
        rows = tx.rows("SELECT value FROM privdl_meta WHERE key = 'schema_version'")
    except Exception:  # no meta table: not a ledger (_check_meta refuses it)
        return None
    try:
        return int(rows[0][0]) if rows else None
    except (TypeError, ValueError):
        return None


def _check_meta(tx_cm: AbstractContextManager[Transaction], location: str) -> None:
    try:
        with tx_cm as tx:
            meta = {str(k): str(v) for k, v in tx.rows("SELECT key, value FROM privdl_meta")}
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{location} is not a privdl budget ledger (no ledger tables)") from exc
    if meta.get("application") != APPLICATION:
        raise InputError(f"{location} is not a privdl budget ledger")
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise InputError(
            f"ledger {location} has schema version {version}; this privdl reads version {SCHEMA_VERSION}"
        )


def open_store(url_or_path: str | os.PathLike[str], *, create: bool) -> Store:
    """The store for a SQLite path, ``sqlite:///PATH`` or ``postgresql://...`` URL.

    Raises:
        UsageError: a URL of another scheme.
        InputError: not a privdl ledger, or it cannot be opened (see the stores).
    """
    text = os.fspath(url_or_path)
    if text.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return PostgresStore(text, create=create)
    if text.startswith("sqlite:///"):
        return SQLiteStore(Path(text[len("sqlite:///") :]), create=create)
    if "://" in text:
        raise UsageError(
            "ledger location must be a file path, sqlite:///PATH or postgresql://...; "
            f"got scheme {text.split('://', 1)[0]!r}"
        )
    return SQLiteStore(Path(text), create=create)
