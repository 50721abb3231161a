"""The reviewer's album checks (validation.py): each fires on a crafted album of real audio and
stays quiet on a clean one; a later run replaces them instead of piling up stale ones."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import mediafile

from melodee_pipeline.grouping import group_albums
from melodee_pipeline.samples import Tags, make_track, png_bytes
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline.staging.stage import stage_albums
from melodee_pipeline.staging.validation import PREFIX, album_warnings

NEXT_YEAR = datetime.now(timezone.utc).year + 1


def track(root: Path, folder: str, artist: str, name: str, title: str, number: int | None, *, total: int | None = None,
          disc: int | None = None, year: int | None = 2001, albumartist: str | None = None, seed: int = 0) -> Path:
    path = root / folder / f"{number or 0:02d} {title}.mp3"
    make_track(str(path), Tags(artist, name, title, albumartist, number, disc, year, "Rock"), seed=seed)
    if total:
        mf = mediafile.MediaFile(str(path))
        mf.tracktotal = total
        mf.save()
    return path


def run(dirs) -> tuple[str, object]:
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    return scan.scan_db, stage_albums(scan.scan_db, str(dirs["staging"]), workers=2)


def checks(album_dir: Path) -> list[str]:
    doc = json.loads((album_dir / "album.melodee.json").read_text())
    return [w[len(PREFIX):] for w in doc["validation"]["warnings"] if w.startswith(PREFIX)]


def with_cover(dirs, rel: str) -> Path:
    """The album directory with a cover the admin put there before the run."""
    d = dirs["staging"] / rel
    d.mkdir(parents=True)
    (d / "cover.png").write_bytes(png_bytes(1))
    return d


def test_each_check_fires_on_its_crafted_album_and_a_clean_album_has_none(dirs):
    inbound = dirs["inbound"]
    for n in (1, 2, 3):
        track(inbound, "clean", "Clean", "Fine", f"T{n}", n, total=3, seed=n)
    clean = with_cover(dirs, "CLE/Clean/2001 - Fine")
    for n in (1, 2, 3, 5, 6, 8):
        track(inbound, "gaps", "Gappy", "Holes", f"T{n}", n, total=8, seed=10 + n)
    track(inbound, "dup", "Dupe", "Twice", "A", 1, seed=20)
    track(inbound, "dup", "Dupe", "Twice", "B", 1, seed=21)
    track(inbound, "dup", "Dupe", "Twice", "C", None, seed=22)
    for n in (1, 2, 3):
        track(inbound, "count", "Counted", "Over", f"T{n}", n, total=2, seed=30 + n)
    track(inbound, "discs", "Discs", "Two", "A", 1, disc=1, seed=40)
    track(inbound, "discs", "Discs", "Two", "B", 2, disc=2, seed=41)
    track(inbound, "artists", "Band", "Mixed", "A", 1, albumartist="Band", seed=50)
    track(inbound, "artists", "Band", "Mixed", "B", 2, albumartist="BAND", seed=51)
    track(inbound, "va", "One", "Hits", "A", 1, albumartist="Various Artists", seed=60)
    track(inbound, "va", "Two", "Hits", "B", 2, albumartist="various artists", seed=61)
    track(inbound, "old", "Old", "Early", "A", 1, year=1850, seed=70)
    track(inbound, "future", "New", "Late", "A", 1, year=NEXT_YEAR + 1, seed=71)
    track(inbound, "undated", "Undated", "Whenever", "A", 1, year=None, seed=72)
    scan_db, staged = run(dirs)
    st = dirs["staging"]
    assert checks(clean) == []
    assert checks(st / "GAP/Gappy/2001 - Holes") == ["missing tracks 4, 7 of 8", "no cover image"]
    assert checks(st / "DUP/Dupe/2001 - Twice") == [
        "track number 1 used more than once", "1 track(s) without a track number", "no cover image"]
    assert checks(st / "COU/Counted/2001 - Over") == ["3 track(s), but the total-tracks tag says 2", "no cover image"]
    assert checks(st / "DIS/Discs/2001 - Two") == ["disc 2: missing track 1 of 2", "no cover image"]
    assert checks(st / "BAN/Band/2001 - Mixed") == [
        "2 album artists in one album that is not a compilation: 'BAND', 'Band'", "no cover image"]
    assert checks(st / "VA/Various Artists/2001 - Hits") == ["no cover image"]  # a compilation: artists may differ
    assert checks(st / "OLD/Old/1850 - Early") == ["no cover image", f"year 1850 is outside 1860..{NEXT_YEAR}"]
    assert checks(st / f"NEW/New/{NEXT_YEAR + 1} - Late") == [
        "no cover image", f"year {NEXT_YEAR + 1} is outside 1860..{NEXT_YEAR}"]
    assert checks(st / "UND/Undated/0000 - Whenever") == ["no cover image", "no year"]
    # The run's album table shows them, and the summary counts the albums with any.
    rows = dict(sqlite3.connect(scan_db).execute("SELECT artist, warnings FROM albums"))
    assert rows["Clean"] is None and "album check: missing tracks 4, 7 of 8" in rows["Gappy"]
    assert staged.albums_with_warnings == staged.albums_total - 1


def test_missing_durations_and_duplicate_bytes_in_a_merged_album(dirs):
    """Sidecars written by Go's processor may list tracks without a duration, or a file twice."""
    track(dirs["inbound"], "a", "Band", "Record", "One", 1, seed=1)
    track(dirs["inbound"], "a", "Band", "Record", "Two", 2, seed=2)
    run(dirs)
    album_dir = dirs["staging"] / "BAN/Band/2001 - Record"
    (album_dir / "cover.png").write_bytes(png_bytes(2))
    doc = json.loads((album_dir / "album.melodee.json").read_text())
    doc["tracks"][1]["duration"] = 0
    shutil.copyfile(album_dir / "01 - One.mp3", album_dir / "03 - One again.mp3")
    doc["tracks"].append({**doc["tracks"][0], "track_number": 3, "file_path": "BAN/Band/2001 - Record/03 - One again.mp3"})
    (album_dir / "album.melodee.json").write_text(json.dumps(doc))
    track(dirs["inbound"], "b", "Band", "Record", "Four", 4, seed=4)
    run(dirs)
    assert checks(album_dir) == ["1 track(s) without a duration: 02 - Two.mp3",
                                 "01 - One.mp3 and 03 - One again.mp3 hold the same bytes"]


