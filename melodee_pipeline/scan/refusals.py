"""Remembered refusals: a file an earlier scan refused, unchanged since, is not read again.

Every file that stays in inbound used to be read, hashed and refused again on every run (5,000
leftovers: 63 s instead of 0.27 s). `refusals.db` sits beside the scan DBs, under a name their
pruning never matches, and holds exactly the refusals of the last completed scan: a file that is
gone or valid drops out, a file whose size, mtime, inode or ctime changed is read again at once
(ctime catches a chmod that makes an unreadable file readable). A file our own code failed on
(`tags.INTERNAL_ERROR`, a bug) is never remembered: once the bug is fixed, the next scan reads it.
"""

from __future__ import annotations

import os
import sqlite3

from melodee_pipeline.scan.tags import INTERNAL_ERROR

FILE = "refusals.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS refusals (
    path_bytes BLOB PRIMARY KEY,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    first_refused INTEGER NOT NULL  -- Unix seconds
)
"""


IN_MEMORY_MAX = 20_000  # remembered refusals held in a dict (~300 bytes each, ~6 MiB); more: a query a file


class Refusals:
    def __init__(self, scan_db_dir: str):
        self.conn = sqlite3.connect(os.path.join(scan_db_dir, FILE), timeout=30)
        self.conn.execute(SCHEMA)
        self.recalled = 0
        # Most scans remember a few thousand refusals or none: one query, then a dict lookup per
        # file instead of a query per file.
        (self.count,) = self.conn.execute("SELECT count(*) FROM refusals").fetchone()
        self.known: dict[bytes, tuple] | None = None
        if self.count <= IN_MEMORY_MAX:
            self.known = {row[0]: row[1:] for row in self.conn.execute(
                "SELECT path_bytes, size, mtime_ns, ino, ctime_ns, reason, file_hash, first_refused FROM refusals")}

    def recall(self, path: bytes, st: os.stat_result) -> tuple[str, str, int] | None:
        """(reason, file_hash, first_refused) if `path` was refused and is unchanged since."""
        if self.known is not None:
            row = self.known.get(path)
            found = row[4:] if row and row[:4] == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) else None
        else:
            found = self.conn.execute(
                "SELECT reason, file_hash, first_refused FROM refusals "
                "WHERE path_bytes = ? AND size = ? AND mtime_ns = ? AND ino = ? AND ctime_ns = ?",
                (path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns),
            ).fetchone()
        self.recalled += found is not None
        return found

    def replace(self, scan_db: str, refused: int) -> None:
        """Remember the refusals of the completed scan `scan_db` (`refused` of them), and only
        those. When each was recalled, unchanged, and nothing else is remembered, they already are."""
        if refused == self.recalled == self.count:
            return
        self.conn.execute("ATTACH DATABASE ? AS scan", (scan_db,))
        try:
            with self.conn:
                self.conn.execute("DELETE FROM main.refusals")
                self.conn.execute(
                    "INSERT INTO main.refusals SELECT path_bytes, file_size, mtime_ns, inode, ctime_ns, "
                    "validation_error, file_hash, refused_since FROM scan.scanned_files "
                    "WHERE is_valid = 0 AND mtime_ns IS NOT NULL AND substr(validation_error, 1, ?) != ?",
                    (len(INTERNAL_ERROR), INTERNAL_ERROR),
                )
        finally:
            self.conn.execute("DETACH DATABASE scan")

    def close(self) -> None:
        self.conn.close()
