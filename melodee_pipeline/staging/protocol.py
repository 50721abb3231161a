"""The staging protocol for one album, as named steps (docs/design.md, "The staging protocol").

  1. plan     choose each file's name in the album directory, the extras' too (extras.py);
              nothing is written
  2. journal  persist the plan (sticky destinations) before the first move
  3. move     place every track, then the extras of folders whose tracks are all in place, fsync
              the album directory once, then unlink the sources
  4. finish   rewrite the sidecar to list exactly the tracks present; the journal entry becomes
              the record step's "pending row"
  5. classify staged / unchanged / partial / failed

`stager.py` runs steps 1-5 for a batch of albums, a step at a time, with a group commit per step;
`recover` runs steps 3-5 from a journal entry alone, for an album a crash interrupted.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import dataclass, field

from melodee_pipeline import faults
from melodee_pipeline.diskspace import free_bytes, free_space, mib
from melodee_pipeline.errors import StagingFull, UserError
from melodee_pipeline.scan.tags import display_path
from melodee_pipeline.staging import journal
from melodee_pipeline.staging import sidecar as sc
from melodee_pipeline.staging.albumdir import is_regular, write_sidecar
from melodee_pipeline.staging.extras import extra_name
from melodee_pipeline.staging.moves import (
    DISK_FULL, fsync_dir, makedirs_durable, place, regular_file_sha256, unlink_if_same,
)
from melodee_pipeline.staging.paths import ensure_inside, name_key, track_file_name, with_suffix_number
from melodee_pipeline.staging.plan import Album
from melodee_pipeline.staging.ratelimit import RateLimiter
from melodee_pipeline.staging.validation import RENAME_REASONS, renamed_note

MOVE, RENAME, ALREADY = "move", "rename", "already_staged"
NOT_A_FILE = "<not a regular file>"  # never equal to a sha256
SPACE_RESERVE = 1 << 20  # bytes left free on a staging filesystem besides an album's files (sidecar, journal)

# The errors an album can fail with on its own: the filesystem, a tag, a path. Anything else is a
# bug and fails the step.
ALBUM_ERRORS = (OSError, UserError, ValueError)


@dataclass
class FileAction:
    source: bytes
    name: str
    action: str
    sha256: str
    size: int
    track: dict | None  # the sidecar entry; None for an extra (cover art, rip log…)
    file_id: int | None = None  # scanned_files.id, or scanned_extras.id for an extra
    error: str | None = None
    placed: bool = False  # the destination holds the bytes (moved now, or already there)
    scanned: tuple | None = None  # (size, mtime_ns, inode) the scan saw; None: unknown (recovery checks bytes)
    kept: str | None = None  # staged, but its inbound copy could not be deleted: why (a read-only inbound)


@dataclass
class AlbumOutcome:
    album_dir: str  # relative to the staging root
    status: str = "planned"
    error: str | None = None
    actions: list[FileAction] = field(default_factory=list)  # the tracks
    extras: list[FileAction] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # the album checks for the reviewer (validation.py)
    tracks: int = 0
    total_size: int = 0
    pending_row: bool = False  # a journal entry awaits the record step
    previous_scan_id: str | None = None  # the sidecar's stamp when this run planned it: an undo restores it
    album: Album | None = None  # None for an album finished from the journal

    def count(self, action: str) -> int:
        """Files of one action that were carried out (on a dry run: that are planned)."""
        planned = self.status == "planned"
        return sum(1 for a in self.actions if a.action == action and (a.placed or planned))

    @property
    def failed(self) -> int:
        return sum(1 for a in self.actions if a.error)

    @property
    def moved(self) -> int:
        return self.count(MOVE) + self.count(RENAME)


# 1. plan

def _listing(album_dir: str) -> dict[str, str]:
    """name_key -> name of what the album directory holds: names that differ only in case are
    one name on SMB shares and macOS, so two files must never get them."""
    try:
        return {name_key(n): n for n in os.listdir(album_dir)}
    except FileNotFoundError:
        return {}


def resolve_name(album_dir: str, name: str, sha256: str, taken: dict[str, str], present: dict[str, str]) -> tuple[str, str]:
    """Destination name and action for one file; never a name holding other bytes. Only real
    collisions cost a hash of the existing file."""
    n = 1
    while True:
        candidate = name if n == 1 else with_suffix_number(name, n)
        key = name_key(candidate)
        if key in taken:
            on_disk = taken[key]
        elif key in present:
            candidate = present[key]
            on_disk = taken[key] = regular_file_sha256(os.path.join(album_dir, candidate)) or NOT_A_FILE
        else:
            taken[key] = sha256
            return candidate, MOVE if n == 1 else RENAME
        if on_disk == sha256:
            return candidate, ALREADY
        n += 1


def track_entry(rel_dir: str, f: sqlite3.Row, name: str) -> dict:
    return {
        "track_number": f["track_number"] or 0,
        "disc_number": f["disc_number"] or 1,
        "name": f["title"],
        "duration": f["duration"] or 0,
        "file_path": os.path.join(rel_dir, name),
        "file_size": f["file_size"],
        "bitrate": f["bitrate"] or 0,
        "sample_rate": f["sample_rate"] or 0,
        "checksum": f["file_hash"],
        "original_path": f["file_path"],
        # For the reviewer's album checks (validation.py); Melodee ignores keys it does not know.
        "track_total": f["track_total"] or 0,
        "album_artist": f["album_artist"] or f["artist"],
    }


def plan_album(root: str, album: Album, recovered: set[str]) -> AlbumOutcome:
    """`recovered`: hashes that recovery staged this run; their sources are gone on purpose."""
    out = AlbumOutcome(album.rel_dir, album=album)
    album_dir = os.path.join(root, album.rel_dir)
    ensure_inside(root, album_dir)
    present, taken = _listing(album_dir), {}

    def planned(f: sqlite3.Row, wanted: str) -> FileAction | None:
        if f["file_hash"] in recovered and not os.path.lexists(f["path_bytes"]):
            return None
        name, action = resolve_name(album_dir, wanted, f["file_hash"], taken, present)
        if action == RENAME:
            blocker = os.path.join(album_dir, present.get(name_key(wanted), wanted))
            why = RENAME_REASONS[0] if os.path.lexists(blocker) and not is_regular(blocker) else RENAME_REASONS[1]
            out.warnings.append(renamed_note(f["file_path"], name, why))
        keys = f.keys()
        scanned = (f["file_size"], f["mtime_ns"] if "mtime_ns" in keys else None, f["inode"] if "inode" in keys else None)
        return FileAction(bytes(f["path_bytes"]), name, action, f["file_hash"], f["file_size"] or 0, None,
                          file_id=f["id"], scanned=scanned)

    for f in album.files:
        ext = os.path.splitext(f["file_path"])[1]
        if a := planned(f, track_file_name(f["title"], f["track_number"], f["disc_number"], ext)):
            a.track = track_entry(album.rel_dir, f, a.name)
            out.actions.append(a)
            if f["warnings"]:  # tags the scan had to drop (out-of-range numbers, control characters)
                out.warnings.append(f"{a.name}: {f['warnings']}")
    out.extras = [a for x in album.extras if (a := planned(x, extra_name(x["path_bytes"])))]
    out.warnings.extend(album.notes)
    return out


# 2. journal

def album_info(album: Album) -> dict:
    return {"artist": album.artist, "code": album.code, "album": album.album, "year": album.year,
            "genres": album.genres, "is_compilation": album.is_compilation}


def journal_album(root: str, out: AlbumOutcome, scan_id: str, info: dict, prior: journal.Entry | None) -> None:
    """Persist the plan before the first move (nothing to do when nothing will move). A pending
    row an earlier run left for this album keeps its `gained`."""
    if not any(a.action in (MOVE, RENAME) for a in out.actions + out.extras):
        return
    out.previous_scan_id = _stamp(os.path.join(root, out.album_dir), scan_id)
    entry = journal.Entry(
        out.album_dir, journal.MOVING, scan_id, info,
        [journal.JournalFile(os.fsdecode(a.source), a.name, a.sha256, a.size, a.track, a.action) for a in out.actions + out.extras],
        list(out.warnings), gained=bool(prior and prior.gained), previous_scan_id=out.previous_scan_id or "",
    )
    journal.write(root, entry)
    faults.point("after_journal")


def _stamp(album_dir: str, scan_id: str) -> str | None:
    """The run the album's sidecar names before this one adds to it (journaled: a crash after the
    sidecar is rewritten must not lose it)."""
    try:
        stamp = (sc.read(album_dir) or {}).get("scan_id") if os.path.isdir(album_dir) else None
    except ValueError:  # unreadable: this run's sidecar replaces it, with nothing to restore
        return None
    return str(stamp) if stamp and stamp != scan_id else None


# 3. move

def _check_space(root: str, album_dir: str, moving: list[FileAction]) -> None:
    """A full staging filesystem is a run-level condition: refuse an album that cannot fit."""
    root_dev, need = os.stat(root).st_dev, 0
    for a in moving:
        try:
            if os.lstat(a.source).st_dev != root_dev:  # copied, not linked: it takes space
                need += a.size
        except (OSError, ValueError):
            continue  # gone (or no name at all): `place` reports it
    if not need:
        return
    free = free_bytes(album_dir)
    if need + SPACE_RESERVE > free:
        raise StagingFull(f"staging filesystem {root} is full: {album_dir} needs {mib(need)} "
                          f"(+{mib(SPACE_RESERVE)} reserve), {mib(free)} free")


def _moving(actions: list[FileAction]) -> list[FileAction]:
    return [a for a in actions if a.action in (MOVE, RENAME) and not a.error]


def _hold_back_extras(out: AlbumOutcome) -> None:
    """An extra follows its folder's music: if a track of that folder (or of a folder right below
    it) is not in place, the folder's extras stay in inbound with it."""
    stuck = set().union(*(held_back_by(a.source) for a in out.actions if a.error))
    for a in out.extras:
        if not a.error and os.path.dirname(a.source) in stuck:
            a.error = "left in inbound: a track of its folder was not staged"


