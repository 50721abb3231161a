"""Remembered refusals: a file an earlier scan refused, unchanged since, is not read again.

Every file that stays in inbound used to be read, hashed and refused again on every run (5,000
leftovers: 63 s instead of 0.27 s). `refusals-v3.db` sits beside the scan DBs, under a name their
pruning never matches, and holds the refusals of the last completed scan, plus those remembered
under a path it skipped (it did not look there): a file that is gone or valid drops out, a file
whose size, mtime, inode or ctime changed is read again at once (ctime catches a chmod that makes
an unreadable file readable). A file our own code failed on
(`tags.INTERNAL_ERROR`, a bug) is never remembered: once the bug is fixed, the next scan reads it.
"""

from __future__ import annotations

import os
import sqlite3

from melodee_pipeline.scan.tags import INTERNAL_ERROR

# v2 added file_path and modified_time; v3 remembers reasons without the file's name (a v2 reason
# would be copied into every scan DB as it was, name and all). A new name each time, so that an
# older version (a rollback, a second install sharing the directory) keeps its own file instead of
# failing on these columns; the first scan with v3 reads the leftovers once more.
FILE = "refusals-v3.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    path_bytes BLOB PRIMARY KEY,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    first_refused INTEGER NOT NULL,  -- Unix seconds
    file_path TEXT NOT NULL,         -- as the scan DB shows it: copied back unchanged, never re-derived
    modified_time INTEGER
)
"""
# What a scan DB's row of a recalled file holds, from the remembered row (every other column keeps
# its default: text '', numbers NULL, as for any file whose tags were not read).
_COPIED = {
    "file_path": "file_path", "path_bytes": "path_bytes", "file_size": "size", "file_hash": "file_hash",
    "modified_time": "modified_time", "validation_error": "reason", "mtime_ns": "mtime_ns", "inode": "ino",
    "ctime_ns": "ctime_ns", "refused_since": "first_refused",
}

IN_MEMORY_MAX = 20_000  # remembered refusals held in a dict (~450 bytes each, ~9 MiB); more: a query a file


class Refusals:
    def __init__(self, scan_db_dir: str):
        self.conn = sqlite3.connect(os.path.join(scan_db_dir, FILE), timeout=30)
        self.conn.execute(SCHEMA.format(table="main.refusals"))
        # The snapshot in memory (a temp file costs ~1 µs a row more) only as long as the dict of
        # them is: a million remembered refusals would hold ~450 MB there for the whole scan.
        (remembered,) = self.conn.execute("SELECT count(*) FROM main.refusals").fetchone()
        if remembered <= IN_MEMORY_MAX:
            self.conn.execute("PRAGMA temp_store = MEMORY")
        # What this scan recalls and later copies comes from one snapshot: another scan sharing
        # the directory may replace refusals-v3.db meanwhile (`scan-inbound` beside a run).
        self.conn.execute(SCHEMA.format(table="temp.snapshot"))
        with self.conn:
            self.count = self.conn.execute("INSERT INTO temp.snapshot SELECT * FROM main.refusals").rowcount
        self.recalled: dict[bytes, None] = {}  # distinct, in walk order: a listing may repeat a name
        # Most scans remember a few thousand refusals or none: one query, then a dict lookup per
        # file instead of a query per file.
        self.known: dict[bytes, tuple[tuple[int, int, int, int], str]] | None = None
        if self.count <= IN_MEMORY_MAX:
            self.known = {path: ((size, mtime_ns, ino, ctime_ns), reason) for path, size, mtime_ns, ino, ctime_ns, reason
                          in self.conn.execute("SELECT path_bytes, size, mtime_ns, ino, ctime_ns, reason FROM temp.snapshot")}

    def recall(self, path: bytes, st: os.stat_result) -> str | None:
        """The reason `path` was refused, if it was and is unchanged since. `write_recalled` then
        writes its row."""
        if self.known is not None:
            known = self.known.get(path)
            found = known[1] if known and known[0] == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) else None
        else:
            found = self.conn.execute(
                "SELECT reason FROM temp.snapshot WHERE path_bytes = ? AND size = ? AND mtime_ns = ? AND ino = ? "
                "AND ctime_ns = ?", (path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns),
            ).fetchone()
            found = found and found[0]
        if found is not None:
            self.recalled[path] = None
        return found

    def write_recalled(self, scan_db: str, created_at: int) -> None:
        """Write the rows of the files recalled this scan into `scan_db` (whose other writers have
        committed), copied from what is remembered in one statement: built in Python and inserted
        one by one, a row cost ~20 µs, most of what a leftover costs a run."""
        if not self.recalled:
            return
        source = "temp.snapshot AS r"
        if len(self.recalled) < self.count:  # else each remembered file was recalled (each once)
            self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS recalled (path_bytes BLOB PRIMARY KEY)")
            with self.conn:
                self.conn.execute("DELETE FROM temp.recalled")
                self.conn.executemany("INSERT INTO temp.recalled VALUES (?)", ((p,) for p in self.recalled))
            source += " JOIN temp.recalled USING (path_bytes)"
        self.conn.execute("ATTACH DATABASE ? AS scan", (scan_db,))
        try:
            # As scandb.connect sets it: an attached database commits with FULL, an fsync (~20 ms).
            self.conn.execute("PRAGMA scan.synchronous = NORMAL")
            with self.conn:
                self.conn.execute(
                    f"INSERT OR REPLACE INTO scan.scanned_files ({', '.join(_COPIED)}, is_valid, created_at) "
                    f"SELECT {', '.join(f'r.{c}' for c in _COPIED.values())}, 0, ? "
                    f"FROM {source}", (created_at,))
        finally:
            self.conn.execute("DETACH DATABASE scan")

    def replace(self, scan_db: str, refused: int) -> None:
        """Remember the refusals of the completed scan `scan_db` (`refused` of them), and those
        remembered under a path it skipped (a folder still being copied, one it could not list):
        it did not look there, so it cannot know they are gone. When each was recalled, unchanged,
        and nothing else is remembered, they already are."""
        if refused == len(self.recalled) == self.count:
            return
        self.conn.execute("ATTACH DATABASE ? AS scan", (scan_db,))
        try:
            with self.conn:
                self.conn.execute("DELETE FROM main.refusals")
                self.conn.execute(
                    f"INSERT INTO main.refusals ({', '.join(_COPIED.values())}) "
                    f"SELECT {', '.join(_COPIED)} FROM scan.scanned_files "
                    "WHERE is_valid = 0 AND mtime_ns IS NOT NULL AND substr(validation_error, 1, ?) != ?",
                    (len(INTERNAL_ERROR), INTERNAL_ERROR),
                )
                # Paths as the scan DB shows them on both sides; a remembered one is recalled only
                # if its exact name and stat still match, so keeping one too many is harmless.
                self.conn.execute(
                    "INSERT OR IGNORE INTO main.refusals SELECT * FROM temp.snapshot AS r WHERE EXISTS ("
                    "SELECT 1 FROM scan.skipped AS k WHERE r.file_path = k.path "
                    "OR substr(r.file_path, 1, length(k.path) + 1) = k.path || '/')")
        finally:
            self.conn.execute("DETACH DATABASE scan")

    def close(self) -> None:
        self.conn.close()
