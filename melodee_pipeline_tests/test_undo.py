"""`melodee-pipeline undo` and undo_staging_job: a run's files go back to inbound byte for byte,
never over a file that is there now; rows follow; a killed undo finishes on rerun. Real audio,
real images, real Postgres (Melodee's own tables)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from melodee_pipeline.cli import main
from melodee_pipeline.grouping import group_albums
from melodee_pipeline.records import record_staging_items
from melodee_pipeline.samples import embed_cover, png_bytes
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline.staging.stage import prepare_staging, stage_albums
from melodee_pipeline_tests.conftest import album, inbound_read_only, snapshot, tree

SIDECAR = "album.melodee.json"
LOG = b"EAC extraction logfile\r\n"


def run(libs, engine) -> str:
    """One staging run over the libraries, in the job's order; returns its scan_id."""
    prepare_staging(str(libs["staging"]), logging.getLogger("test"))  # interrupted work first, then inbound is read
    scan = scan_inbound(str(libs["inbound"]), str(libs["scandbs"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    stage_albums(scan.scan_db, str(libs["staging"]), workers=2)
    record_staging_items(engine, str(libs["staging"]))
    return scan.scan_id


def hashes(libs) -> Counter:
    """The multiset of file hashes across inbound and staging: music and extras (sidecars, the
    journal and temp files are the pipeline's own)."""
    return Counter(h for k, h in snapshot(libs["inbound"], libs["staging"]).items()
                   if not k.endswith(SIDECAR) and "/.melodee-" not in k)


def rows(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        return {r.staging_path: (r.track_count, r.status, r.checksum) for r in
                conn.execute(sa.text("SELECT staging_path, track_count, status, checksum FROM staging_items"))}


def assert_rows_match_sidecars(libs, engine) -> None:
    """Every album directory has its row with the sidecar's checksum and track count, and no row points at nothing."""
    expected = {}
    for dirpath, _dirs, names in os.walk(libs["staging"]):
        if SIDECAR in names:
            data = (Path(dirpath) / SIDECAR).read_bytes()
            expected[dirpath] = (len(json.loads(data)["tracks"]), hashlib.sha256(data).hexdigest())
    assert {p: (n, c) for p, (n, _s, c) in rows(engine).items()} == expected


def two_albums(libs) -> None:
    folder = album(libs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")[0].parent
    (folder / "cover.png").write_bytes(png_bytes(1))
    (folder / "Record.log").write_bytes(LOG)
    tracks = album(libs["inbound"], "Other", "Art", 1999, ["Three"], ".mp3", seed=7)
    embed_cover(str(tracks[0]), png_bytes(9))  # its cover file is written from the tags


def test_undo_a_whole_run_restores_inbound_byte_for_byte(env, libs, engine, capsys):
    two_albums(libs)
    before, inbound_before = hashes(libs), snapshot(libs["inbound"])
    scan_id = run(libs, engine)
    assert tree(libs["inbound"]) == {} and len(rows(engine)) == 2
    assert main(["undo", "--scan", scan_id]) == 0
    out = capsys.readouterr().out
    assert "undone" in out and "5 file(s) (3 track(s), 2 other) returned to inbound; staging_items: 0 rewritten, 2 removed" in out
    assert snapshot(libs["inbound"]) == inbound_before  # every path, every byte
    assert hashes(libs) == before
    assert rows(engine) == {} and [n for n in os.listdir(libs["staging"]) if not n.startswith(".")] == []
    # A second undo finds nothing left to do.
    assert main(["undo", "--scan", scan_id]) == 0
    assert "nothing to undo" in capsys.readouterr().out and snapshot(libs["inbound"]) == inbound_before


def test_undo_one_album_with_the_scan_id_spelled_without_its_prefix(env, libs, engine, capsys):
    two_albums(libs)
    before = snapshot(libs["inbound"])
    scan_id = run(libs, engine)
    assert main(["undo", "--scan", scan_id.removeprefix("scan_"), "--album", "BAN/Band/2001 - Record"]) == 0
    assert {k: v for k, v in before.items() if k.startswith("inbound/Band")} == snapshot(libs["inbound"])
    assert sorted(os.listdir(libs["staging"] / "OTH/Other/1999 - Art")) == ["01 - Three.mp3", SIDECAR, "cover.png"]
    assert not (libs["staging"] / "BAN").exists()
    assert list(rows(engine)) == [str(libs["staging"] / "OTH/Other/1999 - Art")]
    assert_rows_match_sidecars(libs, engine)



def test_audio_copied_into_an_album_by_hand_keeps_it_in_view_after_its_tracks_are_undone(env, libs, engine, capsys):
    """The undo returns the run's tracks; a track nobody staged stays, and so do the sidecar and the
    row, so `reconcile` still sees the album and adds that track."""
    two_albums(libs)
    scan_id = run(libs, engine)
    target = libs["staging"] / "OTH/Other/1999 - Art"
    album(target, "Other", "Art", 1999, ["By Hand"], ".mp3", folder=".", first_track=4, seed=7)
    old = os.stat(target).st_mtime - 3600
    os.utime(target / "04 By Hand.mp3", (old, old))
    assert main(["undo", "--scan", scan_id, "--album", "OTH/Other/1999 - Art"]) == 0
    assert sorted(os.listdir(target)) == ["04 By Hand.mp3", SIDECAR]
    assert json.loads((target / SIDECAR).read_text())["tracks"] == []
    assert rows(engine)[str(target)][:2] == (0, "pending_review")
    capsys.readouterr()
    assert main(["reconcile"]) == 0
    assert "1 added" in capsys.readouterr().out
    assert [t["name"] for t in json.loads((target / SIDECAR).read_text())["tracks"]] == ["By Hand"]
    assert_rows_match_sidecars(libs, engine)

def test_undo_a_run_that_merged_into_an_existing_album_takes_only_its_own_files(env, libs, engine, capsys):
    album(libs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")
    first = run(libs, engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE staging_items SET status = 'rejected'"))  # reviewed: the later run reopens it
    folder = album(libs["inbound"], "Band", "Record", 2001, ["Three"], ".flac", folder="later", first_track=3, seed=3)[0].parent
    (folder / "cover.png").write_bytes(png_bytes(4))
    before, inbound_before = hashes(libs), snapshot(libs["inbound"])
    target = libs["staging"] / "BAN/Band/2001 - Record"
    sidecar_before = (target / SIDECAR).read_bytes()
    scan_id = run(libs, engine)
    assert sorted(os.listdir(target)) == ["01 - One.flac", "02 - Two.flac", "03 - Three.flac", SIDECAR, "cover.png"]
    assert main(["undo", "--scan", scan_id]) == 0
    assert snapshot(libs["inbound"]) == inbound_before and hashes(libs) == before
    assert sorted(os.listdir(target)) == ["01 - One.flac", "02 - Two.flac", SIDECAR]
    doc, old = json.loads((target / SIDECAR).read_bytes()), json.loads(sidecar_before)
    assert doc["tracks"] == old["tracks"] and doc["album"]["image_count"] == 0
    assert "album check: no cover image" in doc["validation"]["warnings"]
    assert_rows_match_sidecars(libs, engine)
    assert [(n, s) for n, s, _ in rows(engine).values()] == [(2, "pending_review")]
    # The album is the first run's again, as its sidecar and row say: that run can be undone by it.
    assert doc["scan_id"] == old["scan_id"] == first
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT scan_id FROM staging_items")).scalar() == first
    assert main(["undo", "--scan", first]) == 0
    assert not target.exists() and len(list(libs["inbound"].rglob("*.flac"))) == 3


def test_undo_leaves_a_row_the_admin_deleted_deleted(env, libs, engine, capsys):
    album(libs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")
    run(libs, engine)
    album(libs["inbound"], "Band", "Record", 2001, ["Three"], ".flac", folder="later", first_track=3, seed=3)
    scan_id = run(libs, engine)  # the album gains a track: its row is there again for review
    with engine.begin() as conn:  # the admin rejects and deletes it, keeping the files
        conn.execute(sa.text("DELETE FROM staging_items"))
    assert main(["undo", "--scan", scan_id]) == 0
    target = libs["staging"] / "BAN/Band/2001 - Record"
    assert sorted(os.listdir(target)) == ["01 - One.flac", "02 - Two.flac", SIDECAR]
    assert rows(engine) == {}  # the undo rewrote the sidecar, not the admin's decision


def test_a_re_dropped_duplicate_gets_its_inbound_copy_back(env, libs, engine):
    files = album(libs["inbound"], "Band", "Record", 2001, ["One"], ".flac")
    data = files[0].read_bytes()
    run(libs, engine)
    files[0].parent.mkdir()
    files[0].write_bytes(data)  # the same file dropped in again: the run only removes it
    before, inbound_before = hashes(libs), snapshot(libs["inbound"])
    scan_id = run(libs, engine)
    assert not files[0].exists()
    assert main(["undo", "--scan", scan_id]) == 0
    assert snapshot(libs["inbound"]) == inbound_before and hashes(libs) == before
    assert os.stat(files[0]).st_ino != os.stat(libs["staging"] / "BAN/Band/2001 - Record/01 - One.flac").st_ino  # a copy, not a link
    assert_rows_match_sidecars(libs, engine)


def test_an_original_path_taken_meanwhile_is_never_overwritten(env, libs, engine, capsys):
    files = album(libs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")
    before = hashes(libs)
    scan_id = run(libs, engine)
    files[0].parent.mkdir()
    files[0].write_bytes(b"the admin put something else here")
    assert main(["undo", "--scan", scan_id]) == 0
    out = capsys.readouterr().out
    assert "partly undone" in out and "01 - One.flac: stays staged: its inbound path now holds another file" in out
    assert files[0].read_bytes() == b"the admin put something else here" and files[1].exists()
    target = libs["staging"] / "BAN/Band/2001 - Record"
    assert sorted(os.listdir(target)) == ["01 - One.flac", SIDECAR]
    assert hashes(libs) == before + Counter([hashlib.sha256(b"the admin put something else here").hexdigest()])
    assert_rows_match_sidecars(libs, engine)


def test_dry_run_shows_the_plan_and_changes_nothing(env, libs, engine, capsys):
    two_albums(libs)
    scan_id = run(libs, engine)
    state, db_rows = snapshot(libs["inbound"], libs["staging"]), rows(engine)
    assert main(["undo", "--scan", scan_id, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert snapshot(libs["inbound"], libs["staging"]) == state and rows(engine) == db_rows
    assert "planned         BAN/Band/2001 - Record: 4 file(s) (2 track(s), 2 other) to return" in out
    assert f"01 - One.flac: goes back to inbound ({libs['inbound'] / 'Band - Record' / '01 One.flac'})" in out
    assert "cover.png: cover written from the tags; removed" in out
    assert "[dry run: nothing moved]" in out


def test_approved_or_promoted_albums_are_refused_with_the_reason(env, libs, engine, capsys):
    two_albums(libs)
    scan_id = run(libs, engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE staging_items SET status = 'approved' WHERE artist_name = 'Band'"))
    shutil.rmtree(libs["staging"] / "OTH")  # Melodee promoted it: the directory left staging
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM staging_items WHERE artist_name = 'Other'"))
    state = snapshot(libs["inbound"], libs["staging"])
    assert main(["undo", "--scan", scan_id]) == 1
    out = capsys.readouterr().out
    assert "refused         BAN/Band/2001 - Record: approved by the admin" in out
    assert "refused         OTH/Other/1999 - Art: no longer in staging" in out
    assert snapshot(libs["inbound"], libs["staging"]) == state


@pytest.mark.parametrize("point", ["after_undo_journal:1", "after_return:2", "before_unlink_staged:1"])
@pytest.mark.parametrize("finisher", ["undo", "run"])
def test_a_killed_undo_finishes_on_rerun(point, finisher, env, libs, engine, tmp_path):
    two_albums(libs)
    before, inbound_before = hashes(libs), snapshot(libs["inbound"])
    scan_id = run(libs, engine)
    staged = hashes(libs)  # with the cover written from the tags
    killed = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "undo", "--scan", scan_id],
                            env={**os.environ, "MELODEE_CRASH_AT": point}, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert all(h in hashes(libs) for h in before)  # nothing lost at the kill
    if finisher == "undo":
        again = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "undo", "--scan", scan_id],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert snapshot(libs["inbound"]) == inbound_before
    else:  # the next staging run finishes the undo first, then stages what is in inbound again
        run(libs, engine)
        assert sorted(tree(libs["inbound"])) == []
        before = staged
    assert hashes(libs) == before
    assert_rows_match_sidecars(libs, engine)


def test_undo_staging_job(env, libs, engine):
    from melodee_pipeline.definitions import defs

    two_albums(libs)
    inbound_before = snapshot(libs["inbound"])
    scan_id = run(libs, engine)
    job = defs.get_job_def("undo_staging_job")
    import dagster as dg

    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config={"ops": {"undo_staging": {"config": {"scan_id": scan_id}}}},
                                        instance=instance)
    assert result.success
    assert (result.output_for_node("undo_staging")["files_returned"], result.output_for_node("undo_staging")["tracks_returned"]) == (5, 3)
    assert snapshot(libs["inbound"]) == inbound_before and rows(engine) == {}


def test_undo_across_filesystems_copies_back_verified_without_a_database(tmp_path):
    from melodee_pipeline.undo import undo_scan

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to move across")
    inbound = shm / f"melodee-undo-{os.getpid()}"
    try:
        folder = album(inbound, "Band", "Record", 2001, ["One", "Two"], ".flac")[0].parent
        (folder / "cover.png").write_bytes(png_bytes(1))
        before = snapshot(inbound)
        (tmp_path / "staging").mkdir()
        scan = scan_inbound(str(inbound), str(tmp_path / "scans"), workers=1, min_file_age_seconds=0)
        group_albums(scan.scan_db)
        assert stage_albums(scan.scan_db, str(tmp_path / "staging")).files_moved == 2
        result = undo_scan(None, scan.scan_db, str(tmp_path / "staging"))
        assert [(a.status, a.returned) for a in result.albums] == [("undone", 3)]
        assert snapshot(inbound) == before and not (inbound / ".melodee-tmp").exists()
        assert [n for n in os.listdir(tmp_path / "staging") if not n.startswith(".")] == []
    finally:
        shutil.rmtree(inbound, ignore_errors=True)


def killed_mid_album(libs, point: str) -> str:
    """`process-scan` SIGKILLed at `point` while staging one album; returns its scan DB."""
    base = [sys.executable, "-m", "melodee_pipeline.cli"]
    scan = subprocess.run([*base, "scan-inbound", "--path", str(libs["inbound"]), "--output", str(libs["scandbs"]),
                           "--workers", "1", "--min-file-age", "0"], capture_output=True, text=True, check=True)
    killed = subprocess.run([*base, "process-scan", "--scan", scan.stdout.strip(), "--staging", str(libs["staging"]),
                             "--workers", "1"], env={**os.environ, "MELODEE_CRASH_AT": point}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return scan.stdout.strip()


@pytest.mark.parametrize("point,finisher", [("after_place:1", "run"), ("before_unlink_sources:1", "run"),
                                            ("before_sidecar:1", "run"), ("before_unlink_sources:1", "reconcile"),
                                            ("before_unlink_sources:1", "undo")])
def test_an_album_a_killed_run_began_is_undone_by_that_runs_scan_id(point, finisher, env, libs, engine, capsys):
    """A run killed mid-album; the next run (or reconcile, or the undo itself) finishes the album
    from the journal. Its sidecar and row carry the killed run's scan id, so undoing that scan id
    returns every file, moved back (not copied: the killed run moved them), and nothing stays
    behind in staging."""
    album(libs["inbound"], "Pink Floyd", "Animals", 1977, ["Dogs", "Sheep"], ".ogg")
    inbound_before, before = snapshot(libs["inbound"]), hashes(libs)
    killed_db = killed_mid_album(libs, point)
    killed_id = Path(killed_db).stem
    if finisher != "undo":
        assert main([finisher]) == 0  # finishes the album from the journal
        [sidecar_path] = list(libs["staging"].rglob(SIDECAR))
        assert json.loads(sidecar_path.read_text())["scan_id"] == killed_id
        indexes = {r[1] for r in sqlite3.connect(killed_db).execute("PRAGMA index_list(scanned_files)")}
        assert "scanned_files_path_bytes" in indexes  # looked up by path: indexed once
    capsys.readouterr()
    assert main(["undo", "--scan", killed_id]) == 0, capsys.readouterr()
    assert "undone" in capsys.readouterr().out
    assert snapshot(libs["inbound"]) == inbound_before and hashes(libs) == before  # back, and not twice
    assert not list(libs["staging"].rglob(SIDECAR)) and rows(engine) == {}



def test_an_album_whose_inbound_name_is_not_utf8_is_finished_and_undone_after_a_kill(env, libs, engine, capsys):
    """The journal keeps a source's exact bytes (surrogate-escaped), not the `\\xNN` text shown to
    people: killed after one source went, the album is finished from the journal and undone whole."""
    album(libs["inbound"], "Pink Floyd", "Animals", 1977, ["Dogs", "Sheep"], ".ogg", folder="t")
    inbound = os.fsencode(str(libs["inbound"]))
    os.rename(os.path.join(inbound, b"t"), os.path.join(inbound, b"Animals \xff"))
    inbound_before, before = snapshot(libs["inbound"]), hashes(libs)
    killed_id = Path(killed_mid_album(libs, "after_unlink:1")).stem
    assert main(["run"]) == 0
    assert not os.path.exists(os.path.join(inbound, b"Animals \xff"))  # finished: both tracks staged, the folder gone
    capsys.readouterr()
    assert main(["undo", "--scan", killed_id]) == 0, capsys.readouterr()
    assert snapshot(libs["inbound"]) == inbound_before and hashes(libs) == before
    assert not list(libs["staging"].rglob(SIDECAR)) and rows(engine) == {}

def test_a_journal_entry_naming_a_scan_db_elsewhere_writes_nothing_there(env, libs, engine, tmp_path):
    """The journal is a file in staging: an entry whose scan id is a path gets no scan DB written
    outside the scan DB directory; the album is still finished."""
    album(libs["inbound"], "Pink Floyd", "Animals", 1977, ["Dogs", "Sheep"], ".ogg")
    killed_db = killed_mid_album(libs, "before_unlink_sources:1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    decoy = elsewhere / Path(killed_db).name
    shutil.copyfile(killed_db, decoy)
    before = decoy.read_bytes()
    [entry] = list((libs["staging"] / ".melodee-journal").glob("*.json"))
    doc = json.loads(entry.read_text())
    doc["scan_id"] = f"../{elsewhere.name}/{decoy.stem}"
    entry.write_text(json.dumps(doc))
    assert main(["run"]) == 0
    assert decoy.read_bytes() == before and len(list(libs["staging"].rglob(SIDECAR))) == 1


def test_undoing_a_merge_takes_its_rename_notes_along(env, libs, engine, capsys):
    """A later run's cover met an earlier one's name and was staged as `cover (2).png`, with a
    note saying so; undone, that file is back in inbound and the note must not stay behind."""
    folder = album(libs["inbound"], "Band", "Record", 2001, ["One"], ".flac")[0].parent
    (folder / "cover.png").write_bytes(png_bytes(1))
    run(libs, engine)
    later = album(libs["inbound"], "Band", "Record", 2001, ["Two"], ".flac", folder="Band - Record (more)", seed=4)[0].parent
    (later / "cover.png").write_bytes(png_bytes(2))
    scan_id = run(libs, engine)
    target = libs["staging"] / "BAN/Band/2001 - Record"
    notes = json.loads((target / SIDECAR).read_bytes())["validation"]["warnings"]
    assert any(n.endswith("staged as cover (2).png: a different file already had its name") for n in notes), notes
    assert main(["undo", "--scan", scan_id]) == 0
    assert sorted(os.listdir(target)) == ["01 - One.flac", SIDECAR, "cover.png"]
    notes = json.loads((target / SIDECAR).read_bytes())["validation"]["warnings"]
    assert not any("staged as" in n for n in notes), notes


def test_a_rename_note_is_kept_while_its_file_is_there_whatever_the_inbound_path():
    from melodee_pipeline.staging.validation import note_stands, renamed_note

    note = renamed_note("/in/Live staged as a trio/01.flac", "01 - One (2).flac", "a different file")
    assert note_stands(note, ["01 - One.flac", "01 - One (2).flac"])
    assert not note_stands(note, ["01 - One.flac"])
    assert note_stands("album check: no cover image", [])


def _stamp_and_tracks(libs, engine) -> tuple[str, list[str], str]:
    [path] = list(libs["staging"].rglob(SIDECAR))
    doc = json.loads(path.read_text())
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT scan_id FROM staging_items")).scalar()
    return doc["scan_id"], [t["name"] for t in doc["tracks"]], row


def _merged(libs, engine, later: str) -> dict[str, str]:
    """Run A stages track One; each later run (B, C, ...) merges one more track into the album."""
    album(libs["inbound"], "Band", "Record", 2001, ["One"], ".flac")
    ids = {"A": run(libs, engine)}
    for n, name in enumerate(later, 2):
        album(libs["inbound"], "Band", "Record", 2001, [f"Track {n}"], ".flac", folder=f"later {n}", first_track=n, seed=n)
        ids[name] = run(libs, engine)
    return ids


@pytest.mark.parametrize("later,order", [("BC", "BC"), ("BC", "CB"), ("BCD", "BDC"), ("BCD", "CBD")])
def test_undoing_merges_in_any_order_names_the_run_whose_files_are_left(later, order, env, libs, engine, capsys):
    ids = _merged(libs, engine, later)
    assert _stamp_and_tracks(libs, engine) == (ids[later[-1]], ["One"] + [f"Track {n}" for n in range(2, len(later) + 2)],
                                               ids[later[-1]])
    for name in order:
        assert main(["undo", "--scan", ids[name]]) == 0, capsys.readouterr()
    assert _stamp_and_tracks(libs, engine) == (ids["A"], ["One"], ids["A"])


def test_a_killed_undo_under_a_later_run_still_lets_that_run_be_undone_back_to_the_first(env, libs, engine, capsys):
    ids = _merged(libs, engine, "BC")
    killed = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "undo", "--scan", ids["B"]],
                            env={**os.environ, "MELODEE_CRASH_AT": "after_return:1"}, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The next run finishes the undo from the journal before it reads inbound (where B's track is
    # back, so that run would stage it again, as a new run).
    prepare_staging(str(libs["staging"]), logging.getLogger("test"), str(libs["scandbs"]))
    assert main(["undo", "--scan", ids["C"]]) == 0, capsys.readouterr()
    assert _stamp_and_tracks(libs, engine) == (ids["A"], ["One"], ids["A"])


def test_a_run_that_only_writes_a_cover_again_is_undone_back_to_the_stamp_before(env, libs, engine, capsys):
    """Nothing moves (the track is already staged), so nothing is journaled, but the sidecar is
    rewritten (the cover taken from the tags again, deleted by hand): its stamp before is kept too."""
    tracks = album(libs["inbound"], "Band", "Record", 2001, ["One"], ".flac")
    embed_cover(str(tracks[0]), png_bytes(9))
    same = tracks[0].read_bytes()
    first = run(libs, engine)
    [sidecar] = list(libs["staging"].rglob(SIDECAR))
    for image in [p for p in sidecar.parent.iterdir() if p.suffix in (".png", ".jpg")]:
        image.unlink()
    tracks[0].parent.mkdir(parents=True, exist_ok=True)
    tracks[0].write_bytes(same)  # dropped again: already staged
    second = run(libs, engine)
    assert json.loads(sidecar.read_text())["scan_id"] == second
    assert main(["undo", "--scan", second]) == 0, capsys.readouterr()
    assert _stamp_and_tracks(libs, engine) == (first, ["One"], first)


def test_a_moving_entry_of_the_previous_version_still_undoes_back_to_the_stamp_before(env, libs, engine, capsys):
    """Entries written before the stamp was journaled have no `previous_scan_id`: recovery reads
    the sidecar, as that version did (right when the kill came before the sidecar's rewrite)."""
    album(libs["inbound"], "Band", "Record", 2001, ["One"], ".flac")
    first = run(libs, engine)
    album(libs["inbound"], "Band", "Record", 2001, ["Two"], ".flac", folder="later", first_track=2, seed=2)
    killed_id = Path(killed_mid_album(libs, "before_sidecar:1")).stem
    for entry in (libs["staging"] / ".melodee-journal").glob("*.json"):
        doc = json.loads(entry.read_text())
        assert doc.pop("previous_scan_id") == first
        entry.write_text(json.dumps(doc))
    assert main(["run"]) == 0  # finishes it from the journal
    assert main(["undo", "--scan", killed_id]) == 0, capsys.readouterr()
    assert _stamp_and_tracks(libs, engine) == (first, ["One"], first)


def test_a_merge_killed_after_its_sidecar_is_undone_back_to_the_run_before(env, libs, engine, capsys):
    """The sidecar already names the killed run when the next run finishes its album from the
    journal: the stamp before it comes from the journal, not from that sidecar."""
    album(libs["inbound"], "Band", "Record", 2001, ["One"], ".flac")
    first = run(libs, engine)
    album(libs["inbound"], "Band", "Record", 2001, ["Two"], ".flac", folder="later", first_track=2, seed=2)
    killed_id = Path(killed_mid_album(libs, "after_sidecar:1")).stem
    assert main(["run"]) == 0  # finishes it from the journal
    assert _stamp_and_tracks(libs, engine) == (killed_id, ["One", "Two"], killed_id)
    assert main(["undo", "--scan", killed_id]) == 0, capsys.readouterr()
    assert _stamp_and_tracks(libs, engine) == (first, ["One"], first)


def test_an_album_recovery_finishes_whose_inbound_cannot_be_emptied_is_one_warning(env, libs, engine, monkeypatch, caplog):
    album(libs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")
    killed_mid_album(libs, "after_place:1")  # placed in staging, the inbound copies not yet deleted
    before = snapshot(libs["inbound"])
    inbound_read_only(monkeypatch, libs["inbound"])
    with caplog.at_level(logging.WARNING):
        prepare_staging(str(libs["staging"]), logging.getLogger("test"), str(libs["scandbs"]))
    kept = [r.getMessage() for r in caplog.records if "could not be deleted from inbound" in r.getMessage()]
    assert len(kept) == 1 and kept[0].startswith("2 staged file(s) could not be deleted from inbound (Read-only file system)")
    assert snapshot(libs["inbound"]) == before and len(list(libs["staging"].rglob("*.flac"))) == 2


def test_an_album_whose_undo_fails_fails_alone_and_a_second_undo_finishes_it(env, libs, engine, capsys):
    two_albums(libs)
    inbound_before = snapshot(libs["inbound"])
    scan_id = run(libs, engine)
    blocked = libs["inbound"] / "Band - Record"
    blocked.write_text("a file where the album's inbound folder was")  # its files cannot go back
    assert main(["undo", "--scan", scan_id]) == 1
    out = capsys.readouterr().out
    assert "failed          BAN/Band/2001 - Record: NotADirectoryError: " in out
    assert "undone          OTH/Other/1999 - Art: 1 file(s) returned" in out  # the other goes on
    assert (libs["inbound"] / "Other - Art").is_dir() and (libs["staging"] / "BAN/Band/2001 - Record/01 - One.flac").exists()
    blocked.unlink()  # the admin clears the way
    assert main(["undo", "--scan", scan_id]) == 0, capsys.readouterr().out
    assert snapshot(libs["inbound"]) == inbound_before
