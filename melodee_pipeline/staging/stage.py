"""stage_albums (SPEC §7): move every valid file of every album into the staging layout.

Crash safety, point by point (issue #5). Per album:
  0. (once per run) temp files a crashed run left in <staging>/.melodee-tmp are deleted;
  1. the album directory is created;
  2. the sidecar is written first as an intent journal listing existing + planned tracks, so a
     file can never sit in staging without its sidecar naming it;
  3. files are moved with `move_no_overwrite` (see moves.py for why each step is safe);
  4. inbound copies of already-staged files are removed only after re-checking the bytes;
  5. the sidecar is rewritten listing exactly the tracks present on disk.
A crash anywhere leaves every file in inbound or staging; the next run re-plans the same names
(deterministic), finds moved files identical and finishes the job. Rows in Postgres are derived
from the sidecars (records.py), so a crash before them is healed by the next run too.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field

from melodee_pipeline import faults
from melodee_pipeline.errors import UserError
from melodee_pipeline.parallel import bounded_map, thread_pool
from melodee_pipeline.scan import scandb
from melodee_pipeline.scan.tags import sha256_file
from melodee_pipeline.staging import sidecar as sc
from melodee_pipeline.staging.moves import clear_temp_dir, move_no_overwrite, remove_temp_dir, sha256_if_exists, temp_dir
from melodee_pipeline.staging.paths import ensure_inside, track_file_name, with_suffix_number
from melodee_pipeline.staging.plan import Album, DirectoryClaims, iter_albums
from melodee_pipeline.staging.ratelimit import RateLimiter

log = logging.getLogger(__name__)

MOVE, RENAME, ALREADY = "move", "rename", "already_staged"
PROGRESS_EVERY = 1000  # files between progress lines


@dataclass
class FileAction:
    file_id: int
    source: bytes
    name: str
    action: str
    sha256: str
    error: str | None = None


@dataclass
class AlbumOutcome:
    album: Album
    status: str = "planned"
    error: str | None = None
    actions: list[FileAction] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tracks: int = 0
    total_size: int = 0

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a.action == action and not a.error)

    @property
    def failed(self) -> int:
        return sum(1 for a in self.actions if a.error)


@dataclass(frozen=True)
class StageResult:
    albums_total: int
    albums_success: int
    albums_failed: int
    files_moved: int
    already_staged: int
    renamed: int
    files_failed: int
    dry_run: bool
    seconds: float


def _resolve(album_dir: str, name: str, src_hash: str, taken: dict[str, str], present: set[str]) -> tuple[str, str]:
    """Destination name and action for one file; never a name holding other bytes.
    `present` lists the directory once, so only real collisions cost a hash of the existing file."""
    n = 1
    while True:
        candidate = name if n == 1 else with_suffix_number(name, n)
        on_disk = taken.get(candidate)
        if on_disk is None and candidate in present:
            on_disk = sha256_if_exists(os.path.join(album_dir, candidate))
        if on_disk is None:
            taken[candidate] = src_hash
            return candidate, MOVE if n == 1 else RENAME
        if on_disk == src_hash:
            return candidate, ALREADY
        n += 1


def _track_entry(album: Album, f: sqlite3.Row, name: str) -> dict:
    return {
        "track_number": f["track_number"] or 0,
        "disc_number": f["disc_number"] or 1,
        "name": f["title"],
        "duration": f["duration"] or 0,
        "file_path": os.path.join(album.rel_dir, name),
        "file_size": f["file_size"],
        "bitrate": f["bitrate"] or 0,
        "sample_rate": f["sample_rate"] or 0,
        "checksum": f["file_hash"],
        "original_path": f["file_path"],
    }


def _remove_if_identical(source: bytes, dest: str) -> None:
    """The inbound copy goes only if staging holds the very same bytes now."""
    if os.path.samefile(source, dest) or sha256_file(source) == sha256_file(dest):
        os.unlink(source)
    else:
        raise OSError(f"{dest} no longer matches the source; left in inbound")


class AlbumStager:
    def __init__(self, staging_root: str, scan_id: str, dry_run: bool, limiter: RateLimiter):
        self.root, self.scan_id, self.dry_run, self.limiter = staging_root, scan_id, dry_run, limiter
        self.tmp = temp_dir(staging_root)

    def __call__(self, album: Album) -> AlbumOutcome:
        outcome = AlbumOutcome(album)
        try:
            self._stage(album, outcome)
        except Exception as exc:
            outcome.status, outcome.error = "failed", f"{type(exc).__name__}: {exc}"
        return outcome

    def _stage(self, album: Album, out: AlbumOutcome) -> None:
        album_dir = os.path.join(self.root, album.rel_dir)
        ensure_inside(self.root, album_dir)
        if not self.dry_run:
            os.makedirs(album_dir, exist_ok=True)
            ensure_inside(self.root, album_dir)
        present = set(os.listdir(album_dir)) if os.path.isdir(album_dir) else set()
        existing = sc.read(album_dir) if sc.SIDECAR_NAME in present else None
        sidecar = existing or sc.new_sidecar(
            self.scan_id, album.artist, album.code, album.album, album.year, album.genres, album.is_compilation
        )
        taken: dict[str, str] = {}
        entries = []
        for f in album.files:
            ext = os.path.splitext(f["file_path"])[1]
            name, action = _resolve(album_dir, track_file_name(f["title"], f["track_number"], f["disc_number"], ext),
                                    f["file_hash"], taken, present)
            out.actions.append(FileAction(f["id"], f["path_bytes"], name, action, f["file_hash"]))
            entries.append(_track_entry(album, f, name))
            if action == RENAME:
                out.warnings.append(f"{f['file_path']} staged as {name}: a different file already had its name")
        if self.dry_run:
            out.status, out.tracks = "planned", len(out.actions)
            return

        written = _fingerprint(sidecar) if existing else None
        sc.merge_tracks(sidecar, entries)
        sc.add_warnings(sidecar, out.warnings)
        if _fingerprint(sidecar) != written:
            sc.stamp(sidecar, self.scan_id)
            sc.write_atomic(album_dir, sidecar, self.tmp)  # intent journal; usually already the final sidecar
            written = _fingerprint(sidecar)
        faults.point("after_intent_sidecar")
        for act in out.actions:
            if act.action == ALREADY:
                continue
            self.limiter.wait()
            try:
                move_no_overwrite(act.source, os.path.join(album_dir, act.name), act.sha256, self.tmp)
            except OSError as exc:
                act.error = f"move failed: {exc.strerror or exc}"
            faults.point("after_move")
        for act in out.actions:
            if act.action == ALREADY:
                try:
                    _remove_if_identical(act.source, os.path.join(album_dir, act.name))
                except OSError as exc:
                    act.error = f"{exc.strerror or exc}"
        faults.point("before_final_sidecar")
        sidecar["tracks"] = [t for t in sidecar["tracks"] if os.path.isfile(os.path.join(self.root, t["file_path"]))]
        sc.add_warnings(sidecar, [], [f"{a.source.decode('utf-8', 'backslashreplace')}: {a.error}" for a in out.actions if a.error])
        if _fingerprint(sidecar) != written:
            sc.stamp(sidecar, self.scan_id)
            sc.write_atomic(album_dir, sidecar, self.tmp)
        out.tracks = len(sidecar["tracks"])
        out.total_size = sum(t.get("file_size") or 0 for t in sidecar["tracks"])
        if out.failed == len(out.actions):
            out.status, out.error = "failed", "; ".join(a.error for a in out.actions if a.error)
        elif out.failed:
            out.status, out.error = "partial", f"{out.failed} of {len(out.actions)} files failed"
        elif out.count(MOVE) + out.count(RENAME):
            out.status = "staged"
        else:
            out.status = "unchanged"


def _fingerprint(sidecar: dict) -> str:
    """What a run may change; the stamp (scan_id, processed_at) alone is no reason to rewrite."""
    return json.dumps([sidecar["tracks"], sidecar.get("validation")])


def _record(conn: sqlite3.Connection, out: AlbumOutcome, dry_run: bool) -> None:
    a = out.album
    conn.execute(
        "INSERT OR REPLACE INTO albums(album_group_id, artist, album, year, staging_dir, status, error, tracks, moved, "
        "already_staged, failed, renamed, total_size, warnings, dry_run) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (a.group_id, a.artist, a.album, a.year, a.rel_dir, out.status, out.error, out.tracks, out.count(MOVE) + out.count(RENAME),
         out.count(ALREADY), out.failed, out.count(RENAME), out.total_size, "\n".join(out.warnings) or None, int(dry_run)),
    )
    conn.executemany(
        "INSERT OR REPLACE INTO staged_files(file_id, album_group_id, destination, action, error) VALUES (?,?,?,?,?)",
        [(x.file_id, a.group_id, os.path.join(a.rel_dir, x.name), x.action, x.error) for x in out.actions],
    )


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
    workers: int = 4,
    rate_limit: int = 0,
    dry_run: bool = False,
    logger: logging.Logger | None = None,
) -> StageResult:
    logger = logger or log
    started = time.monotonic()
    conn = scandb.open_existing(scan_db)
    scan_id = scandb.get_info(conn, "scan_id")
    inbound = scandb.get_info(conn, "inbound_path")
    if not os.path.isdir(staging_root):
        raise UserError(f"staging path {staging_root} does not exist or is not a directory")
    if not dry_run:
        try:
            cleared = clear_temp_dir(staging_root)
        except OSError as exc:
            raise UserError(f"staging path {staging_root} refuses writes: {exc.strerror}") from None
        if cleared:
            logger.info(f"removed {cleared} temp file(s) left by an interrupted run")
    claims = DirectoryClaims(staging_root)
    stager = AlbumStager(staging_root, scan_id, dry_run, RateLimiter(rate_limit))

    def planned():
        for album in iter_albums(conn.cursor()):
            claims.assign(album)
            yield album

    totals = dict(albums=0, ok=0, failed=0, moved=0, already=0, renamed=0, files_failed=0)
    emptied: set[bytes] = set()
    pool = thread_pool(workers) if workers > 1 else None
    try:
        for out in bounded_map(stager, planned(), pool, window=workers * 4):
            _record(conn, out, dry_run)
            totals["albums"] += 1
            bad = out.status in ("failed", "partial")
            totals["failed" if bad else "ok"] += 1
            totals["moved"] += out.count(MOVE) + out.count(RENAME)
            totals["already"] += out.count(ALREADY)
            totals["renamed"] += out.count(RENAME)
            totals["files_failed"] += out.failed
            emptied.update(os.path.dirname(a.source) for a in out.actions if not a.error)
            if bad:
                logger.warning(f"album {out.album.artist} - {out.album.album} ({out.album.rel_dir}): {out.status}: {out.error}")
            files_done = totals["moved"] + totals["already"] + totals["files_failed"]
            if files_done // PROGRESS_EVERY > (files_done - len(out.actions)) // PROGRESS_EVERY:
                conn.commit()
                logger.info(f"{'planned' if dry_run else 'staged'} {totals['albums']} albums, {files_done} files "
                            f"({totals['moved']} moved) in {time.monotonic() - started:.1f}s")
    finally:
        if pool is not None:
            pool.shutdown()
        conn.commit()
    if not dry_run:
        remove_temp_dir(staging_root)
        if inbound:
            _remove_empty_dirs(emptied, os.fsencode(os.path.normpath(inbound)))
    seconds = time.monotonic() - started
    result = StageResult(totals["albums"], totals["ok"], totals["failed"], totals["moved"], totals["already"],
                         totals["renamed"], totals["files_failed"], dry_run, seconds)
    scandb.set_info(conn, staging_path=staging_root, dry_run=int(dry_run), staged=1, stage_seconds=f"{seconds:.3f}")
    conn.commit()
    conn.close()
    verb = "planned" if dry_run else "staged"
    logger.info(f"{verb} {result.albums_total} albums ({result.albums_failed} failed): {result.files_moved} files moved, "
                f"{result.already_staged} already staged, {result.renamed} renamed, {result.files_failed} failed in {seconds:.1f}s")
    return result
