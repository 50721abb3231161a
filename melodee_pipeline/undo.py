"""Undo a staging run: every file it staged goes back to its inbound path (docs/design.md, "Undo").

The scan DB says what the run did (`staged_files`/`staged_extras`: destination and action;
`scanned_files`/`scanned_extras`: the exact inbound path and sha256); `staging/unstage.py` moves
the files back under the staging protocol's guarantees. An album the admin approved, or that
Melodee promoted (its directory left staging), is refused with the reason. For an album the run
merged into, only that run's files leave; its row is rewritten. An album left empty loses its
sidecar, its directory and its `pending_review` row.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, field

import sqlalchemy as sa

from melodee_pipeline.db.engine import database_error
from melodee_pipeline.errors import UserError
from melodee_pipeline.records import RecordResult, existing_rows, settle_undone
from melodee_pipeline.scan import scandb
from melodee_pipeline.staging import journal
from melodee_pipeline.staging.moves import clear_temp_dir, remove_temp_dir
from melodee_pipeline.staging.protocol import ALBUM_ERRORS
from melodee_pipeline.staging.stage import prepare_staging
from melodee_pipeline.staging.unstage import (
    BACK, COPY, DROP, GONE, MOVE, REMOVE, TAKEN, WORK, ReturnFile, UndoOutcome, decide, extracted_cover,
    finish_undo, journal_undo, splice_stamps,
)

log = logging.getLogger(__name__)
_STAGED = ("move", "rename", "already_staged")


@dataclass
class AlbumUndo:
    album_dir: str  # relative to the staging root
    status: str  # undone | partly undone | nothing to undo | refused | failed | planned
    reason: str = ""
    returned: int = 0  # files back in inbound (or to go back, on a dry run)
    tracks: int = 0  # of them, tracks: what a run counts as moved (the rest: covers, logs, cue sheets)
    problems: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)  # dry run: each file and how it would go back


@dataclass
class UndoResult:
    scan_id: str
    scan_db: str
    dry_run: bool
    albums: list[AlbumUndo] = field(default_factory=list)
    rows: RecordResult = field(default_factory=RecordResult)

    @property
    def returned(self) -> int:
        return sum(a.returned for a in self.albums)

    @property
    def tracks(self) -> int:
        return sum(a.tracks for a in self.albums)


def _files(conn: sqlite3.Connection, group_id: str) -> list[ReturnFile]:
    """Every file the run staged into one album: tracks, then extras."""
    found = []
    for staged, scanned, key in (("staged_files", "scanned_files", "file_id"), ("staged_extras", "scanned_extras", "extra_id")):
        rows = conn.execute(
            f"SELECT s.destination, s.action, f.path_bytes, f.file_hash, f.file_size FROM {staged} s "
            f"JOIN {scanned} f ON f.id = s.{key} WHERE s.album_group_id = ? AND s.error IS NULL "
            f"AND s.action IN ({', '.join('?' * len(_STAGED))}) ORDER BY s.destination", (group_id, *_STAGED))
        found += [ReturnFile(bytes(r["path_bytes"]), os.path.basename(r["destination"]), r["file_hash"], r["file_size"] or 0,
                             {} if staged == "staged_files" else None, r["action"] != "already_staged") for r in rows]
    return found


def _albums(conn: sqlite3.Connection, staging_root: str, album: str | None) -> list[sqlite3.Row]:
    rows = conn.execute("SELECT album_group_id, staging_dir, previous_scan_id FROM albums WHERE dry_run = 0 ORDER BY staging_dir").fetchall()
    if album is None:
        return rows
    wanted = os.path.relpath(os.path.normpath(os.path.join(staging_root, album)), staging_root)
    picked = [r for r in rows if r["staging_dir"] == wanted]
    if not picked:
        raise UserError(f"scan staged no album {album!r}; its albums: {', '.join(r['staging_dir'] for r in rows) or 'none'}")
    return picked


def undo_scan(engine: sa.Engine | None, scan_db: str, staging_root: str, *, album: str | None = None,
              dry_run: bool = False, logger: logging.Logger | None = None) -> UndoResult:
    """Undo one scan's staging (the caller holds the staging lock). Without a database, rows are
    left alone and approval cannot be checked: only a directory that left staging is refused."""
    logger = logger or log
    root = os.path.normpath(staging_root)
    conn = scandb.open_existing(scan_db)
    scan_id, inbound = scandb.get_info(conn, "scan_id"), scandb.get_info(conn, "inbound_path") or ""
    result = UndoResult(scan_id, scan_db, dry_run)
    if not dry_run:
        # A killed undo (or run) first finishes what it began; an album a killed run began is
        # then recorded in that run's scan DB (perhaps this one), so it can be undone.
        prepare_staging(root, logger, os.path.dirname(scan_db))
    if scandb.get_info(conn, "staged") != "1" or scandb.get_info(conn, "dry_run") == "1":
        conn.close()
        raise UserError(f"scan {scan_id} staged nothing (it was never staged, or was a dry run): nothing to undo")
    albums = _albums(conn, root, album)
    if not dry_run:
        if inbound and os.path.isdir(inbound):
            clear_temp_dir(inbound)  # half-written copies a killed undo left in inbound
        if engine is not None:
            _settle(engine, root, result)
    statuses = _row_statuses(engine, [os.path.join(root, a["staging_dir"]) for a in albums])
    undone: list[tuple[str, str | None]] = []
    try:
        for a in albums:
            try:
                done = _undo_album(conn, root, a, scan_id, inbound, statuses.get(os.path.join(root, a["staging_dir"])), dry_run)
            except ALBUM_ERRORS as exc:  # this album alone (an inbound folder it cannot write to): the others go on
                done = AlbumUndo(a["staging_dir"], "failed", f"{type(exc).__name__}: {exc}; a journal entry begun for "
                                 "it is finished by the next undo or run")
            result.albums.append(done)
            if not dry_run and (done.status in ("undone", "partly undone")
                                or (done.status == "nothing to undo" and not done.problems)):  # a killed undo's
                undone.append((a["staging_dir"], a["previous_scan_id"]))
            if not dry_run and done.status in ("undone", "partly undone"):
                if engine is not None:
                    _settle(engine, root, result)
                conn.execute("UPDATE albums SET status = ? WHERE album_group_id = ?", (done.status, a["album_group_id"]))
                conn.commit()
    finally:
        conn.close()
        if not dry_run and inbound:
            remove_temp_dir(inbound)
    splice_stamps(os.path.dirname(scan_db), scan_id, undone, logger)
    return result


def _row_statuses(engine: sa.Engine | None, paths: list[str]) -> dict[str, str]:
    if engine is None or not paths:
        return {}
    try:
        with engine.connect() as db:
            return {p: r.status for p, r in existing_rows(db, paths).items()}
    except sa.exc.DBAPIError as exc:
        raise database_error(engine, exc) from None


def _settle(engine: sa.Engine, root: str, result: UndoResult) -> None:
    try:
        settle_undone(engine, root, journal.entries(root, journal.UNDONE)[0], result.rows)
    except sa.exc.DBAPIError as exc:
        raise database_error(engine, exc) from None  # the `undone` entries stay: the next run settles them


def _undo_album(conn: sqlite3.Connection, root: str, a: sqlite3.Row, scan_id: str, inbound: str,
                row_status: str | None, dry_run: bool) -> AlbumUndo:
    rel = a["staging_dir"]
    album_dir = os.path.join(root, rel)
    if row_status == "approved":
        return AlbumUndo(rel, "refused", "approved by the admin (Melodee promotes it); undo refused")
    out = UndoOutcome(rel, _files(conn, a["album_group_id"]))
    for f in out.files:
        f.how = decide(album_dir, f)
    if cover := extracted_cover(album_dir, scan_id):
        out.files.append(cover)
    if not os.path.isdir(album_dir) and any(f.how != BACK for f in out.files):
        return AlbumUndo(rel, "refused", "no longer in staging (promoted by Melodee, or removed); undo refused")
    problems = [f"{f.name}: {how_text(f.how)}" for f in out.files if f.how in (TAKEN, GONE)]
    todo = [f for f in out.files if f.how in WORK]
    if dry_run:
        back = [f for f in todo if f.how in (MOVE, COPY)]
        return AlbumUndo(rel, "planned" if todo else "nothing to undo", returned=len(back), tracks=_tracks(back),
                         problems=problems, plan=[f"{f.name}: {how_text(f.how)}" + (f" ({os.fsdecode(f.source)})" if f.source else "")
                                                  for f in todo])
    if not todo:
        return AlbumUndo(rel, "nothing to undo", "every file is back in inbound already" if not problems else "", problems=problems)
    journal_undo(root, out, scan_id, inbound, a["previous_scan_id"])
    done = finish_undo(root, journal.read(root, rel))
    left = problems + done.problems  # the latter: files that changed between the plan and the move
    back = [f for f in done.files if f.how in (MOVE, COPY)]
    return AlbumUndo(rel, "partly undone" if left else "undone", returned=len(back), tracks=_tracks(back), problems=left)


def _tracks(files: list[ReturnFile]) -> int:
    return sum(1 for f in files if f.track is not None)


def returned_text(files: int, tracks: int) -> str:
    """`5 file(s) (3 track(s), 2 other)`: a run counts the tracks it moved, an undo every file."""
    return f"{files} file(s)" + (f" ({tracks} track(s), {files - tracks} other)" if tracks != files else "")


def how_text(how: str) -> str:
    return {MOVE: "goes back to inbound", COPY: "a copy goes back to inbound (the staged file was there before this run)",
            DROP: "already back in inbound; the staged name goes", REMOVE: "cover written from the tags; removed",
            BACK: "already back in inbound", TAKEN: "stays staged: its inbound path now holds another file",
            GONE: "no longer the staged file (changed or removed); nothing to return"}[how]


NOT_UNDONE = ("refused", "failed")  # an undo with such an album exits 1 (its run fails), after the others


def plan_lines(result: UndoResult) -> list[str]:
    """What an undo did (or, on a dry run, would do), one line per album and problem."""
    lines = []
    for a in result.albums:
        what = f"{returned_text(a.returned, a.tracks)} {'to return' if result.dry_run else 'returned'}"
        lines.append(f"{a.status:<15} {a.album_dir}: {a.reason or what}")  # `nothing to undo`: 15
        lines += [f"{'':<15}   {p}" for p in a.plan + a.problems]
    return lines
