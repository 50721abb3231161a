"""stage_albums: every valid file of a scan into the staging layout (docs/design.md, "Staging").

A run first finishes what an interrupted run left (`recover_interrupted`, from the journal), then
stages the albums through the protocol in `protocol.py`, a batch at a time with a group commit
per step (`stager.py`), on `workers` processes (threads for a small or rate-limited run), and
records each album's outcome in the scan DB.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import closing
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass

from melodee_pipeline.errors import StagingFull, UserError
from melodee_pipeline.libraries import check_disjoint
from melodee_pipeline.parallel import batched, process_pool, thread_pool
from melodee_pipeline.progress import Progress
from melodee_pipeline.scan import scandb
from melodee_pipeline.scan.tags import display_path
from melodee_pipeline.staging import journal
from melodee_pipeline.staging.extras import FolderExtras
from melodee_pipeline.staging.moves import clear_temp_dir, remove_temp_dir, temp_dir
from melodee_pipeline.staging.plan import Album, DirectoryClaims, iter_albums
from melodee_pipeline.staging.protocol import ALBUM_ERRORS, ALREADY, RENAME, AlbumOutcome, FileAction, recover
from melodee_pipeline.staging.protocol import MOVE as STAGED_BY_MOVE
from melodee_pipeline.staging.ratelimit import RateLimiter
from melodee_pipeline.staging.stager import BATCH_ALBUMS, AlbumStager
from melodee_pipeline.staging.unstage import COPY, MOVE, finish_undo, splice_stamps

log = logging.getLogger(__name__)

COMMIT_EVERY = 1000  # files between scan DB commits
# Fewer albums than this stage on threads of the run's own process: worker processes pay for
# their start (a fork ~10 ms, a spawn ~0.5 s) only once there are a few batches to share.
PROCESS_MIN_ALBUMS = 4 * BATCH_ALBUMS


@dataclass(frozen=True)
class StageResult:
    albums_total: int
    albums_success: int
    albums_failed: int
    files_moved: int
    already_staged: int
    renamed: int
    files_failed: int
    recovered: int  # interrupted albums finished from the journal first
    pending_rows: int  # albums whose staging_items row the record step must write
    seconds: float
    albums_with_warnings: int = 0  # for the reviewer: album checks or per-file warnings
    extras_moved: int = 0  # cover art, rip logs… that travelled with their album
    inbound_kept: int = 0  # files staged whose inbound copy could not be deleted (a read-only inbound)


def prepare_staging(staging_root: str, logger: logging.Logger, scan_db_dir: str | None = None) -> set[str]:
    """Start of every staging run, under the staging lock: clear temp files a crash left, then
    finish every album an interrupted run left half-moved (recorded in that run's scan DB, when
    it is in `scan_db_dir`). Returns the hashes recovery staged."""
    if not os.path.isdir(staging_root):
        raise UserError(f"staging path {staging_root} does not exist or is not a directory")
    try:
        cleared = clear_temp_dir(staging_root)
    except OSError as exc:
        raise UserError(f"staging path {staging_root} refuses writes: {exc.strerror}") from None
    if cleared:
        logger.info(f"removed {cleared} temp file(s) left by an interrupted run")
    return recover_interrupted(staging_root, logger, scan_db_dir)


class KeptCopies:
    """Staged files whose inbound copy could not be deleted (a read-only inbound): counted per
    reason, for one warning each, not only a line in each album's sidecar."""

    def __init__(self) -> None:
        self.reasons: Counter = Counter()
        self.example: dict[str, bytes] = {}

    def add(self, out: AlbumOutcome) -> None:
        for a in out.actions + out.extras:
            if a.kept:
                self.reasons[a.kept] += 1
                self.example.setdefault(a.kept, a.source)

    def warn(self, logger: logging.Logger) -> None:
        for reason, n in self.reasons.most_common():  # the bytes are safe; inbound is not being emptied
            logger.warning(f"{n} staged file(s) could not be deleted from inbound ({reason}), e.g. "
                           f"{display_path(self.example[reason])}: each is now in staging and still in inbound, and "
                           "the next run finds it already staged and tries again; make inbound writable for this pipeline")


