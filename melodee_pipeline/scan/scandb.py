"""The scan database: one SQLite file per run, its working set and audit trail.

`scanned_files` keeps the columns and types of the original Go scanner (times as INTEGER Unix
seconds, text as '' rather than NULL), so Go's processor could read one of our scan DBs. The
other tables record what later ops decided and did, so any op can be re-executed from the scan DB
alone.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import sqlite3
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from melodee_pipeline.diskspace import free_space
from melodee_pipeline.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS scanned_files (
    id INTEGER PRIMARY KEY,
    file_path TEXT NOT NULL,             -- display form (undecodable bytes backslash-escaped): two
                                         -- names can share one (`caf\xe9` spelt out, and 0xE9)
    path_bytes BLOB NOT NULL UNIQUE,     -- the exact file name, used for every file operation
    file_size INTEGER,
    file_hash TEXT NOT NULL DEFAULT '',
    modified_time INTEGER,               -- Unix seconds
    artist TEXT NOT NULL DEFAULT '', album_artist TEXT NOT NULL DEFAULT '',
    album TEXT NOT NULL DEFAULT '', title TEXT NOT NULL DEFAULT '',
    track_number INTEGER, disc_number INTEGER, year INTEGER, genre TEXT NOT NULL DEFAULT '',
    duration INTEGER, bitrate INTEGER, sample_rate INTEGER,
    is_valid INTEGER NOT NULL,
    validation_error TEXT NOT NULL DEFAULT '',
    album_group_hash TEXT NOT NULL DEFAULT '',
    album_group_id TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now'))  -- Unix seconds: the scan that wrote
                                         -- the row (a leftover's: the scan that refused it first)
    -- and ADDED_COLUMNS below
);
CREATE INDEX IF NOT EXISTS scanned_files_group ON scanned_files(album_group_id);
CREATE TABLE IF NOT EXISTS scan_info (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS skipped (
    path TEXT PRIMARY KEY, reason TEXT NOT NULL, file_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS albums (
    album_group_id TEXT PRIMARY KEY,
    artist TEXT, album TEXT, year INTEGER,
    staging_dir TEXT, status TEXT, error TEXT,
    tracks INTEGER, moved INTEGER, already_staged INTEGER, failed INTEGER, renamed INTEGER,
    total_size INTEGER, warnings TEXT, dry_run INTEGER
    -- and ADDED_ALBUM_COLUMNS below
);
CREATE TABLE IF NOT EXISTS staged_files (
    file_id INTEGER PRIMARY KEY REFERENCES scanned_files(id),
    album_group_id TEXT, destination TEXT, action TEXT, error TEXT
);
-- The other files (cover art, rip logs, cue sheets) of folders that hold media, and where they went.
CREATE TABLE IF NOT EXISTS scanned_extras (
    id INTEGER PRIMARY KEY,
    path_bytes BLOB NOT NULL UNIQUE, file_path TEXT NOT NULL, folder BLOB NOT NULL,
    file_size INTEGER, file_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS staged_extras (
    extra_id INTEGER PRIMARY KEY REFERENCES scanned_extras(id),
    album_group_id TEXT, destination TEXT, action TEXT, error TEXT
);
"""

PREFIX = "scan_"
PART = ".part"  # a scan DB being created: `.<scan_id>.db.part`
_SCAN_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")  # what `create` makes (and older versions did): never a path
# Columns of scanned_files added since the first scan DBs. `connect` adds them to new and old scan
# DBs alike, so a run re-executed after an upgrade can still read its own scan DB.
ADDED_COLUMNS = {
    "warnings": "TEXT NOT NULL DEFAULT ''",  # tag values dropped or cleaned, '; '-separated
    # The file's identity when scanned: a refused file with the same one is not read again.
    "mtime_ns": "INTEGER", "inode": "INTEGER", "ctime_ns": "INTEGER",
    "refused_since": "INTEGER",  # invalid files: Unix seconds when first refused unchanged
    "track_total": "INTEGER",  # the total-tracks tag, for the reviewer's album checks
    "has_cover": "INTEGER",  # 1: the tags hold an image; NULL: unknown
}
ADDED_ALBUM_COLUMNS = {  # the same for albums (a remembered refusals' file made before them included)
    "previous_scan_id": "TEXT",  # the album's sidecar stamp before this run restamped it: undo restores it
}


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    for table, added in (("scanned_files", ADDED_COLUMNS), ("albums", ADDED_ALBUM_COLUMNS)):
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, declaration in added.items():
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
    return conn