def test_a_later_run_replaces_the_checks_instead_of_piling_them_up(dirs):
    for n in (1, 2, 4):
        track(dirs["inbound"], "a", "Band", "Record", f"T{n}", n, total=4, seed=n)
    run(dirs)
    album_dir = dirs["staging"] / "BAN/Band/2001 - Record"
    assert checks(album_dir) == ["missing track 3 of 4", "no cover image"]
    (album_dir / "folder.png").write_bytes(png_bytes(3))
    track(dirs["inbound"], "b", "Band", "Record", "T3", 3, total=4, seed=3)
    run(dirs)
    assert checks(album_dir) == []
    doc = json.loads((album_dir / "album.melodee.json").read_text())
    assert doc["validation"]["warnings"] == [] and doc["album"]["image_count"] == 1


def test_checks_are_a_pure_function_of_the_album():
    tracks = [{"track_number": n, "disc_number": 1, "duration": 1000, "checksum": str(n), "file_path": f"x/{n:02d}.mp3",
               "track_total": 30, "album_artist": "A"} for n in range(1, 31) if n % 2]
    got = album_warnings(tracks, {"year": 1999, "is_compilation": False}, images=1)
    assert got == [PREFIX + "missing tracks 2, 4, 6, 8, 10, 12, 14, 16, 18, 20… (15 in all) of 30"]