def held_back_by(track: bytes) -> set[bytes]:
    """The folders whose extras stay in inbound while `track` does: its own, and the one above it
    (the folder above an album's disc folders, `extras.FolderExtras`)."""
    folder = os.path.dirname(track)
    return {folder, os.path.dirname(folder)}


def move_files(root: str, out: AlbumOutcome, tmp_dir: str, limiter: RateLimiter | None = None) -> None:
    """Step 3 for one album on its own (recovery): place, then release."""
    place_files(root, out, tmp_dir, limiter)
    release_sources(root, out)


def place_files(root: str, out: AlbumOutcome, tmp_dir: str, limiter: RateLimiter | None = None) -> None:
    """Every new name, durable (in a group commit: at the barrier) before any source goes."""
    album_dir = os.path.join(root, out.album_dir)
    moving = _moving(out.actions)
    if moving or _moving(out.extras):
        ensure_inside(root, album_dir)  # before creating anything: a symlink planted meanwhile is refused
        makedirs_durable(album_dir, root)
        ensure_inside(root, album_dir)
        _check_space(root, album_dir, moving + _moving(out.extras))
    try:
        _place_all(album_dir, moving, tmp_dir, limiter)
        _hold_back_extras(out)
        moving += _moving(out.extras)
        _place_all(album_dir, _moving(out.extras), tmp_dir, limiter)
    except OSError as exc:
        _roll_back(album_dir, moving)
        if exc.errno not in DISK_FULL:
            raise  # this album fails; its sources are all still there
        raise StagingFull(f"staging filesystem {root} is full while staging {out.album_dir} "
                          f"({exc.strerror}); it needs {mib(sum(a.size for a in moving))}, "
                          f"{free_space(root)}") from None
    if any(a.placed for a in moving):
        fsync_dir(album_dir)  # every new name is durable before any source goes


