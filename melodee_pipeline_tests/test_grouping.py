"""group_albums (SPEC §6)."""

from __future__ import annotations

import sqlite3
from collections import Counter

from melodee_pipeline.grouping import album_group_hash, group_albums, normalize_album, vote_year
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
