"""Extras (cover art, rip logs, cue sheets) travel with their album; embedded art becomes a cover
file. Real audio, real PNG images, real moves; a SIGKILL mid-album converges on the next run."""

from __future__ import annotations

import hashlib
from collections import Counter
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from melodee_pipeline.grouping import group_albums
from melodee_pipeline.samples import embed_cover, png_bytes
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline.staging.stage import stage_albums
from melodee_pipeline_tests.conftest import album, snapshot, tree
from melodee_pipeline_tests.invariants import lost

pytestmark = pytest.mark.usefixtures("staging_mode")  # every test on threads and in worker processes

LOG = "Exact Audio Copy V1.6 from 23. October 2020\r\n\r\nEAC extraction logfile from 1. May 2021\r\n".encode("utf-16")
CUE = b'PERFORMER "Band"\nTITLE "Record"\nFILE "Record.flac" WAVE\n  TRACK 01 AUDIO\n    INDEX 01 00:00:00\n'


def run(dirs) -> tuple[str, object]:
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    return scan.scan_db, stage_albums(scan.scan_db, str(dirs["staging"]), workers=2)


def sidecar(d: Path) -> dict:
    return json.loads((d / "album.melodee.json").read_text())


def rip(folder: Path, seed: int = 0) -> dict[str, bytes]:
    extras = {"cover.png": png_bytes(seed), "folder.png": png_bytes(seed + 1), "Record.log": LOG, "Record.cue": CUE,
              "info.nfo": b"ripped with care\n"}
    for name, data in extras.items():
        (folder / name).write_bytes(data)
    return extras


def without_sidecars(files: dict[str, str]) -> list[str]:
    """The music and extras: sidecars and the journal (rows still to record, no database here) aside."""
    return sorted(v for k, v in files.items() if not k.endswith("album.melodee.json") and ".melodee-journal" not in k)


def test_a_ripped_folder_arrives_complete_and_inbound_is_left_empty(dirs):
    tracks = album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")
    extras = rip(tracks[0].parent)
    (tracks[0].parent / ".DS_Store").write_bytes(b"finder junk")  # hidden: no part of the album
    before = snapshot(dirs["inbound"])
    scan_db, staged = run(dirs)
    target = dirs["staging"] / "BAN/Band/2001 - Record"
    assert sorted(os.listdir(target)) == sorted(["01 - One.flac", "02 - Two.flac", "album.melodee.json", *extras])
    assert all((target / n).read_bytes() == data for n, data in extras.items())
    assert tree(dirs["inbound"]) == {"Band - Record": -1, "Band - Record/.DS_Store": 11}
    doc = sidecar(target)
    assert [os.path.basename(t["file_path"]) for t in doc["tracks"]] == ["01 - One.flac", "02 - Two.flac"]
    assert doc["album"]["image_count"] == 2 and doc["validation"]["warnings"] == []
    assert staged.extras_moved == 5 and staged.files_moved == 2
    assert without_sidecars(snapshot(dirs["inbound"], dirs["staging"])) == sorted([*before.values()])
    recorded = sqlite3.connect(scan_db).execute("SELECT destination, action FROM staged_extras ORDER BY destination").fetchall()
    assert recorded == [(f"BAN/Band/2001 - Record/{n}", "move") for n in sorted(extras)]
    # Without the hidden file the folder empties and goes.
    (tracks[0].parent / ".DS_Store").unlink()
    album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac", folder="again")
    rip(dirs["inbound"] / "again")
    run(dirs)
    assert tree(dirs["inbound"]) == {"Band - Record": -1}


def test_extras_never_overwrite_identical_ones_are_deduplicated(dirs):
    """Two disc folders, each with its own cover: the different one gets ` (2)`, the same log once."""
    cd1 = album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".flac", folder="Record/CD1", disc=1)[0].parent
    cd2 = album(dirs["inbound"], "Band", "Record", 2001, ["Two"], ".flac", folder="Record/CD2", disc=2, seed=5)[0].parent
    (cd1 / "cover.png").write_bytes(png_bytes(1))
    (cd2 / "cover.png").write_bytes(png_bytes(2))
    (cd1 / "Record.log").write_bytes(LOG)
    (cd2 / "Record.log").write_bytes(LOG)
    before = snapshot(dirs["inbound"])
    run(dirs)
    target = dirs["staging"] / "BAN/Band/2001 - Record"
    assert sorted(os.listdir(target)) == ["01 - One.flac", "2-01 - Two.flac", "Record.log", "album.melodee.json",
                                          "cover (2).png", "cover.png"]
    assert {(target / "cover.png").read_bytes(), (target / "cover (2).png").read_bytes()} == {png_bytes(1), png_bytes(2)}
    doc = sidecar(target)
    assert doc["album"]["image_count"] == 2
    assert any("staged as cover (2).png" in w for w in doc["validation"]["warnings"])
    assert tree(dirs["inbound"]) == {}
    after = Counter(without_sidecars(snapshot(dirs["staging"])))
    assert set(after) == set(before.values()) and after[hashlib.sha256(LOG).hexdigest()] == 1