def open_existing(path: str | os.PathLike) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise UserError(f"scan database {path} does not exist (a scan DB file: `scan_<date>_<time>_<id>.db` in the scan DB directory)")
    conn = connect(path)
    if get_info(conn, "scan_id") is None:
        conn.close()
        raise UserError(f"{path} is not a scan database written by melodee-pipeline")
    return conn


def create(directory: str, now: datetime | None = None, template: str | None = None) -> tuple[str, str]:
    """Create a new scan DB in `directory`, empty or a copy of the scan DB `template` (the
    remembered refusals); returns (scan_id, path)."""
    now = now or datetime.now(timezone.utc)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UserError(f"scan DB directory {directory} cannot be created: {exc.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"scan DB directory {directory} is not writable")
    # The scan_id is the file name without `.db`, as Go names its scan DBs (plus a random part:
    # two scans may start in the same second).
    scan_id = f"{PREFIX}{now:%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"
    path = os.path.join(directory, f"{scan_id}.db")
    # Named only once its scan_id is in: a scan killed meanwhile leaves no scan DB that is not one.
    part = os.path.join(directory, f".{scan_id}.db{PART}")
    try:
        if template is not None:
            try:
                shutil.copyfile(template, part)
                _check_template(part)
            except (OSError, sqlite3.Error) as exc:
                delete(part)
                raise UnusableTemplate(str(exc)) from None
        conn = connect(part)
        try:
            with conn:
                set_info(conn, scan_id=scan_id, created_at=now.isoformat())
            # Into the file itself before its rename: a WAL left by a failed checkpoint at close (a
            # full disk) would keep the scan_id under the `.part` name.
            if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                raise sqlite3.OperationalError("its write-ahead log could not be checkpointed")
        finally:
            conn.close()
        os.rename(part, path)
    except (OSError, sqlite3.Error) as exc:
        delete(part)
        raise failure(path, exc, "cannot create ") from None
    return scan_id, path


def failure(path: str, exc: Exception, doing: str = "") -> UserError:
    """The scan DB `path` and what went wrong, with what its filesystem has left when that is
    the likely cause: SQLite says only `disk I/O error` when a full disk stops its WAL index."""
    message = f"{doing}scan DB {path}: {exc}"
    if (getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_FULL", "SQLITE_IOERR"))
            or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)):
        message += f" (its filesystem: {free_space(os.path.dirname(path))})"
    return UserError(message)


class UnusableTemplate(Exception):
    """The template could not be copied, or is not whole remembered refusals."""


def _check_template(path: str) -> None:
    """Raise sqlite3.DatabaseError unless `path` is whole and is remembered refusals (never a scan
    DB: those have a scan_id). Damaged pages would otherwise fail the scan that reads them, and
    every scan after it (`quick_check`: ~3 ms for 5,000 rows)."""
    with closing(sqlite3.connect(path)) as conn:
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("damaged (quick_check failed)")
        info = dict(conn.execute("SELECT key, value FROM scan_info"))
    if "refusals_of" not in info or "scan_id" in info:
        raise sqlite3.DatabaseError("not remembered refusals")


def oldest_first(directory: str) -> list[Path]:
    """The scan DBs in `directory` in creation order (name, then mtime): two scans in one second
    differ only in their random id."""
    dbs = [p for p in Path(directory).glob(f"{PREFIX}*.db") if p.is_file()]
    return sorted(dbs, key=lambda p: (p.name[: len(PREFIX) + 15], p.stat().st_mtime_ns))


