"""`album.melodee.json`: the shape Melodee's Go processor writes, atomic writes, merging.

Names are normalised as Go's `NormalizeString` does (`lower(trim(s))`), so Melodee reads ours and we
recognise the album directories its processor wrote."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone

from melodee_pipeline.grouping import album_group_hash, album_group_id
from melodee_pipeline.staging.moves import replace_durably

SIDECAR_NAME = "album.melodee.json"
VERSION = "1.0"


def new_sidecar(scan_id: str, artist: str, code: str, album: str, year: int, genres: list[str], is_compilation: bool) -> dict:
    return {
        "version": VERSION,
        "processed_at": now_iso(),
        "scan_id": scan_id,
        "artist": {"name": artist, "name_normalized": go_normalize(artist), "directory_code": code},
        "album": {
            "name": album,
            "name_normalized": go_normalize(album),
            "album_type": "Album",
            "genres": genres,
            "is_compilation": is_compilation,
            "image_count": 0,
            "year": year,
        },
        "tracks": [],
        "status": "pending_review",
        "validation": {"is_valid": True, "errors": [], "warnings": []},
    }


def go_normalize(name: str) -> str:
    return name.strip().lower()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def group_id_of(sidecar: dict) -> str:
    """The album_group_id a sidecar belongs to, so a directory is never shared by two albums.
    Derived from the names, not `name_normalized`, so sidecars Go's processor wrote match too."""
    artist, album = sidecar.get("artist") or {}, sidecar.get("album") or {}
    group_hash = album_group_hash(str(artist.get("name") or ""), None, str(album.get("name") or ""))
    try:
        year = int(album.get("year") or 0)
    except (TypeError, ValueError):
        year = 0
    return album_group_id(group_hash, year)


def read(album_dir: str) -> dict | None:
    """The album directory's sidecar, None when it has none; ValueError when it is not one this
    pipeline (or Go's processor) could have written, so that album fails, and only it."""
    try:
        with open(os.path.join(album_dir, SIDECAR_NAME), "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return None
    if not (isinstance(doc, dict) and isinstance(doc.get("artist"), dict) and isinstance(doc.get("album"), dict)
            and isinstance(doc.get("tracks"), list) and all(isinstance(t, dict) for t in doc["tracks"])
            and isinstance(doc.get("validation", {}), dict)):
        raise ValueError(f"malformed sidecar {os.path.join(album_dir, SIDECAR_NAME)}")
    return doc


def serialize(sidecar: dict) -> bytes:
    return json.dumps(sidecar, indent=2, ensure_ascii=False).encode("utf-8")


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(album_dir: str, sidecar: dict, tmp_dir: str) -> bytes:
    """Replace the sidecar durably: a reader sees the old one or the new one, never half of one."""
    data = serialize(sidecar)
    replace_durably(os.path.join(album_dir, SIDECAR_NAME), data, tmp_dir)
    return data


def merge_tracks(sidecar: dict, tracks: list[dict]) -> int:
    """Append tracks not listed yet (keyed by file_path); never replace one already there."""
    listed = {t["file_path"] for t in sidecar["tracks"]}
    added = 0
    for t in tracks:
        if t["file_path"] not in listed:
            sidecar["tracks"].append(t)
            listed.add(t["file_path"])
            added += 1
    return added


def stamp(sidecar: dict, scan_id: str) -> None:
    sidecar["scan_id"], sidecar["processed_at"] = scan_id, now_iso()


def add_warnings(sidecar: dict, warnings: list[str], errors: list[str] = ()) -> None:
    v = sidecar.setdefault("validation", {"is_valid": True, "errors": [], "warnings": []})
    for w in warnings:
        if w not in v["warnings"]:
            v["warnings"].append(w)
    for e in errors:
        if e not in v["errors"]:
            v["errors"].append(e)
    v["is_valid"] = not v["errors"]