def test_a_folder_shared_by_two_albums_keeps_its_extras_and_the_sidecars_say_so(dirs):
    album(dirs["inbound"], "Band", "First", 2001, ["One"], ".mp3", folder="mixed", seed=1)
    album(dirs["inbound"], "Band", "Second", 2002, ["Two"], ".mp3", folder="mixed", seed=2)
    (dirs["inbound"] / "mixed" / "cover.png").write_bytes(png_bytes(1))
    (dirs["inbound"] / "mixed" / "notes.txt").write_bytes(b"two albums in one folder")
    _, staged = run(dirs)
    assert staged.albums_success == 2 and staged.extras_moved == 0
    assert sorted(tree(dirs["inbound"])) == ["mixed", "mixed/cover.png", "mixed/notes.txt"]
    for d in ("BAN/Band/2001 - First", "BAN/Band/2002 - Second"):
        doc = sidecar(dirs["staging"] / d)
        assert f"2 other file(s) stay in {dirs['inbound'] / 'mixed'}: its music went to several albums" in doc["validation"]["warnings"]
        assert doc["album"]["image_count"] == 0


def test_a_folder_holding_a_refused_file_keeps_its_extras(dirs):
    folder = album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".mp3")[0].parent
    (folder / "02 broken.mp3").write_bytes(b"not audio" * 50)
    (folder / "cover.png").write_bytes(png_bytes(1))
    run(dirs)
    assert sorted(os.listdir(folder)) == ["02 broken.mp3", "cover.png"]
    doc = sidecar(dirs["staging"] / "BAN/Band/2001 - Record")
    assert f"1 other file(s) stay in {folder}: it holds music that was not staged" in doc["validation"]["warnings"]


def test_an_album_with_only_embedded_art_gets_a_cover_file(dirs):
    tracks = album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".mp3")
    embed_cover(str(tracks[0]), png_bytes(7))
    embed_cover(str(tracks[1]), png_bytes(7))
    scan_db, _ = run(dirs)
    target = dirs["staging"] / "BAN/Band/2001 - Record"
    assert (target / "cover.png").read_bytes() == png_bytes(7)
    doc = sidecar(target)
    assert doc["album"]["image_count"] == 1 and doc["validation"]["warnings"] == []
    assert doc["album"]["cover_from_tags"]["file"] == "cover.png"
    assert doc["album"]["cover_from_tags"]["scan_id"] == sqlite3.connect(scan_db).execute(
        "SELECT value FROM scan_info WHERE key = 'scan_id'").fetchone()[0]


def test_an_album_with_an_image_file_gets_no_extracted_cover(dirs):
    tracks = album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".mp3")
    embed_cover(str(tracks[0]), png_bytes(7))
    (tracks[0].parent / "folder.png").write_bytes(png_bytes(8))
    run(dirs)
    target = dirs["staging"] / "BAN/Band/2001 - Record"
    assert sorted(os.listdir(target)) == ["01 - One.mp3", "album.melodee.json", "folder.png"]
    assert "cover_from_tags" not in sidecar(target)["album"]


def process(dirs, crash: str | None = None) -> subprocess.CompletedProcess:
    """`scan-inbound` then `process-scan` as commands, without a database; `crash`: SIGKILL there."""
    scan = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "scan-inbound", "--path", str(dirs["inbound"]),
                           "--output", str(dirs["scans"]), "--min-file-age", "0", "--workers", "1"],
                          capture_output=True, text=True, check=True)
    env = {k: v for k, v in os.environ.items() if k != "MELODEE_DATABASE_URL"}
    env.update(MELODEE_HOME=str(dirs["scans"] / "home"), **({"MELODEE_CRASH_AT": crash} if crash else {}))
    return subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "process-scan", "--scan", scan.stdout.strip(),
                           "--staging", str(dirs["staging"]), "--workers", "1"], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("point", ["after_place:3", "after_place:5", "before_unlink_sources:1", "after_unlink:4"])