def recover_interrupted(staging_root: str, logger: logging.Logger, scan_db_dir: str | None = None) -> set[str]:
    """Albums a killed run left half-moved, and albums a killed undo left half-returned."""
    found, problems = journal.entries(staging_root)
    for problem in problems:
        logger.warning(problem)
    # One album that cannot be finished (a read-only directory, a sidecar gone bad) fails alone:
    # its entry stays for the next run, and this run goes on.
    for entry in (e for e in found if e.state == journal.UNDOING):
        try:
            undone = finish_undo(staging_root, entry)
        except ALBUM_ERRORS as exc:
            logger.warning(f"could not finish the interrupted undo of {entry.album_dir}: {type(exc).__name__}: {exc}")
            continue
        if entry.previous_scan_id is not None:  # None: an older version's entry, which did not record it
            splice_stamps(scan_db_dir, entry.scan_id, [(entry.album_dir, entry.previous_scan_id)], logger)
        logger.warning(f"finished interrupted undo of {entry.album_dir} from the journal: "
                       f"{undone.count(MOVE, COPY)} file(s) returned to inbound"
                       + (f"; {'; '.join(undone.problems)}" if undone.problems else ""))
    staged: set[str] = set()
    kept = KeptCopies()
    for entry in (e for e in found if e.state == journal.MOVING):
        try:
            out = recover(staging_root, entry, temp_dir(staging_root))
        except StagingFull:
            raise
        except ALBUM_ERRORS as exc:
            logger.warning(f"could not finish the interrupted album {entry.album_dir}: {type(exc).__name__}: {exc}; "
                           "its journal entry stays for the next run")
            continue
        staged.update(a.sha256 for a in out.actions + out.extras if a.placed)
        kept.add(out)
        logger.warning(f"finished interrupted album {entry.album_dir} from the journal: {out.tracks} track(s) present"
                       + (f"; {'; '.join(out.warnings)}" if out.warnings else ""))
        inbound = _record_in_its_scan(scan_db_dir, entry, out, logger) if scan_db_dir else None
        if inbound:
            _remove_empty_dirs({os.path.dirname(a.source) for a in out.actions + out.extras if a.placed}, os.fsencode(inbound))
    kept.warn(logger)
    return staged


def _record_in_its_scan(scan_db_dir: str, entry: journal.Entry, out: AlbumOutcome, logger: logging.Logger) -> str | None:
    """An album a killed run began, finished now, goes into that run's scan DB as its outcome:
    its sidecar and row carry that run's scan id, so `undo --scan <id>` must find it there.
    Returns the inbound root that run scanned, once recorded."""
    if not scandb.is_scan_id(entry.scan_id):
        return None  # the journal is a file in staging: its scan id names a scan DB in the directory, or none
    try:
        path = scandb.find_scan_db(scan_db_dir, entry.scan_id)
    except UserError:
        return None  # pruned (keep_scan_dbs), or kept elsewhere: that scan cannot be undone anyway
    try:
        with closing(scandb.open_existing(path)) as conn:
            for table in ("scanned_files", "scanned_extras"):  # once per scan DB; a killed run may leave thousands
                conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_path_bytes ON {table}(path_bytes)")
            groups: list[str] = []

            def scanned(table: str, actions: list[FileAction]) -> list[FileAction]:
                """The placed files that scan read, as the killed run meant to stage them."""
                found = []
                for a in (a for a in actions if a.placed):
                    row = conn.execute(f"SELECT id, {'album_group_id' if table == 'scanned_files' else 'NULL'} "
                                       f"FROM {table} WHERE path_bytes = ?", (a.source,)).fetchone()
                    if row is not None:
                        found.append(dataclasses.replace(a, file_id=row[0], action=_as_planned(a, entry)))
                        groups.append(row[1])
                return found

            tracks, extras = scanned("scanned_files", out.actions), scanned("scanned_extras", out.extras)
            if not tracks:
                return None  # none of its tracks is in that scan: nothing an undo of it could return
            info = entry.album
            album = Album(groups[0], info.get("artist", ""), info.get("album", ""), int(info.get("year") or 0),
                          list(info.get("genres") or []), bool(info.get("is_compilation")), info.get("code", ""),
                          entry.album_dir)
            _save_outcome(conn, dataclasses.replace(out, album=album, actions=tracks, extras=extras), dry_run=False)
            if scandb.get_info(conn, "staged") != "1":
                scandb.set_info(conn, staged=1, dry_run=0)
            conn.commit()
            return scandb.get_info(conn, "inbound_path")
    except (sqlite3.Error, OSError, UserError) as exc:
        logger.warning(f"could not record the finished album {entry.album_dir} in its scan DB {path}: {exc}; "
                       f"`undo --scan {entry.scan_id}` will not find it")
        return None


