"""scan_inbound: real tags from real files, invalid files explained, busy folders skipped."""

from __future__ import annotations

import os
import sqlite3

import pytest

from melodee_pipeline.samples import Tags, make_track, write_audio
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline_tests.conftest import age

FORMATS = [".mp3", ".flac", ".ogg", ".opus", ".wav"]


def rows(scan_db: str) -> dict[str, sqlite3.Row]:
    conn = sqlite3.connect(scan_db)
    conn.row_factory = sqlite3.Row
    return {os.path.basename(r["file_path"]): r for r in conn.execute("SELECT * FROM scanned_files")}


@pytest.mark.parametrize("workers", [1, 2])
def test_reads_tags_and_audio_properties_of_every_format(tmp_path, workers):
    inbound = tmp_path / "in"
    for i, ext in enumerate(FORMATS):
        make_track(str(inbound / f"file{ext}"), Tags("Artist " + ext, "Album", "Title " + ext, "Band", i + 1, 2, 1999, "Jazz"),
                   seed=i, seconds=1.0)
    (inbound / "cover.jpg").write_bytes(b"not music")
    (inbound / "notes.txt").write_text("ignored")
    age(inbound)
    result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=workers, min_file_age_seconds=60)
    assert (result.files, result.valid, result.invalid, result.skipped) == (5, 5, 0, 0)
    assert os.path.basename(result.scan_db).startswith("scan_") and result.scan_db.endswith(".db")
    got = rows(result.scan_db)
    assert sorted(got) == sorted(f"file{e}" for e in FORMATS)
    for i, ext in enumerate(FORMATS):
        r = got[f"file{ext}"]
        assert (r["artist"], r["album_artist"], r["album"], r["title"]) == ("Artist " + ext, "Band", "Album", "Title " + ext)
        assert (r["track_number"], r["disc_number"], r["year"], r["genre"]) == (i + 1, 2, 1999, "Jazz")
        assert 900 <= r["duration"] <= 1100, (ext, r["duration"])
        assert r["sample_rate"] == (48000 if ext == ".opus" else 44100)
        assert r["bitrate"] > 0
        assert r["file_size"] == os.path.getsize(inbound / f"file{ext}")
        assert len(r["file_hash"]) == 64 and r["is_valid"] == 1


def test_invalid_files_are_recorded_with_reason_and_left_untouched(tmp_path):
    inbound = tmp_path / "in"
    inbound.mkdir()
    write_audio(str(inbound / "untagged.flac"))
    make_track(str(inbound / "no_title.mp3"), Tags(artist="A", album="B"))
    make_track(str(inbound / "albumartist_only.ogg"), Tags(albumartist="AA", album="B", title="T"))
    (inbound / "empty.mp3").write_bytes(b"")
    (inbound / "text.flac").write_text("this is not a flac file at all\n" * 20)
    make_track(str(inbound / "full.flac"), Tags("A", "B", "T"), seconds=1)
    data = (inbound / "full.flac").read_bytes()
    (inbound / "truncated.flac").write_bytes(data[:60])
    before = {p.name: p.read_bytes() for p in inbound.iterdir()}
    age(inbound)
    result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=2, min_file_age_seconds=0)
    got = rows(result.scan_db)
    reasons = {name: r["validation_error"] for name, r in got.items() if not r["is_valid"]}
    assert reasons["untagged.flac"] == "missing artist; missing album; missing title"
    assert reasons["no_title.mp3"] == "missing title"
    assert reasons["empty.mp3"] == "empty file"
    assert reasons["text.flac"].startswith("corrupt or not audio")
    assert reasons["truncated.flac"].startswith("corrupt or not audio")
    # mutagen names the file in its message; the reason is shown and stored beside the path
    assert reasons["text.flac"] == "corrupt or not audio: UnreadableFileError: the file is not a valid FLAC file"
    assert not [r for r in reasons.values() if str(inbound) in r]
    assert got["albumartist_only.ogg"]["is_valid"] == 1  # album artist stands in for artist
    assert got["full.flac"]["is_valid"] == 1
    assert {p.name: p.read_bytes() for p in inbound.iterdir()} == before


def test_folder_with_a_young_file_is_skipped_whole(tmp_path):
    inbound = tmp_path / "in"
    make_track(str(inbound / "done" / "a.mp3"), Tags("A", "B", "T1"))
    make_track(str(inbound / "copying" / "b.mp3"), Tags("A", "C", "T1"))
    make_track(str(inbound / "copying" / "c.mp3"), Tags("A", "C", "T2"))
    age(inbound)
    (inbound / "copying" / "partial.tmp").write_bytes(b"still arriving")  # young, not even media
    result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=1, min_file_age_seconds=60)
    assert (result.files, result.skipped) == (1, 2)
    conn = sqlite3.connect(result.scan_db)
    assert conn.execute("SELECT path, file_count FROM skipped").fetchall() == [(str(inbound / "copying"), 2)]


def test_symlinks_are_not_followed(tmp_path):
    inbound, outside = tmp_path / "in", tmp_path / "outside"
    make_track(str(outside / "secret.mp3"), Tags("A", "B", "T"))
    inbound.mkdir()
    os.symlink(outside / "secret.mp3", inbound / "link.mp3")
    os.symlink(outside, inbound / "linked_dir")
    os.symlink(inbound, inbound / "loop")
    age(tmp_path)
    result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=1, min_file_age_seconds=0)
    assert result.files == 0 and result.skipped == 1