def test_sigkill_while_extras_move_converges_on_the_next_run(point, dirs):
    """Tracks are the first two places; the third is the first extra."""
    tracks = album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")
    extras = rip(tracks[0].parent)
    before = snapshot(dirs["inbound"])
    assert process(dirs, point).returncode == -signal.SIGKILL
    assert lost(Counter(before.values()), dirs["inbound"], dirs["staging"]) == 0
    assert process(dirs).returncode == 0
    target = dirs["staging"] / "BAN/Band/2001 - Record"
    assert sorted(os.listdir(target)) == sorted(["01 - One.flac", "02 - Two.flac", "album.melodee.json", *extras])
    assert tree(dirs["inbound"]) == {}  # the folder the finished album emptied is gone too
    assert without_sidecars(snapshot(dirs["inbound"], dirs["staging"])) == sorted(before.values())
    assert sidecar(target)["album"]["image_count"] == 2


def test_staging_reads_no_track_for_a_cover_when_the_scan_saw_none(dirs):
    """The scan notes whether a file embeds an image; staging opens a track again only then."""
    from melodee_pipeline_tests.conftest import opened_during

    album(dirs["inbound"], "Band", "Plain", 2001, ["One", "Two"], ".mp3")
    tracks = album(dirs["inbound"], "Band", "Pictured", 2002, ["One", "Two"], ".mp3")
    embed_cover(str(tracks[0]), png_bytes(3))
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    _, opened = opened_during(lambda: stage_albums(scan.scan_db, str(dirs["staging"]), workers=1))
    read_again = sorted(os.path.relpath(p, dirs["staging"]) for p in opened if p.endswith(".mp3"))
    assert read_again == ["BAN/Band/2002 - Pictured/01 - One.mp3"]
    assert (dirs["staging"] / "BAN/Band/2002 - Pictured/cover.png").read_bytes() == png_bytes(3)
    assert not (dirs["staging"] / "BAN/Band/2001 - Plain/cover.png").exists()


def test_an_extra_whose_name_ends_in_a_dot_never_becomes_a_media_name(dirs):
    """`notes.mp3.` is no audio file (the scan leaves it as an extra); sanitising drops its
    trailing dot, which would make it `notes.mp3`, a track its sidecar does not list."""
    from melodee_pipeline.convergence import sidecar_problem

    tracks = album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".flac")
    (tracks[0].parent / "notes.mp3.").write_bytes(b"just text\n")
    run(dirs)
    target = dirs["staging"] / "BAN/Band/2001 - Record"
    assert sorted(os.listdir(target)) == ["01 - One.flac", "album.melodee.json", "notes.mp3_"]
    data = (target / "album.melodee.json").read_bytes()
    assert sidecar_problem(str(target), data, os.listdir(target)) is None


def discs(dirs, parent: str = "Record") -> Path:
    """An album in two disc folders under `parent`, the folder above them holding its cover and log."""
    album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".flac", folder=f"{parent}/CD1", disc=1)
    album(dirs["inbound"], "Band", "Record", 2001, ["Two"], ".flac", folder=f"{parent}/CD2", disc=2, seed=5)
    above = dirs["inbound"] / parent
    (above / "cover.png").write_bytes(png_bytes(1))
    (above / "Record.log").write_bytes(LOG)
    return above


def test_the_folder_above_an_albums_disc_folders_gives_it_its_cover_and_undo_puts_it_back(dirs):
    from melodee_pipeline.undo import undo_scan

    above = discs(dirs)
    (above / ".DS_Store").write_bytes(b"finder junk")
    (dirs["inbound"] / "about inbound.txt").write_bytes(b"the root's own files are no album's")
    before = snapshot(dirs["inbound"])
    scan_db, staged = run(dirs)
    target = dirs["staging"] / "BAN/Band/2001 - Record"
    assert sorted(os.listdir(target)) == ["01 - One.flac", "2-01 - Two.flac", "Record.log", "album.melodee.json", "cover.png"]
    assert (target / "cover.png").read_bytes() == png_bytes(1) and (target / "Record.log").read_bytes() == LOG
    assert staged.extras_moved == 2 and sidecar(target)["album"]["image_count"] == 1
    assert tree(dirs["inbound"]) == {"Record": -1, "Record/.DS_Store": 11, "about inbound.txt": 35}
    assert without_sidecars(snapshot(dirs["inbound"], dirs["staging"])) == sorted(before.values())
    result = undo_scan(None, scan_db, str(dirs["staging"]))
    assert [(a.status, a.returned) for a in result.albums] == [("undone", 4)]
    assert snapshot(dirs["inbound"]) == before


