"""record_staging_items: one `staging_items` row per album a run touched (docs/design.md, "Rows").

The work list is the journal's `staged` entries: albums whose sidecar this run (or an earlier,
interrupted one) changed and whose row is not committed yet. An entry is removed only after its
row is committed, so a crash or a database outage is healed by the next run, and a run never
walks the staging tree (`reconcile.py` does, on demand).

The admin's decisions stand: a row that is gone while its sidecar stays was deleted on purpose
(rejected and removed, or promoted by Melodee), so it is re-created only when the album gained
tracks since. What Postgres cannot hold never stops a run: names are shortened to fit Melodee's
artist/album index, NULs removed, and a row Postgres still refuses fails that album's row alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from melodee_pipeline import faults
from melodee_pipeline.db.engine import database_error, is_unreachable
from melodee_pipeline.db.schema import staging_items
from melodee_pipeline.staging import journal
from melodee_pipeline.staging import sidecar as sc
from melodee_pipeline.staging.paths import truncate_utf8

BATCH = 500
# What reading a sidecar a human may have edited can raise; that album's row fails, not the step.
SIDECAR_ERRORS = (OSError, ValueError, TypeError, AttributeError, KeyError)
# idx_staging_artist_album holds (artist_name, album_name) in one B-tree entry of at most 2704
# bytes; 1200 bytes each leaves room for the tuple header. The sidecar keeps the whole names.
MAX_NAME_BYTES = 1200


@dataclass
class RecordResult:
    inserted: int = 0
    updated: int = 0
    reopened: int = 0
    unchanged: int = 0
    deleted_kept: int = 0  # rows the admin deleted, left deleted (the album gained no tracks)
    gone: int = 0  # albums that left staging before their row was written
    removed: int = 0  # rows deleted because an undo emptied their album
    refused: list[str] = field(default_factory=list)  # album dir: reason, per row Postgres refused
    unreadable: list[str] = field(default_factory=list)


def _name(value: object) -> str:
    text = str(value or "").replace("\x00", "")
    return truncate_utf8(text, MAX_NAME_BYTES)


def _timestamp(value: object) -> datetime:
    """Naive UTC, as Melodee's `timestamp` columns hold."""
    try:
        ts = datetime.fromisoformat(str(value))
    except ValueError:
        ts = datetime.now(timezone.utc)
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    return ts


def sidecar_row(album_dir: str, data: bytes) -> dict:
    doc = json.loads(data)
    tracks = doc.get("tracks") or []
    return {
        "scan_id": str(doc.get("scan_id") or "").replace("\x00", ""),
        "staging_path": album_dir,
        "metadata_file": os.path.join(album_dir, sc.SIDECAR_NAME),
        "artist_name": _name((doc.get("artist") or {}).get("name")),
        "album_name": _name((doc.get("album") or {}).get("name")),
        "track_count": len(tracks),
        "total_size": sum(int(t.get("file_size") or 0) for t in tracks),
        "processed_at": _timestamp(doc.get("processed_at")),
        "status": "pending_review",
        "notes": "",
        "checksum": sc.checksum(data),
    }


def read_row(album_dir: str) -> dict:
    with open(os.path.join(album_dir, sc.SIDECAR_NAME), "rb") as f:
        return sidecar_row(album_dir, f.read())


def record_staging_items(engine: sa.Engine, staging_root: str, *, dry_run: bool = False) -> RecordResult:
    """Write the rows of the journal's pending albums; a dry run writes nothing and has none."""
    result = RecordResult()
    if dry_run:
        return result
    root = os.path.normpath(staging_root)
    faults.point("before_record")  # sidecars complete, rows not yet written
    try:
        # One batch of entries in memory at a time: memory stays flat however many albums a run staged.
        for found, problems in journal.batches(root, None, BATCH):
            result.unreadable += problems
            settle_undone(engine, root, [e for e in found if e.state == journal.UNDONE], result)
            _record_batch(engine, root, [e for e in found if e.state == journal.STAGED], result)
    except sa.exc.DBAPIError as exc:
        # The journal entries stay, so the next run records whatever this one could not.
        raise database_error(engine, exc) from None
    journal.remove_dir_if_empty(root)
    return result


def _record_batch(engine: sa.Engine, root: str, batch: list[journal.Entry], result: RecordResult) -> None:
    rows, gained, done = [], {}, []
    for entry in batch:
        album_dir = os.path.join(root, entry.album_dir)
        try:
            row = read_row(album_dir)
        except FileNotFoundError:
            result.gone += 1  # promoted or removed meanwhile: nothing to review
            done.append(entry)
            continue
        except SIDECAR_ERRORS as exc:
            result.unreadable.append(f"{album_dir}: {exc}")
            continue
        rows.append(row)
        gained[album_dir] = entry.gained
        done.append(entry)
    with engine.begin() as conn:
        current = existing_rows(conn, [r["staging_path"] for r in rows])
    write = []
    for row in rows:
        old = current.get(row["staging_path"])
        if old is None and not gained[row["staging_path"]]:
            result.deleted_kept += 1
        elif old is not None and old.checksum == row["checksum"]:
            result.unchanged += 1
        else:
            write.append(row)
    refused = upsert_rows(engine, write, result)
    for entry in done:
        if os.path.join(root, entry.album_dir) not in refused:
            journal.remove(root, entry.album_dir)