def test_non_utf8_file_names_are_scanned(tmp_path):
    inbound = tmp_path / "in"
    inbound.mkdir()
    make_track(str(tmp_path / "x.mp3"), Tags("A", "B", "T"))
    raw = os.fsencode(str(inbound)) + b"/caf\xe9.mp3"
    os.rename(str(tmp_path / "x.mp3"), raw)
    result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=1, min_file_age_seconds=0)
    conn = sqlite3.connect(result.scan_db)
    path, path_bytes, valid = conn.execute("SELECT file_path, path_bytes, is_valid FROM scanned_files").fetchone()
    assert path.endswith("caf\\xe9.mp3") and path_bytes == raw and valid == 1


@pytest.mark.parametrize("streamed", [False, True])
def test_a_corrupt_file_whose_name_is_not_utf8_is_refused_and_the_scan_goes_on(tmp_path, monkeypatch, streamed):
    """The parser's message names the file, undecodable bytes and all: it once failed every scan."""
    from melodee_pipeline.scan import tags

    if streamed:
        monkeypatch.setattr(tags, "IN_MEMORY_BYTES", 0)
    inbound = tmp_path / "in"
    make_track(str(inbound / "good.mp3"), Tags("A", "B", "T"))
    for name in (b"caf\xe9.mp3", b"\xff\xfe.flac"):
        (inbound / os.fsdecode(name)).write_bytes(b"\xff\xfb not really audio " * 40)
    result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=1, min_file_age_seconds=0)
    assert (result.valid, result.invalid) == (1, 2)
    reasons = dict(sqlite3.connect(result.scan_db).execute(
        "SELECT file_path, validation_error FROM scanned_files WHERE is_valid = 0"))
    assert set(reasons) == {f"{inbound}/caf\\xe9.mp3", f"{inbound}/\\xff\\xfe.flac"}
    assert all(r.startswith("corrupt or not audio: ") for r in reasons.values()), reasons


def test_old_scan_dbs_are_pruned(tmp_path):
    (tmp_path / "in").mkdir()
    made = [scan_inbound(str(tmp_path / "in"), str(tmp_path / "scans"), workers=1, keep_scan_dbs=2).scan_db for _ in range(4)]
    assert sorted(str(p) for p in (tmp_path / "scans").glob("scan_*.db")) == sorted(made[-2:])


def test_streamed_and_in_memory_reads_agree(tmp_path, monkeypatch):
    """Small files are read once for hash and tags, large ones streamed; both give the same row."""
    from melodee_pipeline.scan import tags

    paths = []
    for i, ext in enumerate(FORMATS):
        paths.append(os.fsencode(make_track(str(tmp_path / f"f{ext}"), Tags("A", "B", f"T{i}", "AA", i + 1, 1, 2001), seed=i)))
    in_memory = [tags.read_media_file(p) for p in paths]
    monkeypatch.setattr(tags, "IN_MEMORY_BYTES", 0)
    streamed = [tags.read_media_file(p) for p in paths]
    assert in_memory == streamed
    assert all(r["is_valid"] == 1 and r["title"] == f"T{i}" for i, r in enumerate(streamed))


def test_scan_db_has_go_column_types_and_scan_id_is_its_file_name(tmp_path):
    """Go's processor reads times as INTEGER Unix seconds and text as '' (a NULL string fails its scan)."""
    import time

    inbound = tmp_path / "in"
    make_track(str(inbound / "ok.mp3"), Tags("A", "B", "T"))
    (inbound / "bad.flac").write_text("not audio")
    age(inbound, 7200)
    before = int(time.time())
    result = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=1, min_file_age_seconds=0)
    assert result.scan_id == os.path.basename(result.scan_db)[: -len(".db")]
    assert result.scan_id.startswith("scan_") and len(result.scan_id) == len("scan_20240101_120000_abcd1234")
    conn = sqlite3.connect(result.scan_db)
    assert conn.execute("SELECT value FROM scan_info WHERE key = 'scan_id'").fetchone() == (result.scan_id,)
    types = dict(conn.execute("SELECT name, type FROM pragma_table_info('scanned_files')"))
    assert types["modified_time"] == types["created_at"] == "INTEGER"
    for path, modified, created in conn.execute("SELECT file_path, modified_time, created_at FROM scanned_files"):
        assert modified == os.stat(path).st_mtime_ns // 10**9 and before <= created <= time.time()
    text = [n for n, t in types.items() if t == "TEXT"]
    nulls = conn.execute(f"SELECT {' + '.join(f'({c} IS NULL)' for c in text)} FROM scanned_files").fetchall()
    assert nulls == [(0,), (0,)]


@pytest.mark.parametrize("every, lines", [(None, 0), (0.0, 6)])
def test_progress_is_logged_by_the_clock_not_per_thousand_files(tmp_path, monkeypatch, caplog, every, lines):
    """Each progress line is a Dagster event (a Postgres write): a quick scan logs none; with the
    interval at zero, every file is due, so the clock alone decides."""
    import logging

    from melodee_pipeline import progress

    if every is not None:
        monkeypatch.setattr(progress, "EVERY_SECONDS", every)
    for i in range(6):
        make_track(str(tmp_path / "in" / f"{i}.mp3"), Tags("A", "B", f"T{i}", track=i + 1))
    with caplog.at_level(logging.INFO):
        scan_inbound(str(tmp_path / "in"), str(tmp_path / "scans"), workers=1, min_file_age_seconds=0)
    assert sum(m.startswith("scanned ") for m in caplog.messages) == lines
