"""Turn grouped scan rows into albums with collision-free staging directories (docs/design.md).

Two albums never share a directory unless their album_group_id is equal: sanitising is lossy
(`AC/DC` and `AC-DC` give the same name), so a directory that is claimed by another album, in
this run or by an existing sidecar, gets a deterministic ` (2)`, ` (3)`… suffix instead. An
existing directory whose name differs only in letter case is the same directory (it is, on SMB
shares and macOS), so it is reused under its existing spelling.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

from melodee_pipeline.staging import sidecar as sc
from melodee_pipeline.staging.paths import MAX_COMPONENT_BYTES, album_dir_parts, name_key, truncate_utf8

_VARIOUS = {"various artists", "various", "va", "v.a."}

FILE_COLUMNS = (
    "id, path_bytes, file_path, file_hash, file_size, artist, album_artist, album, title, track_number, "
    "disc_number, year, genre, duration, bitrate, sample_rate, album_group_id, warnings, track_total, mtime_ns, inode, "
    "has_cover"
)


@dataclass
class Album:
    group_id: str
    artist: str
    album: str
    year: int
    genres: list[str]
    is_compilation: bool
    code: str
    rel_dir: str = ""  # relative to the staging root
    files: list[dict] = field(default_factory=list)
    extras: list[sqlite3.Row] = field(default_factory=list)  # scanned_extras rows that travel with it
    notes: list[str] = field(default_factory=list)  # extras that stay in inbound, and why


def _most_common(values: list[str]) -> str:
    return Counter(values).most_common(1)[0][0]


def build_album(group_id: str, files: list[dict]) -> Album:
    artists = [f["album_artist"] or f["artist"] for f in files]
    artist = _most_common(artists)
    album = _most_common([f["album"] for f in files])
    year = int(group_id.rsplit("_", 1)[1])
    genres = [g for g, _ in Counter(f["genre"] for f in files if f["genre"]).most_common()]
    # Files group by album artist (or artist), so "Various Artists" is what marks a compilation.
    is_compilation = artist.strip().lower() in _VARIOUS
    code, artist_dir, album_dir = album_dir_parts(artist, year, album)
    return Album(group_id, artist, album, year, genres, is_compilation, code, os.path.join(code, artist_dir, album_dir), files)


_FILE_NAMES = tuple(c.strip() for c in FILE_COLUMNS.split(","))


def _as_dict(cursor: sqlite3.Cursor, row: tuple) -> dict:
    return dict(zip(_FILE_NAMES, row))


def iter_albums(cursor: sqlite3.Cursor) -> Iterator[Album]:
    """Albums in album_group_id order, one at a time (the scan DB may hold 100k files). Rows are
    dicts, which a staging worker process receives as they are: a `sqlite3.Row` does not pickle,
    and copying one into a dict cost ~20 µs a file in the run's own process."""
    cursor.row_factory = _as_dict
    rows = cursor.execute(
        f"SELECT {FILE_COLUMNS} FROM scanned_files WHERE is_valid = 1 AND album_group_id != '' "
        "ORDER BY album_group_id, disc_number, track_number, file_path"
    )
    for group_id, files in itertools.groupby(rows, key=lambda r: r["album_group_id"]):
        yield build_album(group_id, list(files))


def _numbered(name: str, n: int) -> str:
    suffix = f" ({n})"
    return truncate_utf8(name, MAX_COMPONENT_BYTES - len(suffix)) + suffix


def existing_spelling(parent: str, name: str) -> str:
    """`name`, or the entry of `parent` that differs from it only in letter case."""
    try:
        with os.scandir(parent) as it:
            key = name_key(name)
            return next((e.name for e in it if name_key(e.name) == key), name)
    except (FileNotFoundError, NotADirectoryError):
        return name


RECENT_ARTISTS = 1024  # spellings remembered: many batches of albums (stager.BATCH_ALBUMS)


class DirectoryClaims:
    """Assigns each album a directory no other album owns (in this run or on disk)."""

    def __init__(self, staging_root: str):
        self.root = staging_root
        self.owner: dict[str, str] = {}  # name_key of the relative dir -> album_group_id
        # name_key of code/artist -> the spelling handed out lately: albums are planned a batch
        # ahead of their directories, so "ABBA" and "Abba" must share one without seeing it on
        # disk. Older batches' directories are on disk, so a few batches' worth is enough.
        self.artists: OrderedDict[str, str] = OrderedDict()

    def assign(self, album: Album) -> None:
        code, artist_dir, album_dir = album.rel_dir.split(os.sep)
        key = name_key(os.path.join(code, artist_dir))
        if key not in self.artists:
            self.artists[key] = existing_spelling(os.path.join(self.root, code), artist_dir)
            if len(self.artists) > RECENT_ARTISTS:
                self.artists.popitem(last=False)
        artist_dir = self.artists[key]
        parent = os.path.join(code, artist_dir)
        for n in itertools.count(1):
            name = existing_spelling(os.path.join(self.root, parent), album_dir if n == 1 else _numbered(album_dir, n))
            rel = os.path.join(parent, name)
            if self.owner.get(name_key(rel), album.group_id) != album.group_id:
                continue
            path = os.path.join(self.root, rel)
            try:
                existing = sc.read(path) if os.path.isdir(path) else None
            except ValueError:  # an unreadable sidecar: the directory belongs to someone we cannot tell
                continue
            if existing is not None and sc.group_id_of(existing) != album.group_id:
                continue
            self.owner[name_key(rel)] = album.group_id
            album.rel_dir = rel
            return
