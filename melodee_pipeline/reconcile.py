"""reconcile: walk the whole staging tree, re-derive every album's row from its sidecar, repair drift.

A normal run touches only the albums it staged (the journal's work list, see `records.py`), so
what happens to staging between runs is found here, on demand, at O(staging) cost:
  - a sidecar listing files that are gone is rewritten without them; one left with no track is
    removed, so there is no phantom album;
  - audio in an album directory that its sidecar does not list (copied there by hand) joins the
    sidecar when it reads as valid audio and has not changed for a minute; anything else is reported;
  - a row whose sidecar changed since it was written (a sidecar edited by hand: its checksum
    differs from the row's) is updated; a row the admin edited in Melodee keeps the checksum,
    so it stays as they left it;
  - a missing row was deleted by the admin (Melodee deletes rows on reject and on promote), so it
    is re-created only with `restore_deleted`;
  - rows whose album directory or sidecar is gone are counted, never deleted: rows are Melodee's.
The caller holds the staging lock. A dry run reports what it would do and changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

import sqlalchemy as sa

from melodee_pipeline.db.engine import database_error
from melodee_pipeline.db.schema import staging_items
from melodee_pipeline.errors import UserError
from melodee_pipeline.records import (
    BATCH, SIDECAR_ERRORS, RecordResult, existing_rows, record_staging_items, sidecar_row, upsert_rows,
)
from melodee_pipeline.scan.tags import read_media_file
from melodee_pipeline.scan.walk import is_media
from melodee_pipeline.staging import journal
from melodee_pipeline.staging import sidecar as sc
from melodee_pipeline.staging.albumdir import present_tracks, refresh_checks, remove_empty_dirs
from melodee_pipeline.staging.moves import remove_temp_dir, temp_dir
from melodee_pipeline.staging.paths import name_key
from melodee_pipeline.staging.protocol import track_entry
from melodee_pipeline.staging.stage import prepare_staging

OWN_DIRS = ".melodee-"  # the journal and the temp dir under the staging root: not albums
ALBUM_DEPTH = 3  # <code>/<artist>/<year - album>/

# Kinds of drift, as the report names them.
TRACKS_MISSING = "tracks_missing"  # the sidecar listed files that are gone: rewritten without them
TRACKS_ADDED = "tracks_added"  # audio in the directory the sidecar did not list: added
UNLISTED = "unlisted"  # a file with an audio extension the sidecar does not list, left alone (with the reason)
SIDECAR_REMOVED = "sidecar_removed"  # none of its files is left: no phantom album
ROW_UPDATED = "row_updated"
ROW_RESTORED = "row_restored"
ROW_DELETED = "row_deleted"  # deleted by the admin and left deleted
ROW_ORPHANED = "row_orphaned"  # its album directory or sidecar is gone; the row is kept
ROW_REFUSED = "row_refused"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Drift:
    staging_path: str
    kind: str
    detail: str = ""


@dataclass
class ReconcileResult:
    dry_run: bool
    pending: int = 0  # albums the journal still had to record, recorded first
    recovered: int = 0  # files of interrupted albums placed from the journal first
    albums: int = 0  # sidecars found
    unchanged: int = 0  # row equal to its sidecar, every listed file present
    sidecars_rewritten: int = 0
    tracks_dropped: int = 0
    tracks_added: int = 0
    unlisted_left: int = 0
    sidecars_removed: int = 0
    rows_updated: int = 0
    rows_reopened: int = 0
    rows_restored: int = 0
    deleted_kept: int = 0
    orphaned_rows: int = 0
    refused: int = 0
    unreadable: int = 0
    drift: list[Drift] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k not in ("dry_run", "drift")}

    def add(self, path: str, kind: str, detail: str = "") -> None:
        self.drift.append(Drift(path, kind, detail))


def reconcile(engine: sa.Engine, staging_root: str, *, dry_run: bool = False, restore_deleted: bool = False,
              logger: logging.Logger | None = None, scan_db_dir: str | None = None) -> ReconcileResult:
    logger = logger or logging.getLogger(__name__)
    root = os.path.normpath(staging_root)
    if not os.path.isdir(root):
        raise UserError(f"staging path {root} does not exist or is not a directory")
    result = ReconcileResult(dry_run)
    pending, problems = journal.entries(root, journal.STAGED)
    result.pending = len(pending)
    try:
        if dry_run:
            skip = {os.path.join(root, e.album_dir) for e in pending}  # a real run records these first
        else:
            # Finish what a crash left and record the pending rows, as a run would, before the walk.
            result.recovered = len(prepare_staging(root, logger, scan_db_dir))
            problems = record_staging_items(engine, root).unreadable  # the journal's problems included
            skip = set()
            os.makedirs(temp_dir(root), exist_ok=True)  # prepare_staging cleared it; the walk writes there
        try:
            live: set[str] = set()
            batch: list[str] = []
            for album_dir in album_dirs(root, problems):
                batch.append(album_dir)
                if len(batch) == BATCH:
                    _reconcile_batch(engine, root, batch, result, live, skip, restore_deleted)
                    batch = []
            _reconcile_batch(engine, root, batch, result, live, skip, restore_deleted)
            for path in orphaned_rows(engine, root, live):
                result.orphaned_rows += 1
                result.add(path, ROW_ORPHANED, "album directory or sidecar gone; row kept")
        finally:
            if not dry_run:
                remove_temp_dir(root)
    except sa.exc.DBAPIError as exc:
        raise database_error(engine, exc) from None
    result.drift.sort(key=lambda d: d.staging_path)  # stable: an album's entries stay in order
    for problem in problems:
        logger.warning(problem)
    _log(result, logger)
    return result


def album_dirs(root: str, problems: list[str]) -> Iterator[str]:
    """Every directory at album depth, sorted; symlinks are not followed, the pipeline's own
    directories are skipped, a name that is not UTF-8 (Postgres cannot hold it) is reported."""
    level = [root]
    for depth in range(ALBUM_DEPTH):
        nxt = []
        for parent in level:
            try:
                entries = sorted(os.scandir(parent), key=lambda e: e.name)
            except OSError as exc:
                problems.append(f"cannot list {parent}: {exc.strerror}")
                continue
            for entry in entries:
                if depth == 0 and entry.name.startswith(OWN_DIRS) or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    entry.path.encode("utf-8")
                except UnicodeEncodeError:
                    problems.append(f"{entry.path!r}: name is not valid UTF-8; skipped")
                    continue
                if depth == ALBUM_DEPTH - 1:
                    yield entry.path
                else:
                    nxt.append(entry.path)
        level = nxt


def _read(album_dir: str) -> bytes | None:
    try:
        with open(os.path.join(album_dir, sc.SIDECAR_NAME), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None  # not an album directory


def heal_sidecar(root: str, album_dir: str, data: bytes, result: ReconcileResult) -> bytes | None:
    """The sidecar's bytes once it lists exactly the audio that is in its directory; None when
    none is left (the sidecar is removed). A dry run computes the same and writes nothing."""
    doc = json.loads(data)
    listed = doc.get("tracks") or []
    present = present_tracks(root, doc)
    found = unlisted_audio(root, album_dir, listed, result)
    if len(present) == len(listed) and not found:
        return data
    kept = {id(t) for t in present}
    missing = [str(t.get("file_path")) for t in listed if id(t) not in kept]
    result.tracks_dropped += len(missing)
    if not present and not found:
        result.sidecars_removed += 1
        result.add(album_dir, SIDECAR_REMOVED, f"none of its {len(listed)} file(s) is in staging")
        if not result.dry_run:
            os.unlink(os.path.join(album_dir, sc.SIDECAR_NAME))
            remove_empty_dirs(root, album_dir)
        return None
    result.sidecars_rewritten += 1
    if missing:
        result.add(album_dir, TRACKS_MISSING, "; ".join(missing))
    if found:
        result.tracks_added += len(found)
        result.add(album_dir, TRACKS_ADDED, "; ".join(os.path.basename(t["file_path"]) for t in found))
    doc["tracks"] = present + found
    sc.add_warnings(doc, [f"{path}: missing from staging; removed from the sidecar by reconcile" for path in missing]
                    + [f"{t['file_path']}: found in the album directory, not in its sidecar; added by reconcile"
                       for t in found])
    refresh_checks(album_dir, doc)  # the album checks describe the album as it now stands
    return sc.serialize(doc) if result.dry_run else sc.write_atomic(album_dir, doc, temp_dir(root))


SETTLED_SECONDS = 60  # a file changed more recently may still be being copied in: the next reconcile takes it


def unlisted_audio(root: str, album_dir: str, listed: list[dict], result: ReconcileResult) -> list[dict]:
    """Track entries for the audio files in `album_dir` that the sidecar does not list and that
    read as valid audio (tags as a scan reads them); each other one is reported with its reason
    and left alone, and only it."""
    keys = {name_key(os.path.basename(str(t.get("file_path") or ""))): t for t in listed}
    hashes = {t.get("checksum") for t in listed}
    rel = os.path.relpath(album_dir, root)
    found, left = [], []
    with os.scandir(album_dir) as it:
        entries = sorted((e for e in it if not e.name.startswith(".") and is_media(os.fsencode(e.name))),
                         key=lambda e: e.name)
    for e in entries:
        shown = os.fsencode(e.name).decode("utf-8", "backslashreplace")
        same = keys.get(name_key(e.name))
        if same is not None and os.path.basename(str(same.get("file_path"))) == e.name:
            continue  # listed
        why = None
        try:
            e.name.encode("utf-8")
        except UnicodeEncodeError:
            why = "its name is not valid UTF-8 (Melodee could not store it); rename it"
        if why is None and same is not None:
            why = f"differs from the listed {os.path.basename(str(same.get('file_path')))} only in letter case"
        if why is None and not e.is_file(follow_symlinks=False):
            why = "not a regular file (a symlink?)"
        try:
            st = e.stat(follow_symlinks=False) if why is None else None
            if st is not None and time.time() - st.st_mtime < SETTLED_SECONDS:
                why = "changed in the last minute; the next reconcile looks again"
            row = read_media_file(os.fsencode(e.path), st) if why is None else None
        except OSError as exc:
            why = f"unreadable: {exc.strerror or exc}"
        if why is None and not row["is_valid"]:
            why = row["validation_error"]
        if why is None and row["file_hash"] in hashes:
            why = "the same bytes as a track the sidecar lists already"
        if why is not None:
            left.append(f"{shown}: {why}")
            continue
        found.append(track_entry(rel, row, e.name))
        keys[name_key(e.name)] = found[-1]
        hashes.add(row["file_hash"])
    if left:
        result.unlisted_left += len(left)
        result.add(album_dir, UNLISTED, "; ".join(left))
    return found


def _reconcile_batch(engine: sa.Engine, root: str, batch: list[str], result: ReconcileResult, live: set[str],
                     skip: set[str], restore_deleted: bool) -> None:
    rows = []
    for album_dir in batch:
        try:
            data = _read(album_dir)
            if data is None:
                continue
            result.albums += 1
            live.add(album_dir)
            data = heal_sidecar(root, album_dir, data, result)
            if data is None:
                live.discard(album_dir)
            elif album_dir not in skip:
                rows.append(sidecar_row(album_dir, data))
        except SIDECAR_ERRORS as exc:
            result.unreadable += 1
            result.add(album_dir, UNREADABLE, f"{type(exc).__name__}: {exc}")
    with engine.connect() as conn:
        current = existing_rows(conn, [r["staging_path"] for r in rows])
    write, restored = [], set()
    for row in rows:
        path, old = row["staging_path"], current.get(row["staging_path"])
        if old is None and not restore_deleted:
            result.deleted_kept += 1
            result.add(path, ROW_DELETED, "no row (deleted by the admin); kept deleted without --restore-deleted")
        elif old is None:
            restored.add(path)
            write.append(row)
        elif old.checksum != row["checksum"]:
            write.append(row)
        else:
            result.unchanged += 1
    written = RecordResult()
    refused = set() if result.dry_run else upsert_rows(engine, write, written)
    result.rows_reopened += written.reopened
    result.refused += len(refused)
    for row in write:
        path = row["staging_path"]
        if path in refused:
            reason = next((r[len(path) + 2:] for r in written.refused if r.startswith(path + ": ")), "")
            result.add(path, ROW_REFUSED, reason)
            continue
        if path in restored:
            result.rows_restored += 1
            result.add(path, ROW_RESTORED, f"re-created: {row['track_count']} track(s)")
        else:
            result.rows_updated += 1
            old = current[path]
            result.add(path, ROW_UPDATED, f"sidecar changed: {old.track_count} -> {row['track_count']} track(s)")


def orphaned_rows(engine: sa.Engine, root: str, live: set[str]) -> list[str]:
    """Rows under this staging root whose album has no sidecar (any more)."""
    t = staging_items
    query = sa.select(t.c.staging_path).where(t.c.staging_path.startswith(root + os.sep, autoescape=True))
    with engine.connect() as conn:
        return sorted(p for p in conn.execute(query).scalars() if p not in live)


def _log(r: ReconcileResult, logger: logging.Logger) -> None:
    would = "would be " if r.dry_run else ""
    logger.info(
        f"reconcile{' (dry run)' if r.dry_run else ''}: {r.albums} album(s) in staging, {r.unchanged} unchanged; "
        f"sidecars {would}rewritten {r.sidecars_rewritten} ({r.tracks_dropped} missing file(s), {r.tracks_added} "
        f"unlisted added, {r.unlisted_left} unlisted left alone), {would}removed "
        f"{r.sidecars_removed}; rows {would}updated {r.rows_updated}, {would}restored {r.rows_restored}, "
        f"deleted by the admin and kept deleted {r.deleted_kept}; rows without an album {r.orphaned_rows}")
    if r.unreadable or r.refused:
        bad = [f"{d.staging_path}: {d.detail}" for d in r.drift if d.kind in (UNREADABLE, ROW_REFUSED)]
        logger.warning(f"{r.unreadable} unreadable sidecar(s), {r.refused} row(s) refused: " + "; ".join(bad[:20]))
