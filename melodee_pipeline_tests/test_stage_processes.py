"""Staging in worker processes (a run of `PROCESS_MIN_ALBUMS` albums or more): the albums, their
rows and every byte come out as on threads, and a worker that dies or a staging filesystem that
fills up costs the run, never a file. (test_staging.py runs every staging test in both modes.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool

import pytest
import sqlalchemy as sa

from melodee_pipeline import faults
from melodee_pipeline.errors import RunFailed, StagingFull
from melodee_pipeline.grouping import group_albums
from melodee_pipeline.records import record_staging_items
from melodee_pipeline.samples import Tags, make_track, tag
from melodee_pipeline.scan.scanner import scan_inbound
from melodee_pipeline.parallel import process_pool
from melodee_pipeline.staging import stage, stager
from melodee_pipeline.staging.stage import stage_albums
from melodee_pipeline_tests.conftest import age, album, full_disk_setup
from melodee_pipeline_tests.invariants import converged, file_hashes



def many_albums(inbound, count: int) -> None:
    """`count` one-track albums of real audio: one encode, then a retagged copy per album."""
    template = inbound / "template.mp3"
    make_track(str(template), Tags("x", "y"), seconds=0.1)
    for i in range(count):
        path = inbound / f"Artist {i} - Album {i}" / "01 Only.mp3"
        path.parent.mkdir()
        shutil.copyfile(template, path)
        tag(str(path), Tags(f"Artist {i}", f"Album {i}", "Only", None, 1, None, 1990 + i % 30, "Rock"))
    template.unlink()
    age(inbound)


def stage_once(dirs, workers: int = 2, **options):
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    return stage_albums(scan.scan_db, str(dirs["staging"]), workers=workers, **options)


def test_a_big_run_through_the_cli_stages_in_worker_processes(env, libs, engine):
    """The real threshold, the real command: a run of PROCESS_MIN_ALBUMS albums stages them in
    processes (its log says so), and every album lands with its sidecar and its row."""
    count = stage.PROCESS_MIN_ALBUMS
    many_albums(libs["inbound"], count)
    before = file_hashes(libs["inbound"])
    run = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "run"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"staging {count} albums in 2 worker processes" in run.stderr
    summary = json.loads(run.stdout)
    assert summary["albums_success"] == count and summary["files_moved"] == count and summary["inserted"] == count
    assert file_hashes(libs["staging"]) == before and file_hashes(libs["inbound"]) == {}
    report = converged(before, file_hashes(), libs["inbound"], libs["staging"], engine)
    assert report.ok, report


def test_fewer_albums_a_dry_run_a_rate_limit_or_one_worker_stay_on_threads(dirs, monkeypatch):
    started = []
    monkeypatch.setattr(stage, "process_pool", lambda *a: started.append(a) or pytest.fail("no process pool expected"))
    monkeypatch.setattr(stage, "PROCESS_MIN_ALBUMS", 3)
    for i in range(2):
        album(dirs["inbound"], f"Artist {i}", "Album", 2000, ["One"])
    age(dirs["inbound"])
    assert stage_once(dirs).albums_success == 2
    monkeypatch.setattr(stage, "PROCESS_MIN_ALBUMS", 1)
    for i in (7, 8, 9):
        album(dirs["inbound"], f"Artist {i}", "Album", 2000, ["One"])
    age(dirs["inbound"])
    assert stage_once(dirs, dry_run=True).albums_total == 3
    assert stage_once(dirs, rate_limit=1000).albums_success == 3
    album(dirs["inbound"], "Artist 10", "Album", 2000, ["One"])
    age(dirs["inbound"])
    assert stage_once(dirs, workers=1).albums_success == 1
    assert started == []


def test_a_worker_killed_mid_batch_fails_the_run_and_the_next_run_finishes_every_album(dirs, melodee_db, monkeypatch):
    """SIGKILL a worker process inside its second group commit (after the first publish): the run
    fails with the reason, and the next run finishes what the dead worker had begun."""
    monkeypatch.setattr(stage, "PROCESS_MIN_ALBUMS", 1)
    monkeypatch.setattr(stage, "BATCH_ALBUMS", 2)
    for i in range(6):
        album(dirs["inbound"], f"Artist {i}", "Album", 2000 + i, ["One", "Two"], seed=10 * i)
    age(dirs["inbound"])
    before = file_hashes(dirs["inbound"])
    with monkeypatch.context() as mp:  # workers inherit this at fork; this process never publishes
        mp.setattr(faults, "_CRASH_NAME", "publish")
        mp.setattr(faults, "_CRASH_NTH", "2")
        with pytest.raises(RunFailed, match="a staging worker process died"):
            stage_once(dirs)
    assert file_hashes(dirs["inbound"], dirs["staging"]) == before  # nothing lost, nothing doubled
    result = stage_once(dirs)
    assert result.albums_failed == 0 and result.recovered > 0
    record_staging_items(melodee_db, str(dirs["staging"]))
    report = converged(before, file_hashes(), dirs["inbound"], dirs["staging"], melodee_db)
    assert report.ok, report
    with melodee_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM staging_items")).scalar() == 6


def test_a_full_staging_filesystem_in_one_worker_starts_no_further_batch(libs, small_fs, monkeypatch):
    """3 MiB of staging on another filesystem: a worker finds it full; the batches after it are not
    started, the run fails as full, and every byte is in inbound or in staging, once."""
    monkeypatch.setattr(stage, "PROCESS_MIN_ALBUMS", 1)
    monkeypatch.setattr(stage, "BATCH_ALBUMS", 1)
    full_disk_setup(libs, 10)
    before = file_hashes(libs["inbound"])
    scan = scan_inbound(str(libs["inbound"]), str(libs["scandbs"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    with pytest.raises(StagingFull, match=f"staging filesystem {small_fs} is full"):
        stage_albums(scan.scan_db, str(small_fs), workers=2)
    assert file_hashes(libs["inbound"], small_fs) == before
    staged = [d for d, _, names in os.walk(small_fs) if "album.melodee.json" in names]
    assert 0 < len(staged) < 10
    with sqlite3.connect(scan.scan_db) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM albums GROUP BY status").fetchall())
    assert statuses.get("not_started", 0) > 0 and sum(statuses.values()) == 10, statuses


def test_a_folder_holding_two_albums_goes_only_when_both_left(dirs, monkeypatch):
    """Emptied inbound folders are removed as outcomes arrive (while workers stage further
    batches): a folder whose albums land in two batches stays until the second has left it."""
    monkeypatch.setattr(stage, "PROCESS_MIN_ALBUMS", 1)
    monkeypatch.setattr(stage, "BATCH_ALBUMS", 1)
    for i in range(4):
        album(dirs["inbound"], f"Artist {i}", "Album", 2000, [f"One by {i}", f"Two by {i}"], folder="mixed/shared",
              seed=10 * i)
    album(dirs["inbound"], "Loner", "Album", 2000, ["One"], folder="mixed/own")
    age(dirs["inbound"])
    before = file_hashes(dirs["inbound"])
    assert stage_once(dirs).albums_success == 5
    assert list(dirs["inbound"].iterdir()) == [] and file_hashes(dirs["staging"]) == before


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise _Interrupted()  # what a Dagster op's handler does with SIGTERM: raise, not exit


def test_a_worker_sent_sigterm_dies_whatever_handler_its_parent_had():
    """The pool stops its other workers with SIGTERM when one dies. A forked worker inherits the
    parent's handlers; one that raised instead would take its next task and block writing a
    result nobody reads, the run waiting on it with the staging lock held."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        pool = process_pool(2, [])
        pid = pool.submit(os.getpid).result()
        busy = [pool.submit(time.sleep, 3) for _ in range(2)]
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)
        with pytest.raises(BrokenProcessPool):  # it died; a task of it did not merely fail
            for future in busy:
                future.result(timeout=30)
        pool.shutdown()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dies_on_artist_3(spec, albums):
    """stage_in_worker, except that the worker with Artist 3's batch dies, a moment after the
    other worker has staged the batches after it."""
    if any(a.artist == "Artist 3" for a in albums):
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_stage_in_worker(spec, albums)


_real_stage_in_worker = stager.stage_in_worker


def test_batches_other_workers_finished_are_recorded_when_one_worker_dies(dirs, monkeypatch):
    monkeypatch.setattr(stage, "PROCESS_MIN_ALBUMS", 1)
    monkeypatch.setattr(stage, "BATCH_ALBUMS", 1)
    monkeypatch.setattr(stager, "stage_in_worker", _dies_on_artist_3)
    for i in range(6):
        album(dirs["inbound"], f"Artist {i}", "Album", 2000, ["One"], seed=10 * i)
    age(dirs["inbound"])
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    with pytest.raises(RunFailed, match="a staging worker process died"):
        stage_albums(scan.scan_db, str(dirs["staging"]), workers=2)
    staged = {os.path.relpath(d, dirs["staging"]) for d, _, names in os.walk(dirs["staging"]) if "album.melodee.json" in names}
    with sqlite3.connect(scan.scan_db) as conn:
        recorded = {d for (d,) in conn.execute("SELECT staging_dir FROM albums WHERE status = 'staged'")}
    assert len(staged) == 5 and recorded == staged  # all but Artist 3's, each in the scan DB (undo --scan finds it)