def test_the_folder_above_a_single_album_folder_is_the_artists_and_stays(dirs):
    folder = album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac", folder="Band/Record")[0].parent
    (folder.parent / "artist.png").write_bytes(png_bytes(3))
    _, staged = run(dirs)
    assert staged.files_moved == 2 and staged.extras_moved == 0
    assert tree(dirs["inbound"]) == {"Band": -1, "Band/artist.png": len(png_bytes(3))}
    doc = sidecar(dirs["staging"] / "BAN/Band/2001 - Record")
    assert doc["album"]["image_count"] == 0 and not [w for w in doc["validation"]["warnings"] if "stay in" in w]


def test_the_folder_above_disc_folders_keeps_its_files_when_the_music_below_is_not_all_this_albums(dirs):
    above = discs(dirs)
    (above / "CD2" / "03 broken.flac").write_bytes(b"not audio" * 50)
    _, staged = run(dirs)
    assert staged.albums_success == 1 and staged.extras_moved == 0
    assert sorted(os.listdir(above)) == ["CD2", "Record.log", "cover.png"]
    warnings = sidecar(dirs["staging"] / "BAN/Band/2001 - Record")["validation"]["warnings"]
    assert f"2 other file(s) stay in {above}: a folder below it holds music that was not staged" in warnings
    (above / "CD2" / "03 broken.flac").unlink()
    album(dirs["inbound"], "Band", "Other", 2003, ["Three"], ".flac", folder="Record/Other")
    album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".flac", folder="Record/CD1", disc=1)
    album(dirs["inbound"], "Band", "Record", 2001, ["Two"], ".flac", folder="Record/CD2", disc=2, seed=5)
    _, staged = run(dirs)  # the discs again (already staged), and another album below the same folder
    assert staged.albums_success == 2 and staged.extras_moved == 0
    assert sorted(os.listdir(above)) == ["Record.log", "cover.png"]
    warnings = sidecar(dirs["staging"] / "BAN/Band/2001 - Record")["validation"]["warnings"]
    assert f"2 other file(s) stay in {above}: the music below it went to several albums" in warnings


def test_the_folder_above_disc_folders_keeps_its_files_while_a_disc_track_stays_in_inbound(dirs):
    above = discs(dirs)
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    track = next((above / "CD2").iterdir())
    track.write_bytes(track.read_bytes() + b"\0")  # rewritten after the scan: it stays in inbound
    staged = stage_albums(scan.scan_db, str(dirs["staging"]), workers=2)
    assert staged.files_moved == 1 and staged.extras_moved == 0
    assert sorted(os.listdir(above)) == ["CD2", "Record.log", "cover.png"]


def test_the_inbound_roots_own_files_never_travel_even_above_disc_folders(dirs):
    album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".flac", folder="CD1", disc=1)
    album(dirs["inbound"], "Band", "Record", 2001, ["Two"], ".flac", folder="CD2", disc=2, seed=5)
    (dirs["inbound"] / "cover.png").write_bytes(png_bytes(1))
    _, staged = run(dirs)
    assert staged.files_moved == 2 and staged.extras_moved == 0
    assert tree(dirs["inbound"]) == {"cover.png": len(png_bytes(1))}


def test_the_folder_above_waits_for_a_disc_folder_still_being_copied(dirs):
    above = discs(dirs)
    album(dirs["inbound"], "Band", "Record", 2001, ["Three"], ".flac", folder="Record/CD3", disc=3, seed=9)
    old = time.time() - 3600
    for path in dirs["inbound"].rglob("*"):
        os.utime(path, (old, old))
    for path in (above / "CD3").iterdir():
        os.utime(path, None)  # CD3 is still being copied
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=60)
    group_albums(scan.scan_db)
    staged = stage_albums(scan.scan_db, str(dirs["staging"]), workers=2)
    assert staged.files_moved == 2 and staged.extras_moved == 0
    assert sorted(os.listdir(above)) == ["CD3", "Record.log", "cover.png"]
    # CD3 arrives alone: a folder named as a disc, so the folder above is its album's.
    _, staged = run(dirs)
    target = dirs["staging"] / "BAN/Band/2001 - Record"
    assert staged.files_moved == 1 and staged.extras_moved == 2 and tree(dirs["inbound"]) == {}
    assert sorted(os.listdir(target)) == ["01 - One.flac", "2-01 - Two.flac", "3-01 - Three.flac", "Record.log",
                                          "album.melodee.json", "cover.png"]



