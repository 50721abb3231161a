"""scan_inbound: walk inbound, read every media file in parallel, write the scan DB."""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from melodee_pipeline import faults
from melodee_pipeline.parallel import batched, bounded_map, process_pool
from melodee_pipeline.progress import Progress
from melodee_pipeline.scan import refusals, scandb
from melodee_pipeline.scan.tags import ROW_COLUMNS, Identity, display_path, read_media_files, sha256_file
from melodee_pipeline.scan.walk import Skip, walk_inbound

BATCH = 5000  # rows per SQLite transaction (500: ~30% more a row)
# Per worker task: many small files or a few large ones. Each task costs the run's own process CPU
# that the workers, filling the cores, need: on 10k small files, 64 -> 128 -> 256 files a task each
# gave ~4% more files/s (512: no more).
TASK_FILES, TASK_BYTES = 256, 16 << 20
COLUMNS = (*ROW_COLUMNS, "refused_since", "created_at")
_INSERT = f"INSERT OR REPLACE INTO scanned_files ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_VALID, _ERROR = ROW_COLUMNS.index("is_valid"), ROW_COLUMNS.index("validation_error")

log = logging.getLogger(__name__)


def reason_category(reason: str) -> str:
    """A refusal's reason without its per-file detail: `corrupt or not audio: HeaderNotFoundError: …`
    counts as `corrupt or not audio`."""
    return reason.split(":", 1)[0]


@dataclass(frozen=True)
class ScanResult:
    scan_id: str
    scan_db: str
    files: int
    valid: int
    invalid: int
    skipped: int
    seconds: float
    unchanged: int = 0  # of the invalid: refused before and unchanged since, so not read again


