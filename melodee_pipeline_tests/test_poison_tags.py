"""Tags that would poison a scan: control characters, absurd numbers, huge names. Real files,
tags written raw through mutagen (mediafile refuses or reshapes some of these values).

MP4 (.m4a) is not covered: soundfile (libsndfile) writes no MP4/AAC and no other encoder is
installed. The cleaning applies to the text mediafile returns, whatever the container, so the
Vorbis (flac, ogg) and ID3 (mp3) cases exercise the same code an MP4 tag would.
"""

from __future__ import annotations

import os
import sqlite3

import mutagen
import pytest
from mutagen.id3 import ID3, TDRC, TPOS, TRCK

from melodee_pipeline.samples import Tags, make_track
from melodee_pipeline.scan import scandb
from melodee_pipeline.scan.scanner import scan_inbound

HUGE = "12345678901234567890"  # beyond SQLite's and PostgreSQL's 64-bit integers


def rows(scan_db: str) -> dict[str, sqlite3.Row]:
    conn = sqlite3.connect(scan_db)
    conn.row_factory = sqlite3.Row
    return {os.path.basename(r["file_path"]): r for r in conn.execute("SELECT * FROM scanned_files")}


def vorbis(path, **tags: str) -> None:
    f = mutagen.File(path)
    for key, value in tags.items():
        f[key] = value
    f.save()


@pytest.mark.parametrize("ext", [".flac", ".ogg"])
def test_nul_and_control_characters_are_removed_from_vorbis_tags(tmp_path, ext):
    inbound = tmp_path / "in"
    path = make_track(str(inbound / f"evil{ext}"), Tags("x", "x", "x"))
    vorbis(path, ARTIST="Evil\x00Artist", ALBUM="Al\x1bbum\x7f", TITLE="Ti\ttle\x85", GENRE="\x00")
    result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=1, min_file_age_seconds=0)
    r = rows(result.scan_db)[f"evil{ext}"]
    assert (r["artist"], r["album"], r["title"], r["genre"]) == ("EvilArtist", "Album", "Title", "")
    assert r["is_valid"] == 1
    assert r["warnings"] == ("control characters removed from artist; control characters removed from album; "
                             "control characters removed from title; control characters removed from genre")


def test_absurd_track_disc_and_year_are_missing_with_a_warning_and_the_scan_finishes(tmp_path, capsys):
    from melodee_pipeline.cli import main

    inbound = tmp_path / "in"
    flac = make_track(str(inbound / "huge.flac"), Tags("A", "B", "T1"))
    vorbis(flac, TRACKNUMBER=HUGE, DISCNUMBER=HUGE, DATE=HUGE)
    ogg = make_track(str(inbound / "giant.ogg"), Tags("A", "B", "T2"), seed=1)
    vorbis(ogg, TRACKNUMBER="9" * 5000, DATE="10000")  # 5000 digits: Python itself refuses to parse it
    mp3 = make_track(str(inbound / "huge.mp3"), Tags("A", "B", "T3"), seed=2)
    id3 = ID3(mp3)
    for frame in (TRCK(encoding=3, text=HUGE), TPOS(encoding=3, text=HUGE + "/2"), TDRC(encoding=3, text=HUGE)):
        id3.add(frame)
    id3.save()
    make_track(str(inbound / "fine.mp3"), Tags("A", "B", "T4", None, 4, 1, 2001), seed=3)
    (inbound / "broken.flac").write_bytes(b"fLaC" + os.urandom(200))

    assert main(["scan-inbound", "--path", str(inbound), "--output", str(tmp_path / "scans"), "--workers", "2",
                 "--min-file-age", "0"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "files 5, valid 4, invalid 1" in err
    got = rows(out.strip())
    for name in ("huge.flac", "huge.mp3"):
        r = got[name]
        assert (r["track_number"], r["disc_number"], r["year"], r["is_valid"]) == (None, None, None, 1), name
        assert r["warnings"] == (f"track {HUGE} out of range 0-9999, ignored; disc {HUGE} out of range 0-9999, ignored; "
                                 f"year {HUGE} out of range 0-9999, ignored"), name
    r = got["giant.ogg"]
    assert (r["track_number"], r["year"], r["is_valid"]) == (None, None, 1)
    assert r["warnings"] == "track tag unreadable (ValueError), ignored; year 10000 out of range 0-9999, ignored"
    assert (got["fine.mp3"]["track_number"], got["fine.mp3"]["year"], got["fine.mp3"]["warnings"]) == (4, 2001, "")
    assert got["broken.flac"]["validation_error"].startswith("corrupt or not audio")


def test_very_long_cjk_and_cyrillic_artists_are_kept_whole(tmp_path):
    inbound = tmp_path / "in"
    cjk, cyrillic = "音楽家" * 1000, "Исполнитель" * 273
    make_track(str(inbound / "cjk.flac"), Tags(cjk, "Album", "Title"))
    make_track(str(inbound / "cyr.mp3"), Tags(cyrillic, "Альбом", "Песня"), seed=1)
    result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=1, min_file_age_seconds=0)
    got = rows(result.scan_db)
    assert (got["cjk.flac"]["artist"], got["cjk.flac"]["is_valid"]) == (cjk, 1)
    assert (got["cyr.mp3"]["artist"], got["cyr.mp3"]["is_valid"]) == (cyrillic, 1)
    assert len(cjk) == 3000 and len(cyrillic) == 3003


def test_an_older_scan_db_gains_the_warnings_column(tmp_path):
    path = tmp_path / "scan_20240101_000000.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE scanned_files (id INTEGER PRIMARY KEY, file_path TEXT NOT NULL UNIQUE, "
                "path_bytes BLOB NOT NULL, is_valid INTEGER NOT NULL, album_group_id TEXT, created_at TEXT NOT NULL)")
    old.execute("INSERT INTO scanned_files VALUES (1, 'a.mp3', x'61', 1, NULL, '2024-01-01T00:00:00+00:00')")
    old.commit()
    old.close()
    conn = scandb.connect(path)
    assert conn.execute("SELECT warnings FROM scanned_files").fetchone()[0] == ""
