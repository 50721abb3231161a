"""record_staging_items (SPEC §8): one `staging_items` row per album directory, derived from sidecars.

Rows are a projection of the sidecars in the staging tree, not of this run's moves: every run
upserts each sidecar whose checksum differs from its row. So a run that crashed, or found the
database down, after moving files is healed by the next run, and a rerun changes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from melodee_pipeline import faults
from melodee_pipeline.db.engine import unavailable
from melodee_pipeline.db.schema import staging_items
from melodee_pipeline.staging import sidecar as sc

BATCH = 500


@dataclass
class RecordResult:
    inserted: int = 0
    updated: int = 0
    reopened: int = 0
    unchanged: int = 0
    unreadable: list[str] = field(default_factory=list)
    dry_run: bool = False


def iter_album_dirs(staging_root: str) -> Iterator[str]:
    """Album directories hold a sidecar at depth three: <code>/<artist>/<year - album>/."""
    def subdirs(path: str) -> list[str]:
        try:
            with os.scandir(path) as it:
                return sorted(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            return []

    for code in subdirs(staging_root):
        for artist in subdirs(code):
            for album in subdirs(artist):
                if os.path.isfile(os.path.join(album, sc.SIDECAR_NAME)):
                    yield album


def _row(album_dir: str, data: bytes) -> dict:
    doc = json.loads(data)
    tracks = doc.get("tracks") or []
    return {
        "scan_id": str(doc.get("scan_id") or ""),
        "staging_path": album_dir,
        "metadata_file": os.path.join(album_dir, sc.SIDECAR_NAME),
        "artist_name": (doc.get("artist") or {}).get("name") or "",
        "album_name": (doc.get("album") or {}).get("name") or "",
        "track_count": len(tracks),
        "total_size": sum(int(t.get("file_size") or 0) for t in tracks),
        "processed_at": doc.get("processed_at") or datetime.now(timezone.utc).isoformat(),
        "status": "pending_review",
        "checksum": sc.checksum(data),
    }


def _batches(staging_root: str, result: RecordResult) -> Iterator[list[dict]]:
    batch = []
    for album_dir in iter_album_dirs(staging_root):
        try:
            with open(os.path.join(album_dir, sc.SIDECAR_NAME), "rb") as f:
                batch.append(_row(album_dir, f.read()))
        except (OSError, ValueError) as exc:
            result.unreadable.append(f"{album_dir}: {exc}")
            continue
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def record_staging_items(engine: sa.Engine, staging_root: str, *, dry_run: bool = False) -> RecordResult:
    try:
        return _record(engine, staging_root, dry_run)
    except sa.exc.DBAPIError as exc:
        # Rows are derived from the sidecars, so the next run records whatever this one could not.
        raise unavailable(engine, exc) from None


def _record(engine: sa.Engine, staging_root: str, dry_run: bool) -> RecordResult:
    result = RecordResult(dry_run=dry_run)
    t = staging_items
    faults.point("before_record")  # sidecars complete, rows not yet written
    for batch in _batches(staging_root, result):
        with engine.begin() as conn:
            current = {
                r.staging_path: r
                for r in conn.execute(
                    sa.select(t.c.staging_path, t.c.checksum, t.c.track_count, t.c.status).where(
                        t.c.staging_path.in_([b["staging_path"] for b in batch])
                    )
                )
            }
            changed = []
            for row in batch:
                old = current.get(row["staging_path"])
                if old is None:
                    result.inserted += 1
                elif old.checksum == row["checksum"]:
                    result.unchanged += 1
                    continue
                else:
                    result.updated += 1
                    if old.status in ("approved", "rejected") and row["track_count"] > (old.track_count or 0):
                        result.reopened += 1
                changed.append(row)
            if changed and not dry_run:
                _upsert(conn, changed)
    return result


def _upsert(conn: sa.Connection, rows: list[dict]) -> None:
    t = staging_items
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
        ),
        rows,
    )