def release_sources(root: str, out: AlbumOutcome) -> None:
    """Unlink the sources whose bytes are placed and durable."""
    album_dir = os.path.join(root, out.album_dir)
    faults.point("before_unlink_sources")
    for a in out.actions + out.extras:
        if a.error:
            continue
        if a.placed and a.action != ALREADY and changed_since_scan(a):
            # Rewritten while it was being staged: its inbound name stays, so the next scan reads
            # it again, rather than removing a name whose bytes no one checked.
            out.warnings.append(f"{display_path(a.source)} changed while it was staged; its inbound copy stays")
        elif a.placed:
            try:
                os.unlink(a.source)
            except FileNotFoundError:
                pass
            except OSError as exc:
                _kept(out, a, exc)
            faults.point("after_unlink")
        elif a.action == ALREADY:
            _settle_already(album_dir, a, out)
    out.warnings.extend(f"{display_path(a.source)}: {a.error}" for a in out.extras if a.error)


def changed_since_scan(a: FileAction) -> str | None:
    """A link moves whatever the name holds now, so a source that is no longer the file the scan
    read (replaced, rewritten, swapped for a symlink) stays in inbound; the next scan reads it again."""
    try:
        st = os.lstat(a.source)
    except FileNotFoundError:
        return None  # `place` reports a vanished source
    except OSError as exc:
        return f"cannot read it: {exc.strerror}; left in inbound"
    if not stat.S_ISREG(st.st_mode):
        return "no longer a regular file (a symlink?); left in inbound"
    size, mtime_ns, inode = a.scanned or (st.st_size, None, None)
    if st.st_size != size or mtime_ns not in (None, st.st_mtime_ns) or inode not in (None, st.st_ino):
        return "changed since the scan; left in inbound (the next run reads it again)"
    return None


