"""group_albums: the hash and year-vote rules, and grouping done inside SQLite."""

from __future__ import annotations

import sqlite3
from collections import Counter

from melodee_pipeline.grouping import album_group_hash, album_group_id, group_albums, normalize_album, vote_year
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline_tests.conftest import album


def test_normalize_album_editions_leading_the_and_whitespace():
    assert normalize_album("The Wall (Remastered)") == "wall"
    assert normalize_album("Rumours [Deluxe Edition]") == "rumours"
    assert normalize_album("Abbey Road (Anniversary Edition)") == "abbeyroad"
    assert normalize_album("OK Computer [expanded edition] (remaster)") == "okcomputer"
    assert normalize_album("  Dark   Side ") == "darkside"
    assert normalize_album("Theatre") == "theatre"
    assert album_group_hash("Pink Floyd", None, "The Wall") == "pink floyd::wall"
    assert album_group_hash("Roger", " Pink Floyd ", "The Wall") == "pink floyd::wall"


def test_year_vote_majority_and_tie_goes_to_larger_year():
    assert vote_year(Counter({1999: 3, 2001: 1})) == 1999
    assert vote_year(Counter({1999: 2, 2001: 2})) == 2001
    assert vote_year(Counter({0: 1})) == 0


def test_cd1_cd2_folders_form_one_group_with_voted_year(tmp_path):
    inbound = tmp_path / "in"
    album(inbound, "Pink Floyd", "The Wall", 1979, ["In the Flesh?", "Thin Ice"], ".flac", folder="Wall/CD1", disc=1)
    album(inbound, "Pink Floyd", "The Wall (Remastered)", 2011, ["Hey You"], ".mp3", folder="Wall/CD2", disc=2, seed=10)
    album(inbound, "pink floyd", "the  wall", 1979, ["Comfortably Numb"], ".ogg", folder="Wall/Bonus", disc=2, seed=20)
    album(inbound, "Pink Floyd", "Animals", 1977, ["Dogs"], ".ogg", seed=30)
    scan = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=2, min_file_age_seconds=0)
    result = group_albums(scan.scan_db)
    assert (result.albums, result.files) == (2, 5)
    conn = sqlite3.connect(scan.scan_db)
    groups = Counter(r[0] for r in conn.execute("SELECT album_group_id FROM scanned_files"))
    assert groups == {"pink floyd::wall_1979": 4, "pink floyd::animals_1977": 1}


def synthetic_scan(directory, n: int) -> str:
    """A scan DB of n valid rows with many artists, spellings, editions, ties and missing years."""
    from melodee_pipeline.scan import scandb

    _scan_id, path = scandb.create(str(directory))
    conn = scandb.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO scanned_files (file_path, path_bytes, artist, album_artist, album, year, is_valid) VALUES (?, ?, ?, ?, ?, ?, 1)",
            ((f"/in/{i}.mp3", f"/in/{i}.mp3".encode(), f"Artist {i % 97}", " The Band " if i % 13 == 0 else "",
              ["The Album", "album (Remastered)", "Other  Record", "Third [Deluxe Edition]"][i % 4] + str(i % 50),
              [None, 1999, 2001, 2001, 1999, 0][i % 6] if i % 7 else None) for i in range(n)),
        )
        conn.execute("INSERT INTO scanned_files (file_path, path_bytes, is_valid) VALUES ('/in/bad.mp3', x'00', 0)")
    conn.close()
    return path


def test_grouping_in_sqlite_matches_the_python_rules(tmp_path):
    scan_db = synthetic_scan(tmp_path, 3000)
    conn = sqlite3.connect(scan_db)
    votes: dict[str, Counter] = {}
    for artist, album_artist, album_name, year in conn.execute(
            "SELECT artist, album_artist, album, year FROM scanned_files WHERE is_valid = 1"):
        votes.setdefault(album_group_hash(artist, album_artist, album_name), Counter())[year or 0] += 1
    result = group_albums(scan_db)
    assert (result.albums, result.files) == (len(votes), 3000)
    for artist, album_artist, album_name, group_hash, group_id in conn.execute(
            "SELECT artist, album_artist, album, album_group_hash, album_group_id FROM scanned_files WHERE is_valid = 1"):
        assert group_hash == album_group_hash(artist, album_artist, album_name)
        assert group_id == album_group_id(group_hash, vote_year(votes[group_hash]))
    assert conn.execute("SELECT album_group_hash, album_group_id FROM scanned_files WHERE is_valid = 0").fetchone() == ("", "")
    assert any(len(c) > 1 and len(set(c.values())) == 1 for c in votes.values())  # ties were exercised


def test_grouping_memory_is_flat_in_the_number_of_files(tmp_path):
    """Python's peak allocation while grouping does not grow with the scan (the rows stay in SQLite)."""
    import tracemalloc

    peaks = []
    for n in (2_000, 40_000):
        scan_db = synthetic_scan(tmp_path / str(n), n)
        tracemalloc.start()
        group_albums(scan_db)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 512 * 1024 and peaks[1] - peaks[0] < 128 * 1024, peaks