def scan_inbound(
    inbound: str,
    scan_db_dir: str,
    *,
    workers: int = 4,
    min_file_age_seconds: int = 60,
    keep_scan_dbs: int | None = 20,
    logger: logging.Logger | None = None,
) -> ScanResult:
    logger = logger or log
    started = time.monotonic()
    memory = refusals.memory_path(scan_db_dir, inbound)
    scan_id, path, memory_note = refusals.start(memory, scan_db_dir)  # the remembered refusals' rows already in it
    conn = None
    try:
        conn = scandb.connect(path)
        remembered = refusals.Refusals(conn, memory, rewrite=memory_note is not None)
        # remembered_last_id: the rows up to it are leftovers not read again (`scandb.refused`).
        scandb.set_info(conn, inbound_path=inbound, workers=workers, min_file_age_seconds=min_file_age_seconds,
                        remembered_last_id=remembered.last_id)
        conn.commit()
    except sqlite3.Error as exc:  # a full disk, mostly: this scan has nothing yet, so its DB goes
        if conn is not None:
            conn.close()
        scandb.delete(path)
        raise scandb.failure(path, exc) from None
    created_at = int(time.time())
    skipped = 0

    # In Dagster each log call is an event written to Postgres (one per refused file once cost 96%
    # of a run): the log gets one line per reason, with counts; the scan DB lists every file and
    # folder (`melodee-pipeline refusals`).
    reasons: Counter = Counter()
    skips: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # reason -> [paths, files]

    def on_skip(skip: Skip) -> None:
        nonlocal skipped
        skipped += skip.file_count
        shown = display_path(skip.path)
        skips[skip.reason][0] += 1
        skips[skip.reason][1] += skip.file_count
        conn.execute(
            "INSERT OR REPLACE INTO skipped(path, reason, file_count) VALUES (?, ?, ?)",
            (shown, skip.reason, skip.file_count),
        )

    def on_extra(path: bytes, st) -> None:
        """Cover art and rip files are few and small: hashed here, in this process."""
        try:
            digest = sha256_file(path)
        except OSError:
            return  # unreadable: it simply stays in inbound
        conn.execute("INSERT OR REPLACE INTO scanned_extras(path_bytes, file_path, folder, file_size, file_hash) "
                     "VALUES (?, ?, ?, ?, ?)", (path, display_path(path), os.path.dirname(path), st.st_size, digest))

    files = valid = unchanged = 0
    progress = Progress()
    batch: list[tuple] = []

    def add(row: tuple, refused_since: int | None) -> None:
        nonlocal files, valid
        faults.point("scanned_file")
        batch.append((*row, refused_since, created_at))
        files += 1
        valid += row[_VALID]
        if not row[_VALID]:
            reasons[reason_category(row[_ERROR])] += 1
        if len(batch) >= BATCH:
            conn.executemany(_INSERT, batch)
            conn.commit()
            batch.clear()
        if progress.due():
            logger.info(f"scanned {files} files ({valid} valid) in {time.monotonic() - started:.1f}s")

    recalled: Counter = Counter()  # reason -> files: most leftovers share a few reasons

    def to_read(entries):
        """The files to read. A file refused before and unchanged since is only counted here: its
        row is in the scan DB already."""
        nonlocal unchanged
        for path, st in entries:
            reason = remembered.recall(path, st)
            if reason is None:
                yield path, Identity.of(st)
            else:
                unchanged += 1
                recalled[reason] += 1

    entries = to_read(walk_inbound(inbound, min_file_age_seconds, time.time(), on_skip, on_extra))
    pool = None
    try:
        tasks = batched(entries, TASK_FILES, TASK_BYTES, size=lambda item: item[1].st_size)
        first = next(tasks, None)  # no file to read (an empty inbound, only remembered refusals): no workers
        if workers > 1 and first is not None:
            pool = process_pool(workers, ["melodee_pipeline.scan.tags"])
        tasks = itertools.chain([first] if first is not None else [], tasks)
        for chunk in bounded_map(read_media_files, tasks, pool, window=workers * 4):
            for row in chunk:
                add(row, None if row[_VALID] else created_at)
        conn.executemany(_INSERT, batch)
        conn.commit()
        memory_note = remembered.finish(scan_id) or memory_note
        files += unchanged
        for reason, n in recalled.items():
            reasons[reason_category(reason)] += n
        seconds = time.monotonic() - started
        scandb.set_info(conn, files=files, valid=valid, invalid=files - valid, unchanged=unchanged, skipped=skipped,
                        scan_seconds=f"{seconds:.3f}")
        conn.commit()
    except sqlite3.Error as exc:
        raise scandb.failure(path, exc) from None
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        conn.close()
    removed, prune_error = [], None
    try:
        if keep_scan_dbs:
            removed = scandb.prune(scan_db_dir, keep_scan_dbs, path)
    except OSError as exc:  # housekeeping (a scan beside this one pruned first): never the scan's failure
        prune_error = f"could not delete old scan DBs: {exc}"
    # One event for the scan, refusals or not: in Dagster each costs a Postgres round trip or more.
    # A warning when something is newly refused; leftovers already reported are news to no one.
    lines = [f"scan {scan_id}: {scandb.counted(files, 'file')}, {valid} valid, {files - valid} invalid, {skipped} skipped "
             f"in {seconds:.1f}s -> {path}"]
    if files - valid:
        listed = ", ".join(f"{reason} ({n})" for reason, n in reasons.most_common())
        again = f"; {unchanged} of them unchanged since an earlier scan, not read again" if unchanged else ""
        lines.append(f"refused {scandb.counted(files - valid, 'file')}: {listed}{again}")
    if skips:
        listed = ", ".join(f"{reason} ({scandb.counted(paths, 'path')}, {scandb.counted(n, 'file')})" for reason, (paths, n) in skips.items())
        lines.append(f"skipped {scandb.counted(skipped, 'file')}: {listed}")
    if removed:
        lines.append(f"deleted {scandb.counted(len(removed), 'old scan DB')}: {', '.join(removed)}")
    if prune_error:
        lines.append(prune_error)
    if memory_note:
        lines.append(memory_note)
    logger.log(logging.WARNING if files - valid - unchanged else logging.INFO, "\n".join(lines))
    return ScanResult(scan_id, path, files, valid, files - valid, skipped, seconds, unchanged)