def _place_all(album_dir: str, moving: list[FileAction], tmp_dir: str, limiter: RateLimiter | None) -> None:
    """Give each file its new name; the sources stay. A full disk stops the album (the caller rolls back)."""
    for a in moving:
        if limiter:
            limiter.wait()
        a.error = changed_since_scan(a)
        if a.error:
            continue
        try:
            place(a.source, os.path.join(album_dir, a.name), a.sha256, tmp_dir)
            a.placed = True
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise
            a.error = f"move failed: {exc.strerror or exc}"
        faults.point("after_place")


def _settle_already(album_dir: str, a: FileAction, out: AlbumOutcome) -> None:
    """Identical bytes already sit at the destination: the inbound copy goes, if it is still there
    and still the same. A missing source whose bytes are in place counts as already staged."""
    if regular_file_sha256(os.path.join(album_dir, a.name)) != a.sha256:
        a.error = f"{a.name} no longer holds the expected bytes; left in inbound"
        return
    a.placed = True
    try:
        if os.path.lexists(a.source) and not unlink_if_same(a.source, a.sha256):
            out.warnings.append(f"{display_path(a.source)} changed since the scan; left in inbound")
    except OSError as exc:
        _kept(out, a, exc)


def _kept(out: AlbumOutcome, a: FileAction, exc: OSError) -> None:
    a.kept = exc.strerror or str(exc)
    out.warnings.append(f"{display_path(a.source)} is staged, but its inbound copy stays: {a.kept}")


def _roll_back(album_dir: str, moving: list[FileAction]) -> None:
    """Disk full mid-album: the sources are all still there, so the new names simply go."""
    for a in moving:
        if a.placed:
            os.unlink(os.path.join(album_dir, a.name))
            a.placed = False
    fsync_dir(album_dir)


# 4. finish

