"""Remembered refusals: a file an earlier scan refused, unchanged since, is not read again.

Every file that stays in inbound used to be read, hashed and refused again on every run (5,000
leftovers: 63 s instead of 0.27 s). The memory (`memory_path`: one per inbound and tag reader) sits
beside the scan DBs, under a name their pruning never matches. It is itself a scan DB holding only
the rows of the files the last completed scan of that inbound refused, plus those remembered under
a path it skipped (it did not look there), and each scan DB starts as a copy of it (`start`): a
leftover's row is in place before the walk reaches it, so what a run pays for its leftovers is one
file copy, one check, one query and a stat each (writing 5,000 leftovers' rows into each scan DB
cost ~17 ms a run, the copy ~3 ms).

The walk recalls a remembered file whose size, mtime, inode and ctime are unchanged (ctime
catches a chmod that makes an unreadable file readable); `finish` then deletes the rows it did
not recall (gone, changed and read again, skipped) and, when anything changed, writes the new
memory. A recalled row is the row as the scan that read the file wrote it, `created_at` and
`refused_since` included. A file our own code failed on (`tags.INTERNAL_ERROR`, a bug) or that could
not be read (permissions, I/O) is never remembered: once the bug is fixed or the file readable, the
next scan reads it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time

from melodee_pipeline.scan import scandb
from melodee_pipeline.scan.tags import INTERNAL_ERROR, READER, UNREADABLE

# v4: a scan DB (v3 and older: one table, `refusals-v3.db`). A new name each time, so that an older
# version (a rollback, a second install sharing the directory) keeps its own file instead of
# failing on it; the first scan with v4 reads the leftovers once more.
PREFIX = "refusals-v4-"
_TEMP = ".tmp-"  # memory path + this + a random part: a new memory is written aside, then renamed
# Reasons that say nothing of the file's content, only of this reading: a bug of ours (fixed, the
# file goes through), a permission or an I/O error (granted or gone, the same bytes read fine).
NOT_REMEMBERED = (INTERNAL_ERROR, f"{UNREADABLE}:")
# The refused rows worth remembering: with a stat to compare, and a verdict on the file's bytes.
_REMEMBERABLE = ("is_valid = 0 AND mtime_ns IS NOT NULL"
                 + "".join(" AND substr(validation_error, 1, ?) != ?" for _ in NOT_REMEMBERED))
_REMEMBERABLE_ARGS = tuple(v for reason in NOT_REMEMBERED for v in (len(reason), reason))
IN_MEMORY_MAX = 20_000  # remembered refusals held in a dict (~450 bytes each, ~9 MiB); more: a query a file


def memory_path(scan_db_dir: str, inbound: str) -> str:
    """The memory of the scans of `inbound` read by this tag reader. One per inbound: scans of two
    inbounds sharing a scan DB directory (`scan-inbound` of another folder, two installs) would
    otherwise each forget the other's. One per reader: a refusal by an older mutagen or reading
    code (a parser bug, since fixed) is read again once after an upgrade."""
    def short(text: str | bytes) -> str:
        return hashlib.sha256(os.fsencode(text)).hexdigest()[:12]

    return os.path.join(scan_db_dir, f"{PREFIX}{short(os.path.normpath(inbound))}-{short(READER)}.db")


def start(memory: str, scan_db_dir: str) -> tuple[str, str, str | None]:
    """Create this scan's DB in `scan_db_dir` as a copy of the memory (an empty one when there is
    none). Returns (scan_id, path, note): the note says why the memory could not be used, and the
    scan then reads every file (nothing is lost but time)."""
    if not os.path.isfile(memory):
        return (*scandb.create(scan_db_dir), None)
    try:
        scan_id, path = scandb.create(scan_db_dir, template=memory)
    except scandb.UnusableTemplate as exc:  # damaged, or replaced by a foreign file: start afresh
        return (*scandb.create(scan_db_dir), f"remembered refusals {memory} unusable ({exc}): every file read again")
    return scan_id, path, None


class Refusals:
    """The remembered refusals a scan DB started with: its `scanned_files` rows up to `last_id`
    (the rows this scan writes come after them)."""

    def __init__(self, conn: sqlite3.Connection, memory: str, rewrite: bool = False):
        self.conn, self.memory = conn, memory
        self.rewrite = rewrite  # the memory on disk is unusable: replace it even if nothing changed
        self.last_id, self.count = conn.execute("SELECT coalesce(max(id), 0), count(*) FROM scanned_files").fetchone()
        self.recalled: dict[bytes, None] = {}  # distinct, in walk order: a listing may repeat a name
        # Most scans remember a few thousand refusals or none: one query, then a dict lookup per
        # file instead of a query per file; a million would hold ~450 MB for the whole scan.
        self.known: dict[bytes, tuple[tuple[int, int, int, int], str]] | None = None
        if self.count <= IN_MEMORY_MAX:
            rows = conn.cursor()
            rows.row_factory = None  # plain tuples: the scan DB's sqlite3.Row costs more a row
            self.known = {path: ((size, mtime_ns, ino, ctime_ns), reason) for path, size, mtime_ns, ino, ctime_ns, reason
                          in rows.execute("SELECT path_bytes, file_size, mtime_ns, inode, ctime_ns, validation_error "
                                          "FROM scanned_files WHERE id <= ? AND is_valid = 0", (self.last_id,))}

    def recall(self, path: bytes, st: os.stat_result) -> str | None:
        """The reason `path` was refused, if it was and is unchanged since: its row is already in
        the scan DB."""
        if self.known is not None:
            known = self.known.get(path)
            found = known[1] if known and known[0] == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) else None
        else:
            found = self.conn.execute(
                "SELECT validation_error FROM scanned_files WHERE path_bytes = ? AND id <= ? AND is_valid = 0 "
                "AND file_size = ? AND mtime_ns = ? AND inode = ? AND ctime_ns = ?",
                (path, self.last_id, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns),
            ).fetchone()
            found = found and found[0]
        if found is not None:
            self.recalled[path] = None
        return found

    def finish(self, scan_id: str) -> str | None:
        """Once every file is walked and its row written (committed): remember this scan's
        refusals, and those remembered under a path it skipped (a folder still being copied, one
        it could not list: it cannot know they are gone); then delete from the scan DB the
        remembered rows it did not recall. Returns a note when the memory could not be written
        (the next scan then reads those files again)."""
        stale = len(self.recalled) < self.count
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS recalled (path_bytes BLOB PRIMARY KEY)")
        if stale:
            with self.conn:
                self.conn.execute("DELETE FROM temp.recalled")
                self.conn.executemany("INSERT OR IGNORE INTO temp.recalled VALUES (?)", ((p,) for p in self.recalled))
        # New refusals to remember (a file that cannot be read, refused again each run, is none).
        (new,) = self.conn.execute(f"SELECT count(*) FROM scanned_files WHERE id > ? AND {_REMEMBERABLE}",
                                   (self.last_id, *_REMEMBERABLE_ARGS)).fetchone()
        note = None
        if stale or new or self.rewrite:
            try:
                self._remember(scan_id, stale)
            except (OSError, sqlite3.Error) as exc:
                note = f"could not remember this scan's refusals in {self.memory} ({exc}): the next scan reads them again"
        if stale:
            with self.conn:
                self.conn.execute("DELETE FROM scanned_files WHERE id <= ? AND path_bytes NOT IN temp.recalled",
                                  (self.last_id,))
        return note

    def _remember(self, scan_id: str, stale: bool) -> None:
        """Write what is now remembered aside (fsynced), then rename it over the memory: a scan
        copying it meanwhile gets the old memory or the new, never half of one."""
        temp = f"{self.memory}{_TEMP}{secrets.token_hex(4)}"
        _forget_others(self.memory)
        try:
            scandb.connect(temp).close()  # an empty scan DB
            columns = ", ".join(row[1] for row in self.conn.execute("PRAGMA table_info(scanned_files)"))
            self.conn.execute("ATTACH DATABASE ? AS memory", (temp,))
            try:
                with self.conn:
                    # This scan's refusals (read, or recalled), and the remembered ones under a
                    # skipped path (both sides spelt as the scan DB shows paths; one kept too many
                    # is harmless: it is recalled only if its exact name and stat still match).
                    self.conn.execute(
                        f"INSERT INTO memory.scanned_files ({columns}) SELECT {columns} FROM main.scanned_files AS r "
                        f"WHERE {_REMEMBERABLE} AND (r.id > ? OR NOT ? OR r.path_bytes IN temp.recalled OR EXISTS ("
                        "    SELECT 1 FROM main.skipped AS k WHERE r.file_path = k.path "
                        "    OR substr(r.file_path, 1, length(k.path) + 1) = k.path || '/'))",
                        (*_REMEMBERABLE_ARGS, self.last_id, stale),
                    )
                    self.conn.execute("INSERT INTO memory.scan_info(key, value) VALUES ('refusals_of', ?)", (scan_id,))
            finally:
                self.conn.execute("DETACH DATABASE memory")  # its last connection: checkpointed, no -wal left
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(temp, self.memory)
        except BaseException:
            scandb.delete(temp)
            raise


def _forget_others(memory: str, older_than: float = 3600, other_reader_after: float = 7 * 86400) -> None:
    """The same inbound's memories by another tag reader, unused for a week (an upgrade; not a
    second install of another version sharing the directory, which writes its own), and memories
    being written when their scan was killed (an hour old: not one being written now).
    Housekeeping: what it cannot delete stays, and the memory is written all the same."""
    directory, name = os.path.split(memory)
    same_inbound = name[: name.rindex("-") + 1]
    now = time.time()
    for other in os.listdir(directory):
        path = os.path.join(directory, other)
        try:
            if other.startswith(same_inbound) and other.endswith(".db") and other != name:
                if os.stat(path).st_mtime < now - other_reader_after:
                    os.unlink(path)
            elif other.startswith(PREFIX) and _TEMP in other and os.stat(path).st_mtime < now - older_than:
                scandb.delete(path)
        except OSError:
            pass
