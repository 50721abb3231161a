"""An album directory's sidecar, written to match what the directory holds (docs/design.md, "The
staging protocol", step 4). Staging and undo both end an album here: the sidecar lists exactly
the tracks present, its image count and album checks are recomputed, and a directory left with
no track keeps no sidecar (no phantom album, no row).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field

from melodee_pipeline.scan.walk import is_media
from melodee_pipeline.staging import sidecar as sc
from melodee_pipeline.staging.extras import extract_cover
from melodee_pipeline.staging.paths import ensure_inside
from melodee_pipeline.staging.validation import album_warnings, is_album_warning, is_image, note_stands


@dataclass
class Written:
    changed: bool = False  # the sidecar was rewritten or removed
    gained: bool = False  # tracks were added: a new review
    tracks: int = 0
    total_size: int = 0
    checks: list[str] = field(default_factory=list)
    previous_scan_id: str | None = None  # the stamp this write replaced


def is_regular(path: str) -> bool:
    """A regular file, not a symlink to one: one lstat."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (OSError, ValueError):  # ValueError: a NUL in a name from a hand-edited sidecar
        return False


def present_tracks(root: str, sidecar: dict) -> list[dict]:
    """The sidecar's tracks whose file is in staging: a sidecar lists exactly these."""
    return [t for t in sidecar.get("tracks") or [] if is_regular(os.path.join(root, t.get("file_path") or ""))]


def _fingerprint(sidecar: dict) -> str:
    """What a run may change; the stamp (scan_id, processed_at) alone is no reason to rewrite."""
    return json.dumps([sidecar["tracks"], sidecar.get("validation"), sidecar.get("album")])


def write_sidecar(root: str, album_dir: str, scan_id: str, info: dict, tmp_dir: str, *, placed: list[dict] = (),
                  warnings: list[str] = (), errors: list[str] = (), extract: bool = False) -> Written:
    """`placed`: track entries now in the directory; `extract`: files arrived, so an album still
    without an image gets its embedded cover. A new sidecar is built from `info`."""
    if not os.path.isdir(album_dir):
        return Written()
    ensure_inside(root, album_dir)
    existing = sc.read(album_dir)
    doc = existing or sc.new_sidecar(scan_id, **info)
    before = _fingerprint(doc) if existing else None
    doc["tracks"] = present_tracks(root, doc)
    added = sc.merge_tracks(doc, list(placed))
    if not doc["tracks"] and not (existing and _holds_audio(album_dir)):
        # Nothing of this album is here (every move failed, or its files left): no phantom album.
        # Audio the sidecar never listed (copied in by hand) keeps it, so the album stays in view:
        # its row, and `reconcile`, which adds such audio to the sidecar.
        if existing:
            os.unlink(os.path.join(album_dir, sc.SIDECAR_NAME))
        remove_empty_dirs(root, album_dir)
        return Written(changed=existing is not None)
    sc.add_warnings(doc, list(warnings), list(errors))
    cover = extract_cover(root, album_dir, doc, scan_id, tmp_dir) if extract else None
    written = Written(gained=added > 0, tracks=len(doc["tracks"]), checks=refresh_checks(album_dir, doc, cover),
                      total_size=sum(int(t.get("file_size") or 0) for t in doc["tracks"]))
    if _fingerprint(doc) != before:
        if existing and existing.get("scan_id") != scan_id:
            written.previous_scan_id = existing.get("scan_id")
        sc.stamp(doc, scan_id)
        sc.write_atomic(album_dir, doc, tmp_dir)
        written.changed = True
    return written


def _holds_audio(album_dir: str) -> bool:
    return any(is_media(os.fsencode(n)) and not n.startswith(".") for n in os.listdir(album_dir))


def refresh_checks(album_dir: str, doc: dict, cover: str | None = None) -> list[str]:
    """The album facts recomputed from what the directory holds: its images (and whether the
    cover taken from the tags is still there) and the album checks, which replace the previous
    run's instead of piling up. `cover`: a cover just extracted, whose name a group commit
    publishes at its barrier."""
    names = [n for n in os.listdir(album_dir) if is_regular(os.path.join(album_dir, n))]
    if cover and cover not in names:
        names.append(cover)
    extracted = doc["album"].get("cover_from_tags")
    if extracted and extracted.get("file") not in names:
        del doc["album"]["cover_from_tags"]
    images = sum(1 for n in names if is_image(n))
    doc["album"]["image_count"] = images
    checks = album_warnings(doc["tracks"], doc["album"], images)
    v = doc.setdefault("validation", {"is_valid": True, "errors": [], "warnings": []})
    # A file renamed on its way in that has left (undone, removed by hand) takes its note along.
    v["warnings"] = [w for w in v.get("warnings") or [] if not is_album_warning(w) and note_stands(w, names)] + checks
    return checks


def remove_empty_dirs(root: str, album_dir: str) -> None:
    d = album_dir
    while d != root and d.startswith(root + os.sep):
        try:
            os.rmdir(d)
        except OSError:
            return
        d = os.path.dirname(d)