def _as_planned(a: FileAction, entry: journal.Entry) -> str:
    """What the killed run did with a file recovery found in place: what its entry planned (a move
    or a rename: undo moves it back); an older entry that kept no plan, already staged (undo
    returns a copy and keeps the staged file: nothing is taken from an earlier album)."""
    if a.action in (STAGED_BY_MOVE, RENAME):
        return a.action  # recovery moved it itself
    planned = next((jf.action for jf in entry.files if jf.name == a.name), "")
    return planned if planned in (STAGED_BY_MOVE, RENAME) else ALREADY


def _save_outcome(conn: sqlite3.Connection, out: AlbumOutcome, dry_run: bool) -> None:
    a = out.album
    conn.execute(
        "INSERT OR REPLACE INTO albums(album_group_id, artist, album, year, staging_dir, status, error, tracks, moved, "
        "already_staged, failed, renamed, total_size, warnings, dry_run, previous_scan_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (a.group_id, a.artist, a.album, a.year, out.album_dir, out.status, out.error, out.tracks, out.moved,
         out.count(ALREADY), out.failed, out.count(RENAME), out.total_size, "\n".join(out.warnings + out.checks) or None, int(dry_run),
         out.previous_scan_id),
    )
    for table, key, actions in (("staged_files", "file_id", out.actions), ("staged_extras", "extra_id", out.extras)):
        conn.executemany(
            f"INSERT OR REPLACE INTO {table}({key}, album_group_id, destination, action, error) VALUES (?,?,?,?,?)",
            [(x.file_id, a.group_id, os.path.join(out.album_dir, x.name), x.action, x.error) for x in actions],
        )


def _album_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(DISTINCT album_group_id) FROM scanned_files WHERE is_valid = 1 "
                        "AND album_group_id != ''").fetchone()[0]


def _remove_empty_dirs(directories: set[bytes], inbound: bytes) -> None:
    """Inbound folders emptied by the moves go too (rmdir only ever removes an empty one)."""
    for d in sorted(directories, key=len, reverse=True):
        while d != inbound and d.startswith(inbound + b"/"):
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)