def newest(directory: str) -> str:
    """The newest scan DB of a completed scan in `directory` (else the newest: one was killed)."""
    dbs = oldest_first(directory) if os.path.isdir(directory) else []
    if not dbs:
        raise UserError(f"no scan database in {directory}")
    for db in reversed(dbs):
        try:
            # Read-write: a read-only connection leaves the WAL files of a WAL database behind.
            with closing(sqlite3.connect(db)) as conn:
                if completed(conn):
                    return str(db)
        except sqlite3.Error:
            continue
    return str(dbs[-1])


def completed(conn: sqlite3.Connection) -> bool:
    """Whether the scan that wrote this scan DB walked and read everything (its counts are in): a
    killed one may list files that are gone among its leftovers."""
    return conn.execute("SELECT 1 FROM scan_info WHERE key = 'files'").fetchone() is not None


def delete(path: str) -> None:
    """Delete an SQLite file and its WAL files, those that exist."""
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


def prune(directory: str, keep: int, current: str) -> list[str]:
    """Delete all but the newest `keep` scan DBs; `current` is always kept. Scan DBs whose
    creation was killed (`.part`, older than an hour) go too."""
    dbs = [p for p in oldest_first(directory) if str(p) != current]
    removed = []
    for p in dbs[: max(0, len(dbs) - (keep - 1))]:
        delete(str(p))
        removed.append(str(p))
    for p in Path(directory).glob(f".{PREFIX}*.db{PART}"):
        try:
            if p.stat().st_mtime < time.time() - 3600:
                delete(str(p))  # with the -wal and -shm its connection left
                removed.append(str(p))
        except FileNotFoundError:
            pass
    return removed


def set_info(conn: sqlite3.Connection, **values: object) -> None:
    conn.executemany(
        "INSERT INTO scan_info(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [(k, None if v is None else str(v)) for k, v in values.items()],
    )


def is_scan_id(text: str) -> bool:
    return bool(_SCAN_ID.fullmatch(text))


def find_scan_db(directory: str, scan_id: str) -> str:
    """`scan_id` as shown in a sidecar or a row; scan DBs of older versions lack the `scan_` prefix."""
    if os.path.isfile(scan_id):
        return scan_id
    bare = scan_id[len(PREFIX):] if scan_id.startswith(PREFIX) else scan_id
    for name in (scan_id, PREFIX + bare, bare):
        path = os.path.join(directory, f"{name}.db")
        if os.path.isfile(path):
            return path
    raise UserError(f"no scan DB for scan {scan_id} in {directory}: check the id (in the album's sidecar, its row or the run's summary); only the newest staging_scan.keep_scan_dbs are kept")


def get_info(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM scan_info WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def counted(n: int, noun: str) -> str:
    """`1 file`, `2 files`: what a scan reports is read by people."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def refused(conn: sqlite3.Connection, limit: int = -1) -> Iterator[tuple[str, str, str]]:
    """(path, reason, since) of the files this scan refused, by path. `since` tells a new refusal
    from a leftover that was not read again: a row copied from the remembered refusals (its id
    at most `remembered_last_id`; scan DBs older than that key: a row refused before it was written)."""
    remembered = get_info(conn, "remembered_last_id")
    for row_id, path, reason, since, created in conn.execute(
        "SELECT id, file_path, validation_error, refused_since, created_at FROM scanned_files "
        "WHERE is_valid = 0 ORDER BY path_bytes LIMIT ?", (limit,)
    ):
        recalled = row_id <= int(remembered) if remembered is not None else since != created
        if not recalled or not isinstance(since, int):
            yield path, reason, "refused in this scan"
        else:
            yield path, reason, f"still refused, unchanged since {datetime.fromtimestamp(since, timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def skipped(conn: sqlite3.Connection) -> Iterator[tuple[str, str, int]]:
    """(path, reason, file count) of what the walk left for a later scan."""
    yield from conn.execute("SELECT path, reason, file_count FROM skipped ORDER BY path")
