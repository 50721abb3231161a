"""The convergence check after a real run: what the run touched is consistent.

For every album directory the run moved files into (the scan DB's `albums` rows with status
staged or partial): its sidecar lists exactly the files the directory holds, and its
`staging_items` row exists and carries the sidecar's checksum. And the staging temp dir holds
no debris. It looks only at the run's own albums: a walk of the whole tree grows with staging
(`reconcile` does that, on demand), and a missing row of an album the run did not touch may be
the admin's deletion, which stands.
"""

from __future__ import annotations

import json
import os
from contextlib import closing
from dataclasses import dataclass, field
from typing import Iterable

import sqlalchemy as sa

from melodee_pipeline.records import existing_rows
from melodee_pipeline.scan import scandb
from melodee_pipeline.scan.walk import is_media
from melodee_pipeline.staging import sidecar as sc
from melodee_pipeline.staging.moves import temp_dir

BATCH = 500
# Files the run moved in: these albums must have a current row.
TOUCHED = ("staged", "partial")


@dataclass
class Convergence:
    albums_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def sidecar_problem(album_dir: str, data: bytes, names: Iterable[str]) -> str | None:
    """Why the sidecar (its bytes `data`) does not list exactly the files `names` beside it, or None."""
    try:
        listed = sorted(os.path.basename(t["file_path"]) for t in json.loads(data)["tracks"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable sidecar in {album_dir}: {exc}"
    present = sorted(n for n in names if is_media(os.fsencode(n)))  # extras (covers, logs) have no track entry
    if listed != present:
        return f"sidecar of {album_dir} lists {listed}, directory holds {present}"
    return None


def temp_debris(staging_root: str) -> list[str]:
    """Files left in the staging temp dir (a run empties and removes it when it ends)."""
    try:
        return sorted(os.path.join(temp_dir(staging_root), n) for n in os.listdir(temp_dir(staging_root)))
    except FileNotFoundError:
        return []


def touched_albums(scan_db: str) -> list[str]:
    """Album directories (relative to the staging root) a real run moved files into."""
    with closing(scandb.open_existing(scan_db)) as conn:
        marks = ",".join("?" * len(TOUCHED))
        return [r[0] for r in conn.execute(
            f"SELECT staging_dir FROM albums WHERE dry_run = 0 AND status IN ({marks}) ORDER BY staging_dir", TOUCHED)]


def check_albums(engine: sa.Engine, staging_root: str, album_dirs: list[str]) -> Convergence:
    root = os.path.normpath(staging_root)
    result = Convergence(albums_checked=len(album_dirs))
    with engine.connect() as conn:
        # BATCH albums at a time: the sidecars' checksums and their rows of 40,000 albums held at
        # once made this check the biggest thing in a run's memory.
        for start in range(0, len(album_dirs), BATCH):
            _check_batch(conn, root, album_dirs[start:start + BATCH], result)
    result.problems += [f"debris in the staging temp dir: {p}" for p in temp_debris(root)]
    return result


def _check_batch(conn: sa.Connection, root: str, album_dirs: list[str], result: Convergence) -> None:
    checksums: dict[str, str] = {}
    for rel in album_dirs:
        album_dir = os.path.join(root, rel)
        try:
            names = [e.name for e in os.scandir(album_dir) if not e.is_dir(follow_symlinks=False)]
            with open(os.path.join(album_dir, sc.SIDECAR_NAME), "rb") as f:
                data = f.read()
        except OSError as exc:
            result.problems.append(f"album {album_dir}: {exc.strerror or exc}")
            continue
        problem = sidecar_problem(album_dir, data, names)
        if problem:
            result.problems.append(problem)
        checksums[album_dir] = sc.checksum(data)
    rows = existing_rows(conn, list(checksums))
    for path, checksum in checksums.items():
        row = rows.get(path)
        if row is None:
            result.problems.append(f"no staging_items row for {path}")
        elif row.checksum != checksum:
            result.problems.append(f"staging_items row of {path} has checksum {row.checksum}, the sidecar {checksum}")


def check_run(engine: sa.Engine, scan_db: str, staging_root: str) -> Convergence:
    return check_albums(engine, staging_root, touched_albums(scan_db))
