"""A run costs what is new: rows from the journal, no walk of staging, remembered refusals; and
`reconcile`, which walks staging on demand and repairs drift. Real audio, real Postgres."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from melodee_pipeline import cycle
from melodee_pipeline.cli import main
from melodee_pipeline.definitions import defs
from melodee_pipeline.errors import DatabaseUnavailable
from melodee_pipeline.grouping import group_albums
from melodee_pipeline.lock import staging_lock
from melodee_pipeline.reconcile import reconcile
from melodee_pipeline.samples import Tags, make_track, tag
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline.staging import journal
from melodee_pipeline.staging.stage import stage_albums
from melodee_pipeline_tests.conftest import age, album, opened_during, snapshot, tree

LOG = logging.getLogger("test_incremental")


def run_once(libs, engine, workers: int = 1):
    """One cycle as `process-scan` runs it: scan, then group -> stage -> record."""
    scan = scan_inbound(str(libs["inbound"]), str(libs["scandbs"]), workers=workers, min_file_age_seconds=0)
    run = cycle.run_from_scan_db(scan.scan_db, str(libs["staging"]), workers=workers, rate_limit=0, dry_run=False)
    _, staged, rows = cycle.stage_scan(run, engine, LOG)
    return scan, staged, rows


def rows(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT staging_path, album_name, track_count, status, checksum FROM staging_items"))
        return {r.staging_path: tuple(r[1:]) for r in got}


def sidecar_path(libs, rel: str) -> Path:
    return libs["staging"] / rel / "album.melodee.json"


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


LZ, ACDC, PF, BEA, BAND = ("LZ/Led Zeppelin/1971 - IV", "ACD/AC-DC/1980 - Back in Black", "PF/Pink Floyd/1977 - Animals",
                           "BEA/The Beatles/1969 - Abbey Road", "BAN/Band/2001 - Record")


def test_a_run_after_an_interrupted_record_step_records_the_missed_albums(libs, engine):
    album(libs["inbound"], "Led Zeppelin", "IV", 1971, ["Black Dog", "Rock and Roll"], ".flac")
    age(libs["inbound"])
    down = sa.create_engine("postgresql+psycopg2://nobody:secret@127.0.0.1:1/none")  # nothing listens on port 1
    with pytest.raises(DatabaseUnavailable):
        run_once(libs, down)
    assert rows(engine) == {}
    pending, _ = journal.entries(str(libs["staging"]), journal.STAGED)
    assert [e.album_dir for e in pending] == [LZ]
    album(libs["inbound"], "AC/DC", "Back in Black", 1980, ["Hells Bells"], ".ogg", seed=5)
    age(libs["inbound"])
    _, staged, recorded = run_once(libs, engine)
    assert staged.albums_total == 1 and recorded.inserted == 2  # the new album and the missed one
    got = rows(engine)
    assert sorted(got) == [str(libs["staging"] / ACDC), str(libs["staging"] / LZ)]
    assert got[str(libs["staging"] / LZ)][1:] == (2, "pending_review", checksum(sidecar_path(libs, LZ)))
    assert not (libs["staging"] / journal.JOURNAL_DIR).exists()


def test_a_run_with_no_new_work_opens_no_sidecar_and_no_leftover(libs, engine):
    album(libs["inbound"], "Led Zeppelin", "IV", 1971, ["Black Dog", "Rock and Roll"], ".flac")
    album(libs["inbound"], "Pink Floyd", "Animals", 1977, ["Dogs"], ".mp3", seed=3)
    make_track(str(libs["inbound"] / "left" / "no_title.flac"), Tags("A", "B"), seed=7)
    (libs["inbound"] / "left" / "junk.ogg").write_text("not audio" * 50)
    age(libs["inbound"])
    _, staged, recorded = run_once(libs, engine)
    assert (staged.albums_total, recorded.inserted) == (2, 2)
    before = rows(engine), snapshot(libs["inbound"], libs["staging"])

    (scan, staged, recorded), opened = opened_during(lambda: run_once(libs, engine))
    assert (scan.files, scan.unchanged, staged.albums_total) == (2, 2, 0)
    assert (recorded.inserted, recorded.updated, recorded.unchanged) == (0, 0, 0)
    touched = [p for p in opened if p.startswith((str(libs["staging"]), str(libs["inbound"])))]
    assert touched == []
    assert (rows(engine), snapshot(libs["inbound"], libs["staging"])) == before
    # The same hook does see sidecar reads: reconcile reads every one.
    _, opened = opened_during(lambda: reconcile(engine, str(libs["staging"]), dry_run=True))
    assert sorted(p for p in opened if p.endswith("album.melodee.json")) == \
        [str(sidecar_path(libs, LZ)), str(sidecar_path(libs, PF))]


def test_a_leftover_that_changes_is_read_again_and_staged(libs, engine):
    leftover = libs["inbound"] / "Band - Record" / "01 untitled.mp3"
    make_track(str(leftover), Tags("Band", "Record", None, None, 1, None, 2001))
    age(libs["inbound"])
    scan, staged, _ = run_once(libs, engine)
    assert (scan.invalid, staged.albums_total) == (1, 0)
    (scan, _, _), opened = opened_during(lambda: run_once(libs, engine))
    assert scan.unchanged == 1 and str(leftover) not in opened
    tag(str(leftover), Tags(title="Song"))  # the admin fixes the tags
    age(libs["inbound"])
    (scan, staged, recorded), opened = opened_during(lambda: run_once(libs, engine))
    assert str(leftover) in opened
    assert (scan.valid, scan.invalid, scan.unchanged) == (1, 0, 0)
    assert (staged.files_moved, recorded.inserted) == (1, 1)
    assert not leftover.exists() and (libs["staging"] / BAND / "01 - Song.mp3").is_file()
    assert list(rows(engine)) == [str(libs["staging"] / BAND)]


@pytest.fixture
def five_albums(env, libs, engine):
    """Five albums staged and recorded; returns libs."""
    album(libs["inbound"], "Led Zeppelin", "IV", 1971, ["Black Dog", "Rock and Roll"], ".flac")
    album(libs["inbound"], "AC/DC", "Back in Black", 1980, ["Hells Bells"], ".ogg", seed=5)
    album(libs["inbound"], "Pink Floyd", "Animals", 1977, ["Dogs"], ".mp3", seed=3)
    album(libs["inbound"], "The Beatles", "Abbey Road", 1969, ["Something"], ".opus", seed=9)
    album(libs["inbound"], "Band", "Record", 2001, ["Song"], ".mp3", seed=11)
    age(libs["inbound"])
    _, _, recorded = run_once(libs, engine, workers=2)
    assert recorded.inserted == 5
    return libs


def test_reconcile_heals_hand_edits_and_restores_deleted_rows_only_when_asked(five_albums, engine, capsys):
    libs, staging = five_albums, five_albums["staging"]
    (staging / LZ / "02 - Rock and Roll.flac").unlink()  # a track removed by hand
    doc = json.loads(sidecar_path(libs, ACDC).read_text())
    doc["album"]["name"] = "Back in Black (fixed by hand)"  # a sidecar edited by hand
    sidecar_path(libs, ACDC).write_text(json.dumps(doc))
    with engine.begin() as conn:  # the admin deleted a rejected row; its files stay in staging
        conn.execute(sa.text("DELETE FROM staging_items WHERE staging_path = :p"), {"p": str(staging / PF)})
    (staging / BEA / "01 - Something.opus").unlink()  # every track of an album gone: no phantom album
    shutil.rmtree(staging / "BAN")  # promoted by hand, row left behind
    before = rows(engine), tree(staging)

    assert main(["reconcile", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (rows(engine), tree(staging)) == before
    assert "  sidecars: 1 would be rewritten without 2 missing file(s), 1 would be removed (no file left)\n" in out
    assert "  rows: 2 would be updated (0 reopened), 0 would be restored, 1 deleted by the admin kept deleted " \
           "(--restore-deleted re-creates them), 0 refused\n" in out

    assert main(["reconcile"]) == 0
    out = capsys.readouterr().out
    assert "  albums: 4 in staging, 0 unchanged, 0 unreadable\n" in out  # BAN's directory is gone
    assert "  sidecars: 1 rewritten without 2 missing file(s), 1 removed (no file left)\n" in out
    assert "  rows: 2 updated (0 reopened), 0 restored, 1 deleted by the admin kept deleted " \
           "(--restore-deleted re-creates them), 0 refused\n" in out
    assert "  rows without an album in staging (kept): 2\n" in out
    lz = json.loads(sidecar_path(libs, LZ).read_bytes())
    assert [t["name"] for t in lz["tracks"]] == ["Black Dog"]
    assert lz["validation"]["warnings"] == [  # the album checks are recomputed, not piled up
        f"{LZ}/02 - Rock and Roll.flac: missing from staging; removed from the sidecar by reconcile",
        "album check: no cover image"]
    got = rows(engine)
    assert got[str(staging / LZ)][1::2] == (1, checksum(sidecar_path(libs, LZ)))
    assert got[str(staging / ACDC)][::3] == ("Back in Black (fixed by hand)", checksum(sidecar_path(libs, ACDC)))
    assert str(staging / PF) not in got
    assert not (staging / "BEA").exists()  # sidecar and emptied directories gone
    assert {str(staging / BEA), str(staging / BAND)} <= set(got)  # rows are Melodee's: reported, kept

    with engine.begin() as conn:  # the admin corrects a row in Melodee: their decision, not drift
        conn.execute(sa.text("UPDATE staging_items SET album_name = 'IV (admin)' WHERE staging_path = :p"),
                     {"p": str(staging / LZ)})
    assert main(["reconcile"]) == 0  # converged: nothing left to repair
    out = capsys.readouterr().out
    assert "  albums: 3 in staging, 2 unchanged, 0 unreadable\n" in out
    assert rows(engine)[str(staging / LZ)][0] == "IV (admin)"
    assert "  sidecars: 0 rewritten without 0 missing file(s), 0 removed (no file left)\n" in out

    assert main(["reconcile", "--restore-deleted"]) == 0
    assert "  rows: 0 updated (0 reopened), 1 restored, 0 deleted by the admin kept deleted, 0 refused\n" in capsys.readouterr().out
    assert rows(engine)[str(staging / PF)][1:] == (1, "pending_review", checksum(sidecar_path(libs, PF)))


def test_reconcile_leaves_an_unreadable_sidecar_and_its_row_alone(five_albums, engine, capsys):
    sidecar_path(five_albums, LZ).write_text('{"tracks": [')  # a hand edit gone wrong
    before = rows(engine), tree(five_albums["staging"])
    assert main(["reconcile"]) == 0
    out = capsys.readouterr().out
    assert "  albums: 5 in staging, 4 unchanged, 1 unreadable\n" in out
    assert "  rows without an album in staging (kept): 0\n" in out
    assert f"  unreadable       {five_albums['staging'] / LZ}  (JSONDecodeError: " in out
    assert (rows(engine), tree(five_albums["staging"])) == before


def test_reconcile_refuses_while_a_run_holds_the_staging_lock(five_albums, engine, capsys):
    (five_albums["staging"] / LZ / "02 - Rock and Roll.flac").unlink()
    before = tree(five_albums["staging"])
    with staging_lock(engine, "first-run-id"):
        assert main(["reconcile"]) == 2
    assert capsys.readouterr().err == "error: another staging run is in progress (run first-run-id)\n"
    assert tree(five_albums["staging"]) == before


def job_metadata(result) -> dict:
    [event] = [e for e in result.all_events if e.step_key == "reconcile_staging" and e.is_successful_output]
    return {k: getattr(v, "records", None) or v.value for k, v in event.event_specific_data.metadata.items()}


def test_reconcile_job_records_the_journal_first_then_repairs(env, libs, engine):
    album(libs["inbound"], "Led Zeppelin", "IV", 1971, ["Black Dog", "Rock and Roll"], ".flac")
    album(libs["inbound"], "Pink Floyd", "Animals", 1977, ["Dogs"], ".mp3", seed=3)
    age(libs["inbound"])
    scan = scan_inbound(str(libs["inbound"]), str(libs["scandbs"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    stage_albums(scan.scan_db, str(libs["staging"]))  # no record step: two rows pending in the journal
    (libs["staging"] / LZ / "02 - Rock and Roll.flac").unlink()
    job = defs.get_job_def("reconcile_staging_job")
    instance = dg.DagsterInstance.ephemeral()

    before = tree(libs["staging"])
    dry = job.execute_in_process(run_config={"ops": {"reconcile_staging": {"config": {"dry_run": True}}}}, instance=instance)
    md = job_metadata(dry)
    assert (md["pending"], md["sidecars_rewritten"], md["rows_updated"], md["dry_run"]) == (2, 1, 0, True)
    assert tree(libs["staging"]) == before and rows(engine) == {}

    result = job.execute_in_process(instance=instance)
    md = job_metadata(result)
    assert (md["pending"], md["albums"], md["sidecars_rewritten"], md["rows_updated"], md["unchanged"]) == (2, 2, 1, 1, 1)
    assert [(r.data["staging_path"], r.data["kind"]) for r in md["drift"]] == \
        [(str(libs["staging"] / LZ), "tracks_missing"), (str(libs["staging"] / LZ), "row_updated")]
    assert result.output_for_node("reconcile_staging")["rows_updated"] == 1
    got = rows(engine)
    assert sorted(got) == [str(libs["staging"] / LZ), str(libs["staging"] / PF)]
    assert got[str(libs["staging"] / LZ)][1::2] == (1, checksum(sidecar_path(libs, LZ)))
    assert not (libs["staging"] / journal.JOURNAL_DIR).exists()
    assert not (libs["staging"] / ".melodee-tmp").exists()

    with staging_lock(engine, "first-run-id"):
        locked = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not locked.success


def test_reconcile_schedule_is_weekly_and_off_until_turned_on():
    schedule = next(s for s in defs.schedules if s.name == "reconcile_staging_schedule")
    assert schedule.job_name == "reconcile_staging_job" and schedule.cron_schedule == "0 4 * * 0"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_a_batch_of_rows_is_one_statement_and_a_refused_batch_goes_row_by_row(melodee_db):
    """Rows are upserted as one multi-row statement a batch (not one round trip a row); a batch
    Postgres refuses whole (here: one staging path twice) is retried one row at a time."""
    from melodee_pipeline.records import RecordResult, upsert_rows
    from datetime import datetime

    def row(i: int, checksum: str) -> dict:
        return dict(staging_path=f"/staging/A/Artist/{i}", scan_id="s1", metadata_file=f"/staging/A/Artist/{i}/x.json",
                    artist_name="Artist", album_name=f"Album {i}", track_count=2, total_size=10,
                    processed_at=datetime(2026, 1, 1), status="pending_review", notes="", checksum=checksum)

    statements = []  # (verb, round trips): psycopg2's executemany sends each parameter set alone

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement.split()[0], len(parameters) if isinstance(parameters, list) else 1))

    sa.event.listen(melodee_db, "before_cursor_execute", seen)
    result = RecordResult()
    assert upsert_rows(melodee_db, [row(i, f"c{i}") for i in range(300)], result) == set()
    assert result.inserted == 300 and statements == [("SELECT", 1), ("INSERT", 1)], statements
    statements.clear()
    twice = [row(1, "new"), row(1, "newer"), row(400, "c400")]
    assert upsert_rows(melodee_db, twice, result) == set()
    assert statements.count(("INSERT", 1)) == 1 + 3, statements  # the refused batch, then each row alone
    with melodee_db.connect() as conn:
        got = dict(conn.execute(sa.text("SELECT staging_path, checksum FROM staging_items WHERE staging_path IN "
                                        "('/staging/A/Artist/1', '/staging/A/Artist/400')")).all())
    assert got == {"/staging/A/Artist/1": "newer", "/staging/A/Artist/400": "c400"}
    assert (result.inserted, result.updated) == (301, 2)


def test_reconcile_adds_audio_copied_into_an_album_by_hand_and_reports_the_rest(five_albums, engine, capsys):
    """Audio in an album directory that its sidecar does not list joins the sidecar (with a
    warning for the reviewer) when it reads as valid audio and has settled; a file that is not
    audio, or is still changing, is reported and left alone until it is."""
    libs, staging = five_albums, five_albums["staging"]
    album_dir = staging / LZ
    make_track(str(album_dir / "03 - Bonus.flac"), Tags("Led Zeppelin", "IV", "Bonus", None, 3, None, 1971), seed=40)
    (album_dir / "04 - Notes.mp3").write_bytes(b"not audio at all" * 64)
    age(album_dir)
    make_track(str(album_dir / "05 - Copying.flac"), Tags("Led Zeppelin", "IV", "Copying", None, 5, None, 1971), seed=41)
    before = rows(engine), tree(staging)

    assert main(["reconcile", "--dry-run"]) == 0
    assert "  audio the sidecars did not list: 1 would be added, 2 left alone" in capsys.readouterr().out
    assert (rows(engine), tree(staging)) == before

    assert main(["reconcile"]) == 0
    out = capsys.readouterr().out
    assert "  audio the sidecars did not list: 1 added, 2 left alone" in out
    assert "04 - Notes.mp3: corrupt or not audio" in out and "05 - Copying.flac: changed in the last minute" in out
    doc = json.loads(sidecar_path(libs, LZ).read_bytes())
    assert [t["name"] for t in doc["tracks"]] == ["Black Dog", "Rock and Roll", "Bonus"]
    bonus = doc["tracks"][2]
    assert bonus["file_path"] == f"{LZ}/03 - Bonus.flac" and bonus["track_number"] == 3
    assert bonus["checksum"] == hashlib.sha256((album_dir / "03 - Bonus.flac").read_bytes()).hexdigest()
    assert f"{LZ}/03 - Bonus.flac: found in the album directory, not in its sidecar; added by reconcile" in doc["validation"]["warnings"]
    assert rows(engine)[str(album_dir)][1::2] == (3, checksum(sidecar_path(libs, LZ)))

    age(album_dir)  # the copy finished long ago
    assert main(["reconcile"]) == 0
    assert "  audio the sidecars did not list: 1 added, 1 left alone" in capsys.readouterr().out
    assert len(json.loads(sidecar_path(libs, LZ).read_bytes())["tracks"]) == 4


def test_reconcile_adopts_nothing_that_would_break_the_album(five_albums, engine, capsys):
    """Left alone, each with its reason, and only it: a name that is not UTF-8, a name that
    differs from a listed track's only in letter case, a copy of a listed track's bytes, a
    symlink; the one good file beside them is still added."""
    libs = five_albums
    album_dir = libs["staging"] / LZ
    black_dog = album_dir / "01 - Black Dog.flac"
    shutil.copyfile(black_dog, album_dir / "01 - black dog.flac")
    shutil.copyfile(black_dog, album_dir / "Black Dog (copy).flac")
    make_track(str(album_dir / "bad.flac"), Tags("Led Zeppelin", "IV", "Undecodable", None, 7, None, 1971), seed=42)
    os.rename(album_dir / "bad.flac", os.fsencode(album_dir) + b"/07 - \xff.flac")
    os.symlink(black_dog, album_dir / "08 - Link.flac")
    make_track(str(album_dir / "09 - Good.flac"), Tags("Led Zeppelin", "IV", "Good", None, 9, None, 1971), seed=43)
    age(album_dir)
    assert main(["reconcile"]) == 0
    out = capsys.readouterr().out
    assert "  audio the sidecars did not list: 1 added, 4 left alone" in out
    for reason in ("01 - black dog.flac: differs from the listed 01 - Black Dog.flac only in letter case",
                   "Black Dog (copy).flac: the same bytes as a track the sidecar lists already",
                   "07 - \\xff.flac: its name is not valid UTF-8", "08 - Link.flac: not a regular file"):
        assert reason in out
    doc = json.loads(sidecar_path(libs, LZ).read_bytes())
    assert [t["name"] for t in doc["tracks"]] == ["Black Dog", "Rock and Roll", "Good"]
    assert rows(engine)[str(album_dir)][1] == 3


def test_staging_list_marks_a_row_whose_album_is_gone(five_albums, engine, capsys):
    from melodee_pipeline.cli import main

    gone = five_albums["staging"] / "BAN" / "Band" / "2001 - Record"
    shutil.rmtree(gone)
    assert main(["staging", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line for line in lines if line.endswith("  (gone; see reconcile)")]
    assert len(lines) == 6 and len(marked) == 1 and str(gone) in marked[0]
    for album_dir in [p.parent for p in five_albums["staging"].rglob("album.melodee.json")]:
        shutil.rmtree(album_dir)  # as an unmounted staging library looks
    assert main(["staging", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "note: none of the 5 albums awaiting review is in staging: is the staging library mounted?"
    assert len(lines) == 7 and not any(line.endswith("(gone; see reconcile)") for line in lines)
