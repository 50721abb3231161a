"""The never-lose-music invariants, checked on real trees and real rows."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import mediafile
import sqlalchemy as sa

from melodee_pipeline.convergence import sidecar_problem
from melodee_pipeline.scan.tags import sha256_file
from melodee_pipeline.staging.sidecar import checksum

SIDECAR = "album.melodee.json"


def file_hashes(*roots: Path) -> Counter:
    found: Counter = Counter()
    for root in roots:
        for dirpath, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".melodee-")]  # the pipeline's journal and temp files
            for n in names:
                if n != SIDECAR and not n.startswith("."):
                    found[sha256_file(os.path.join(dirpath, n))] += 1
    return found


@dataclass
class Report:
    lost: int = 0
    duplicate_files: int = 0
    duplicate_rows: int = 0
    left_in_inbound: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicate_files or self.duplicate_rows or self.left_in_inbound or self.problems)


def lost(original: Counter, *roots: Path) -> int:
    """Files of `original` whose bytes are nowhere under roots."""
    present = file_hashes(*roots)
    return sum(1 for h in original if h not in present)


def album_of(path: str) -> tuple[str, str]:
    """The album a file's own tags name, whatever their letter case or year: tracks that disagree
    on those are still one album and belong in one directory."""
    try:
        f = mediafile.MediaFile(path)
    except mediafile.UnreadableFileError:
        return "<unreadable>", path
    return (f.albumartist or f.artist or "").casefold(), (f.album or "").casefold()


def split_albums(staging: Path) -> list[str]:
    """Albums whose files sit in more than one directory of the staging tree (a directory
    without a sidecar counts too: a crash can leave one)."""
    dirs_of = defaultdict(set)
    for dirpath, dirs, names in os.walk(staging):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # journal, temp files
        for n in names:
            if n != SIDECAR and not n.startswith("."):
                dirs_of[album_of(os.path.join(dirpath, n))].add(os.path.relpath(dirpath, staging))
    return [f"album {key} split over {sorted(dirs)}" for key, dirs in dirs_of.items() if len(dirs) > 1]


def converged(original_valid: Counter, original_invalid: Counter, inbound: Path, staging: Path, engine) -> Report:
    """After a clean rerun: every valid file staged exactly once, invalid ones still in inbound,
    each album in one directory whose sidecar lists exactly its files and no error, one row per
    album directory, no temp files."""
    r = Report()
    staged, waiting = file_hashes(staging), file_hashes(inbound)
    r.lost = sum(1 for h in original_valid if h not in staged) + sum(1 for h in original_invalid if h not in waiting)
    r.duplicate_files = sum(n - 1 for n in staged.values() if n > 1)
    r.left_in_inbound = sum(1 for h in original_valid if h in waiting)
    album_dirs = {}
    for dirpath, _dirs, names in os.walk(staging):
        for n in names:
            if n.startswith("."):
                r.problems.append(f"temp file left: {dirpath}/{n}")
        if SIDECAR in names:
            data = (Path(dirpath) / SIDECAR).read_bytes()
            problem = sidecar_problem(dirpath, data, names)
            if problem:
                r.problems.append(problem)
            album_dirs[dirpath] = checksum(data)
            errors = json.loads(data)["validation"]["errors"]
            if errors:
                r.problems.append(f"sidecar of {dirpath} has errors: {errors}")
        elif names:
            r.problems.append(f"files without a sidecar in {dirpath}: {names}")
    r.problems += split_albums(staging)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT staging_path, checksum FROM staging_items")).all()
    counts = Counter(p for p, _ in rows)
    r.duplicate_rows = sum(n - 1 for n in counts.values() if n > 1)
    if {p: c for p, c in rows} != album_dirs:
        r.problems.append(f"rows {sorted(rows)} do not match album directories {sorted(album_dirs.items())}")
    return r