def finish_album(root: str, out: AlbumOutcome, scan_id: str, info: dict, tmp_dir: str, prior: journal.Entry | None) -> None:
    """Sidecar lists exactly the tracks present; an album with none keeps no sidecar and gets no
    row. A changed sidecar leaves a `staged` journal entry, the record step's work list."""
    faults.point("before_sidecar")
    written = write_sidecar(
        root, os.path.join(root, out.album_dir), scan_id, info, tmp_dir,
        placed=[a.track for a in out.actions if a.placed and a.track], warnings=out.warnings,
        errors=[f"{display_path(a.source)}: {a.error}" for a in out.actions if a.error],
        extract=any(a.placed for a in out.actions + out.extras) and _may_hold_cover(out.album),
    )
    out.tracks, out.total_size, out.checks = written.tracks, written.total_size, written.checks
    # Journaled with the plan when files moved (a kill after this write keeps it); else (only files
    # already staged, a cover written again) the stamp this write replaced.
    out.previous_scan_id = out.previous_scan_id or written.previous_scan_id
    faults.point("after_sidecar")  # restamped, its journal entry still `moving`
    if written.changed or (prior is not None and prior.state in (journal.STAGED, journal.UNDONE)):
        journal.write(root, journal.Entry(out.album_dir, journal.STAGED, scan_id, info,
                                          gained=written.gained or bool(prior and prior.gained)))
        out.pending_row = True
    else:
        journal.remove(root, out.album_dir)


def _may_hold_cover(album: Album | None) -> bool:
    """Whether a track may embed a cover: the scan says so per file (NULL: an older scan DB, or
    an album finished from the journal, whose tracks nobody read this run)."""
    return album is None or any(f["has_cover"] != 0 for f in album.files)


# 5. classify

def classify(out: AlbumOutcome) -> None:
    if out.actions and out.failed == len(out.actions):
        out.status, out.error = "failed", "; ".join(a.error for a in out.actions if a.error)
    elif out.failed:
        out.status, out.error = "partial", f"{out.failed} of {len(out.actions)} files failed"
    elif out.moved:
        out.status = "staged"
    else:
        out.status = "unchanged"


def recover(root: str, entry: journal.Entry, tmp_dir: str) -> AlbumOutcome:
    """Finish an album a crash interrupted, from its journal entry alone: every journaled file
    ends in its sticky destination or stays in inbound; the sidecar lists exactly what is there."""
    previous = entry.previous_scan_id  # None: an entry of an older version, which did not journal it
    if previous is None:
        previous = _stamp(os.path.join(root, entry.album_dir), entry.scan_id)
    out = AlbumOutcome(entry.album_dir, warnings=list(entry.warnings), previous_scan_id=previous or None)
    album_dir = os.path.join(root, entry.album_dir)
    ensure_inside(root, album_dir)  # the journal is a file in staging: trust none of its paths
    stuck: set[bytes] = set()  # folders with a track that stays in inbound: their extras stay too
    for jf in sorted(entry.files, key=lambda f: f.track is None):  # tracks first
        a = FileAction(os.fsencode(jf.source), jf.name, MOVE, jf.sha256, jf.size, jf.track)
        dest = os.path.join(album_dir, jf.name)
        if os.path.basename(jf.name) != jf.name or jf.name in ("", ".", ".."):
            raise UserError(f"journal entry for {entry.album_dir} names {jf.name!r}, not a file name")
        if regular_file_sha256(dest) == jf.sha256:
            a.action = ALREADY
        elif os.path.lexists(dest):
            a.error = f"{jf.name} now holds other content; left in inbound"
        elif regular_file_sha256(a.source) != jf.sha256:
            a.error = "vanished or changed since the interrupted run; not staged"
        elif jf.track is None and os.path.dirname(a.source) in stuck:
            a.error = "left in inbound: a track of its folder was not staged"
        if a.error and jf.track is not None:
            out.warnings.append(f"{display_path(a.source)}: {a.error}")
            stuck |= held_back_by(a.source)
            continue
        (out.actions if jf.track is not None else out.extras).append(a)
    move_files(root, out, tmp_dir)
    finish_album(root, out, entry.scan_id, entry.album, tmp_dir, journal.Entry(
        entry.album_dir, journal.STAGED, entry.scan_id, entry.album, gained=True) if out.actions else None)
    classify(out)
    return out
