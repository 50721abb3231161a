"""Undo for one album: its files go back to their inbound paths (docs/design.md, "Undo").

The same guarantees as staging, in the other direction:
  plan     for each file this run staged, how it goes back; nothing is written
  journal  an `undoing` entry holds the plan before the first file moves
  move     give every file its inbound name again (link, or a verified copy across filesystems),
           fsync those folders, then remove the staged names; an inbound path taken meanwhile
           is never overwritten: that file stays staged and is reported
  finish   the sidecar lists the tracks still present (or goes, with the directory, when none
           is); the entry becomes `undone` until the album's row is settled
`finish_undo` runs move and finish from the entry alone, so a killed undo is finished by the
next undo or staging run.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field

from melodee_pipeline import faults
from melodee_pipeline.scan import scandb
from melodee_pipeline.scan.tags import display_path
from melodee_pipeline.staging import journal
from melodee_pipeline.staging import sidecar as sc
from melodee_pipeline.staging.albumdir import write_sidecar
from melodee_pipeline.staging.moves import (
    copy_verified, fsync_dir, makedirs_durable, own_dir, place, regular_file_sha256, temp_dir, unlink_if_same,
)

# How a file goes back, decided from what inbound and staging hold:
MOVE = "move"  # the run moved it: its staged name goes back to inbound
COPY = "copy"  # the run found it already staged and removed the inbound copy: a copy goes back, the staged file stays
DROP = "drop"  # its inbound path holds the same bytes again: only the staged name goes
REMOVE = "remove"  # the cover the run wrote from the tags: it goes
BACK = "back"  # already in inbound, nothing staged to remove (a finished or rolled-back move)
TAKEN = "taken"  # its inbound path now holds other bytes: left staged
GONE = "gone"  # the staged file no longer holds the bytes: nothing to return
WORK = (COPY, MOVE, DROP, REMOVE)  # in this order: a copy needs the staged file a move takes away


@dataclass
class ReturnFile:
    source: bytes  # the inbound path
    name: str  # in the album directory
    sha256: str
    size: int
    track: dict | None
    staged_by_move: bool  # MOVE/RENAME when staged, else already_staged
    how: str = ""


@dataclass
class UndoOutcome:
    album_dir: str
    files: list[ReturnFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def count(self, *how: str) -> int:
        return sum(1 for f in self.files if f.how in how)


def decide(album_dir: str, f: ReturnFile) -> str:
    """How `f` goes back, from the bytes at both ends."""
    if regular_file_sha256(f.source) == f.sha256:
        return DROP if f.staged_by_move and regular_file_sha256(os.path.join(album_dir, f.name)) == f.sha256 else BACK
    if os.path.lexists(f.source):
        return TAKEN
    if regular_file_sha256(os.path.join(album_dir, f.name)) != f.sha256:
        return GONE
    return MOVE if f.staged_by_move else COPY


def extracted_cover(album_dir: str, scan_id: str) -> ReturnFile | None:
    """The cover this scan wrote from the tags, if it is still as written."""
    doc = sc.read(album_dir) if os.path.isdir(album_dir) else None
    cover = ((doc or {}).get("album") or {}).get("cover_from_tags") or {}
    if cover.get("scan_id") != scan_id or regular_file_sha256(os.path.join(album_dir, cover["file"])) != cover.get("checksum"):
        return None
    return ReturnFile(b"", cover["file"], cover["checksum"], 0, None, False, REMOVE)


def journal_undo(root: str, out: UndoOutcome, scan_id: str, inbound: str, previous_scan_id: str | None = None) -> None:
    """The plan, durable before the first file moves."""
    files = [journal.JournalFile(os.fsdecode(f.source), f.name, f.sha256, f.size, f.track, f.how)
             for f in out.files if f.how in WORK]
    journal.write(root, journal.Entry(out.album_dir, journal.UNDOING, scan_id, {}, files, inbound=inbound,
                                      previous_scan_id=previous_scan_id or ""))
    faults.point("after_undo_journal")


def finish_undo(root: str, entry: journal.Entry) -> UndoOutcome:
    """Carry out an `undoing` entry; safe to run again on a half-done one."""
    out = UndoOutcome(entry.album_dir)
    album_dir = os.path.join(root, entry.album_dir)
    tmp = temp_dir(entry.inbound)  # copies into inbound are verified in a temp file on inbound's filesystem
    own_dir(tmp)  # inbound is writable by users: a symlink planted there is refused
    order = {how: i for i, how in enumerate(WORK)}
    placed: list[ReturnFile] = []
    for jf in sorted(entry.files, key=lambda jf: order[jf.action]):
        f = ReturnFile(os.fsencode(jf.source), jf.name, jf.sha256, jf.size, jf.track, jf.action in (MOVE, DROP), jf.action)
        out.files.append(f)
        if f.how != REMOVE:
            f.how = decide(album_dir, f)
        if f.how in (MOVE, COPY):
            makedirs_durable(os.path.dirname(f.source), os.fsencode(entry.inbound))
            staged = os.path.join(album_dir, f.name)
            if f.how == MOVE:
                place(staged, f.source, f.sha256, tmp)
            else:
                copy_verified(staged, f.source, f.sha256, tmp)
            faults.point("after_return")
        if f.how in (MOVE, DROP, REMOVE):
            placed.append(f)
        elif f.how in (TAKEN, GONE):
            out.problems.append(_problem(f))
    for folder in {os.path.dirname(f.source) for f in out.files if f.how in (MOVE, COPY)}:
        fsync_dir(folder)  # every inbound name is durable before any staged one goes
    faults.point("before_unlink_staged")
    for f in placed:
        unlink_if_same(os.path.join(album_dir, f.name), f.sha256)
    try:
        os.rmdir(tmp)
    except OSError:
        pass
    if os.path.isdir(album_dir):
        fsync_dir(album_dir)
        doc = sc.read(album_dir)
        if doc is not None:  # the album's last real run, not this undo: the one before the undone run, if that
            stamp = str(doc.get("scan_id") or entry.scan_id)  # was the last (else a later run's stays)
            if stamp == entry.scan_id and entry.previous_scan_id:
                stamp = entry.previous_scan_id
            write_sidecar(root, album_dir, stamp, {}, temp_dir(root))
    journal.write(root, journal.Entry(entry.album_dir, journal.UNDONE, entry.scan_id, {}))
    return out


def splice_stamps(scan_db_dir: str | None, undone: str, albums: list[tuple[str, str | None]],
                  logger: logging.Logger) -> None:
    """`albums`: (album directory, its stamp before `undone`) of an undo. Runs that merged into
    them after `undone` recorded it as the stamp before theirs: they now record the one before it,
    so undoing them too names a run whose files are left (A, B, C, D merged; B undone, then D,
    then C: A). Every kept scan DB, once an undo; idempotent, so a finished killed undo repeats it."""
    if not scan_db_dir or not albums or not os.path.isdir(scan_db_dir):
        return
    for path in scandb.oldest_first(scan_db_dir):
        try:
            with closing(scandb.connect(path)) as conn, conn:
                conn.executemany("UPDATE albums SET previous_scan_id = ? WHERE staging_dir = ? AND previous_scan_id = ?",
                                 [(previous or None, album_dir, undone) for album_dir, previous in albums])
        except sqlite3.Error as exc:
            logger.warning(f"could not update {path} after the undo of {undone}: {exc}; an undo of that scan "
                           f"would leave its albums naming {undone}")


def _problem(f: ReturnFile) -> str:
    where = display_path(f.source)
    if f.how == TAKEN:
        return f"{f.name} stays staged: {where} now holds another file"
    return f"{f.name} is no longer the staged file (changed or removed); nothing returned to {where}"
