"""group_albums (SPEC §6): album_group_hash per file, then album_group_id with the voted year."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass

from melodee_pipeline.scan import scandb

_EDITION = re.compile(
    r"[\(\[](?:remaster|remastered|deluxe edition|expanded edition|anniversary edition)[\)\]]"
)
_WS = re.compile(r"\s+")


def normalize_album(album: str) -> str:
    name = _EDITION.sub("", album.lower())
    name = name.strip()
    if name.startswith("the "):
        name = name[4:]
    return _WS.sub("", name)


def album_group_hash(artist: str | None, album_artist: str | None, album: str | None) -> str:
    return (album_artist or artist or "").strip().lower() + "::" + normalize_album(album or "")


def vote_year(years: Counter) -> int:
    """Majority year inside a hash group; a tie goes to the larger year. Missing years count as 0."""
    return max(years.items(), key=lambda kv: (kv[1], kv[0]))[0]


def album_group_id(group_hash: str, year: int) -> str:
    return f"{group_hash}_{year}"


@dataclass(frozen=True)
class GroupResult:
    albums: int
    files: int


def group_albums(scan_db: str) -> GroupResult:
    conn = scandb.open_existing(scan_db)
    try:
        return _group(conn)
    finally:
        conn.close()


def _group(conn: sqlite3.Connection) -> GroupResult:
    # Pass 1 hashes every valid file and counts years per hash; pass 2 writes both columns by
    # primary key (an UPDATE ... WHERE album_group_hash = ? per group would scan the table each time).
    years: dict[str, Counter] = defaultdict(Counter)
    hashes = []
    for row in conn.execute("SELECT id, artist, album_artist, album, year FROM scanned_files WHERE is_valid = 1"):
        h = album_group_hash(row["artist"], row["album_artist"], row["album"])
        years[h][row["year"] or 0] += 1
        hashes.append((row["id"], h))
    group_ids = {h: album_group_id(h, vote_year(c)) for h, c in years.items()}
    with conn:
        conn.executemany(
            "UPDATE scanned_files SET album_group_hash = ?, album_group_id = ? WHERE id = ?",
            ((h, group_ids[h], file_id) for file_id, h in hashes),
        )
        scandb.set_info(conn, albums=len(years), grouped=1)
    return GroupResult(albums=len(years), files=len(hashes))