@pytest.mark.parametrize("arriving", ["CD2/01 Two.flac.part", "CD2/Bonus/01 Three.flac"])
def test_the_folder_above_waits_while_anything_below_it_is_still_being_copied(dirs, arriving):
    """A copy in progress may not look like music yet (`.part`), or sit a level deeper."""
    album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".flac", folder="Record/CD1", disc=1)
    above = dirs["inbound"] / "Record"
    (above / "cover.png").write_bytes(png_bytes(1))
    (above / arriving).parent.mkdir(parents=True, exist_ok=True)
    (above / arriving).write_bytes(b"\0" * 100)
    old = time.time() - 3600
    for path in dirs["inbound"].rglob("*"):
        if path.name != os.path.basename(arriving):
            os.utime(path, (old, old))
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=60)
    group_albums(scan.scan_db)
    staged = stage_albums(scan.scan_db, str(dirs["staging"]), workers=2)
    assert staged.files_moved == 1 and staged.extras_moved == 0 and (above / "cover.png").exists()

def test_a_killed_run_finished_later_keeps_the_folder_above_while_a_disc_track_stays(dirs):
    above = discs(dirs)
    before = snapshot(dirs["inbound"])
    assert process(dirs, crash="after_place:1").returncode == -signal.SIGKILL
    track = next((above / "CD2").iterdir())
    track.write_bytes(b"not audio any more" * 100)  # the journaled track changed: it stays in inbound
    del before[next(k for k in before if k.endswith(track.name))]
    assert process(dirs).returncode == 0
    assert {p for p, size in tree(above).items() if size >= 0} == {"CD2/01 Two.flac", "Record.log", "cover.png"}
    assert lost(Counter(before.values()), dirs["inbound"], dirs["staging"]) == 0


def test_a_folder_above_named_in_bytes_that_are_not_utf8_is_shown_escaped(dirs):
    above = discs(dirs, parent="t")
    (above / "CD2" / "bad.flac").write_bytes(b"junk" * 100)  # refused: the folder above keeps its files
    above = Path(os.fsdecode(os.path.join(os.fsencode(str(dirs["inbound"])), b"Rec\xff")))
    os.rename(dirs["inbound"] / "t", above)
    _, staged = run(dirs)
    assert staged.albums_success == 1 and staged.files_moved == 2
    warnings = sidecar(dirs["staging"] / "BAN/Band/2001 - Record")["validation"]["warnings"]
    assert f"2 other file(s) stay in {dirs['inbound']}/Rec\\xff: a folder below it holds music that was not staged" in warnings


@pytest.mark.parametrize("name,disc", [
    ("CD1", True), ("cd 2", True), ("Disc 2", True), ("Disk_3", True), ("Record (Disc 1)", True), ("[CD2]", True),
    ("Record", False), ("ABCD 1", False), ("Record (CD 1999)", False), ("[CD 24-96]", False), ("CD 320kbps", False),
    ("Discovery 2", False),
])
def test_a_folder_is_named_as_a_disc_only_by_a_small_number_after_cd_or_disc(name, disc):
    from melodee_pipeline.staging.extras import DISC_FOLDER

    assert bool(DISC_FOLDER.search(name.encode())) is disc


def test_macos_metadata_files_beside_the_music_are_left_alone_and_hold_nothing_back(dirs):
    folder = album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".flac")[0].parent
    (folder / "._01 One.flac").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
    (folder / "cover.png").write_bytes(png_bytes(1))
    scan_db, staged = run(dirs)
    assert staged.files_moved == 1 and staged.extras_moved == 1
    assert tree(dirs["inbound"]) == {"Band - Record": -1, "Band - Record/._01 One.flac": 29}
    assert sqlite3.connect(scan_db).execute("SELECT count(*) FROM scanned_files WHERE is_valid = 0").fetchone() == (0,)