def stage_albums(
    scan_db: str,
    staging_root: str,
    *,
    workers: int = 1,
    rate_limit: int = 0,
    dry_run: bool = False,
    logger: logging.Logger | None = None,
) -> StageResult:
    logger = logger or log
    started = time.monotonic()
    with closing(scandb.open_existing(scan_db)) as conn:  # closed however the run ends
        scan_id = scandb.get_info(conn, "scan_id")
        inbound = scandb.get_info(conn, "inbound_path")
        if inbound:
            check_disjoint(inbound, staging_root)
        recovered: set[str] = set()
        if dry_run:
            if not os.path.isdir(staging_root):
                raise UserError(f"staging path {staging_root} does not exist or is not a directory")
        else:
            recovered = prepare_staging(staging_root, logger, os.path.dirname(scan_db))
        claims, extras = DirectoryClaims(staging_root), FolderExtras(conn)
        stager = AlbumStager(staging_root, scan_id, dry_run, RateLimiter(rate_limit), temp_dir(staging_root), recovered)

        def planned():
            for album in iter_albums(conn.cursor()):
                claims.assign(album)
                extras.assign(album)
                yield album

        totals = dict(albums=0, ok=0, failed=0, moved=0, already=0, renamed=0, files_failed=0, pending=0, warned=0, extras=0)
        failures: dict[str, int] = {}
        kept = KeptCopies()
        inbound_root = os.fsencode(os.path.normpath(inbound)) if inbound and not dry_run else None
        progress = Progress()
        # A dry run only plans; a rate limit is one budget, which threads share and processes would not.
        count = _album_count(conn) if workers > 1 and not (dry_run or rate_limit) else 0
        in_processes = count >= PROCESS_MIN_ALBUMS
        if in_processes:
            logger.info(f"staging {count} albums in {workers} worker processes")
        processes = process_pool(workers, ["melodee_pipeline.staging.stager"]) if in_processes else None
        pool = stager.pool = thread_pool(workers) if workers > 1 and not in_processes else None
        outcomes = stager.stage_batches(batched(planned(), BATCH_ALBUMS), processes, ahead=2 * workers)
        try:
            for out in outcomes:
                _save_outcome(conn, out, dry_run)
                totals["albums"] += 1
                bad = out.status in ("failed", "partial", "not_started")
                totals["failed" if bad else "ok"] += 1
                totals["moved"] += out.moved
                totals["already"] += out.count(ALREADY)
                totals["renamed"] += out.count(RENAME)
                totals["files_failed"] += out.failed
                totals["pending"] += out.pending_row
                totals["warned"] += bool(out.warnings or out.checks)
                totals["extras"] += sum(1 for x in out.extras if x.placed and x.action != ALREADY)
                kept.add(out)
                if inbound_root is not None:  # now, while the workers stage the next batches
                    _remove_empty_dirs({os.path.dirname(a.source) for a in out.actions + out.extras if a.placed}, inbound_root)
                if bad:
                    reason = out.status if out.status != "failed" else (out.error or "failed").split(":")[0]
                    failures[reason] = failures.get(reason, 0) + 1
                files_done = totals["moved"] + totals["already"] + totals["files_failed"]
                if files_done // COMMIT_EVERY > (files_done - len(out.actions)) // COMMIT_EVERY:
                    conn.commit()
                if progress.due():
                    logger.info(f"{'planned' if dry_run else 'staged'} {totals['albums']} albums, {files_done} files "
                                f"({totals['moved']} moved) in {time.monotonic() - started:.1f}s")
        finally:
            for executor in (pool, processes):
                if executor is not None:
                    executor.shutdown(cancel_futures=True)
            conn.commit()
        if not dry_run:
            remove_temp_dir(staging_root)
        seconds = time.monotonic() - started
        result = StageResult(totals["albums"], totals["ok"], totals["failed"], totals["moved"], totals["already"],
                             totals["renamed"], totals["files_failed"], len(recovered), totals["pending"], seconds,
                             totals["warned"], totals["extras"], sum(kept.reasons.values()))
        scandb.set_info(conn, staging_path=staging_root, dry_run=int(dry_run), staged=1, stage_seconds=f"{seconds:.3f}")
        conn.commit()
        # One line per reason, never one per album: the full list is the scan DB's `albums` table.
        for reason, n in sorted(failures.items(), key=lambda kv: -kv[1]):
            logger.warning(f"{n} album(s) not fully staged: {reason} (details in the scan DB's albums table)")
        kept.warn(logger)
        verb = "planned" if dry_run else "staged"
        logger.info(f"{verb} {result.albums_total} albums ({result.albums_failed} failed): {result.files_moved} files "
                    f"{'to move' if dry_run else 'moved'}, {result.already_staged} already staged, {result.renamed} renamed, "
                    f"{result.files_failed} failed in {seconds:.1f}s")
        if stager.full is not None:
            raise stager.full
        return result