def settle_undone(engine: sa.Engine, root: str, entries: list[journal.Entry], result: RecordResult) -> None:
    """Rows of albums an undo changed: rewritten from the sidecar that is left, or, when the
    album directory is gone, deleted while still `pending_review` (a reviewed row is the
    admin's record and stays). Each entry goes once its row is settled."""
    for entry in entries:
        album_dir = os.path.join(root, entry.album_dir)
        try:
            row = read_row(album_dir)
        except FileNotFoundError:
            row = None
        except SIDECAR_ERRORS as exc:
            result.unreadable.append(f"{album_dir}: {exc}")
            continue
        if row is not None:
            with engine.connect() as conn:
                exists = bool(existing_rows(conn, [album_dir]))
            if exists and upsert_rows(engine, [row], result):
                continue  # refused: the entry stays for the next run (a deleted row stays deleted)
        else:
            with engine.begin() as conn:
                t = staging_items
                gone = conn.execute(sa.delete(t).where(t.c.staging_path == album_dir, t.c.status == "pending_review"))
            result.removed += gone.rowcount
        journal.remove(root, entry.album_dir)


def existing_rows(conn: sa.Connection, paths: list[str]) -> dict:
    t = staging_items
    if not paths:
        return {}
    query = sa.select(t.c.staging_path, t.c.checksum, t.c.track_count, t.c.status).where(t.c.staging_path.in_(paths))
    return {r.staging_path: r for r in conn.execute(query)}


def upsert_rows(engine: sa.Engine, rows: list[dict], result: RecordResult) -> set[str]:
    """One transaction for the batch; if Postgres refuses it, one per row, so a row it still
    refuses fails alone. Returns the staging paths of refused rows."""
    if not rows:
        return set()
    try:
        with engine.begin() as conn:
            counts = _upsert(conn, rows)
        _add(result, counts)
        return set()
    except sa.exc.DBAPIError as exc:
        if is_unreachable(exc):
            raise
    refused = set()  # the batch was refused: find the rows Postgres refuses, one transaction each
    for row in rows:
        try:
            with engine.begin() as conn:
                counts = _upsert(conn, [row])
            _add(result, counts)
        except sa.exc.DBAPIError as exc:
            if is_unreachable(exc):
                raise
            reason = str(exc.orig or exc).strip().splitlines()[0]
            result.refused.append(f"{row['staging_path']}: {reason}")
            refused.add(row["staging_path"])
    return refused


def _add(result: RecordResult, counts: dict) -> None:
    result.inserted += counts["inserted"]
    result.updated += counts["updated"]
    result.reopened += counts["reopened"]


def _upsert(conn: sa.Connection, rows: list[dict]) -> dict:
    t = staging_items
    before = existing_rows(conn, [r["staging_path"] for r in rows])
    stmt = insert(t)
    ex = stmt.excluded
    # Literal statuses: an expanding IN parameter cannot be used in an executemany.
    reviewed = t.c.status.in_([sa.literal_column("'approved'"), sa.literal_column("'rejected'")])
    gained = sa.and_(reviewed, ex.track_count > sa.func.coalesce(t.c.track_count, 0))
    note = sa.func.concat(
        "reopened for review: ", ex.track_count - sa.func.coalesce(t.c.track_count, 0), " new track(s) added by scan ", ex.scan_id
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[t.c.staging_path],
            set_={
                "scan_id": ex.scan_id,
                "metadata_file": ex.metadata_file,
                "artist_name": ex.artist_name,
                "album_name": ex.album_name,
                "track_count": ex.track_count,
                "total_size": ex.total_size,
                "processed_at": ex.processed_at,
                "checksum": ex.checksum,
                "status": sa.case((gained, "pending_review"), else_=t.c.status),
                "notes": sa.case(
                    (gained, sa.func.concat_ws("\n", sa.func.nullif(t.c.notes, ""), note)), else_=t.c.notes
                ),
            },
            where=t.c.checksum.is_distinct_from(ex.checksum),
        # RETURNING makes SQLAlchemy send the batch as multi-row VALUES (one round trip a
        # thousand rows); without it, an upsert goes one row a round trip. A batch's staging
        # paths are distinct (one journal entry per album directory); were they not, Postgres
        # would refuse the batch, and the rows would be retried one by one (upsert_rows).
        ).returning(t.c.staging_path),
        rows,
    )
    reopened = sum(1 for r in rows if (old := before.get(r["staging_path"])) is not None
                   and old.status in ("approved", "rejected") and r["track_count"] > (old.track_count or 0))
    inserted = sum(1 for r in rows if r["staging_path"] not in before)
    return {"inserted": inserted, "updated": len(rows) - inserted, "reopened": reopened}


def count_planned_rows(engine: sa.Engine, staging_root: str, album_dirs: list[str]) -> RecordResult:
    """A dry run's forecast: of the albums the plan would move files into, how many rows would
    be new and how many updated."""
    root = os.path.normpath(staging_root)
    paths = [os.path.join(root, d) for d in album_dirs]
    result = RecordResult()
    try:
        with engine.connect() as conn:
            for start in range(0, len(paths), BATCH):
                found = existing_rows(conn, paths[start:start + BATCH])
                result.updated += len(found)
                result.inserted += len(paths[start:start + BATCH]) - len(found)
    except sa.exc.DBAPIError as exc:
        raise database_error(engine, exc) from None
    return result
