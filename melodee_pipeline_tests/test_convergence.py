"""Recovery paths a user takes: re-execution from a failed op under the lock, a staging disk that
fills up mid-run, symlinks planted at destinations, and the sensor's view of a re-executed run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from melodee_pipeline.lock import staging_lock
from melodee_pipeline.samples import Tags, make_track
from melodee_pipeline_tests.conftest import age, album, full_disk_setup
from melodee_pipeline_tests.invariants import file_hashes

REPO = Path(__file__).resolve().parents[1]
SIDECAR = "album.melodee.json"


def staging_scan_job():
    """Module-level, so Dagster can reconstruct the job for execute_job and re-execution."""
    from melodee_pipeline.definitions import defs

    return defs.get_job_def("staging_scan_job")


@pytest.fixture
def instance(env, db_url, tmp_path, monkeypatch):
    """A Postgres-backed instance from the project's dagster.yaml, as `dagster dev` uses."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", db_url)
    with dg.DagsterInstance.get() as inst:
        yield inst


def rows(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT staging_path, track_count FROM staging_items")).all())


def sidecars_match_disk(staging: Path) -> list[str]:
    """Every sidecar lists exactly the files beside it; no album directory without a sidecar."""
    problems = []
    for dirpath, dirs, names in os.walk(staging):
        dirs[:] = [d for d in dirs if not d.startswith(".melodee-")]
        if SIDECAR in names:
            listed = sorted(os.path.basename(t["file_path"]) for t in json.loads((Path(dirpath) / SIDECAR).read_text())["tracks"])
            present = sorted(n for n in names if n != SIDECAR)
            if listed != present:
                problems.append(f"{dirpath}: lists {listed}, holds {present}")
        elif names:
            problems.append(f"{dirpath}: files without a sidecar: {names}")
    return problems


def test_reexecution_from_stage_albums_takes_the_lock_and_finishes(instance, libs, engine):
    album(libs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".mp3")
    blocker = libs["staging"] / "BAN" / "Band" / "2001 - Record"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the album directory should be")  # the only album fails: the run fails
    first = dg.execute_job(dg.reconstructable(staging_scan_job), instance=instance)
    assert not first.success
    failed = [e.step_key for e in first.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed == ["stage_albums"]
    blocker.unlink()

    options = dg.ReexecutionOptions.from_failure(first.run_id, instance)
    with staging_lock(engine, "someone-else"):
        refused = dg.execute_job(dg.reconstructable(staging_scan_job), instance=instance, reexecution_options=options)
    assert not refused.success
    errors = [str(e.event_specific_data.error) for e in refused.all_events if e.is_failure and e.event_specific_data]
    assert any("another staging run is in progress (run someone-else)" in m for m in errors), errors
    assert not blocker.exists() and len(list(libs["inbound"].rglob("*.mp3"))) == 2  # nothing moved

    again = dg.execute_job(dg.reconstructable(staging_scan_job), instance=instance, reexecution_options=options)
    assert again.success
    executed = [e.step_key for e in again.all_events if e.event_type_value == "STEP_SUCCESS"]
    assert executed == ["stage_albums", "record_staging_items"]  # from the failed op, on the stored scan
    assert sorted(os.listdir(blocker)) == ["01 - One.mp3", "02 - Two.mp3", SIDECAR]
    assert sidecars_match_disk(libs["staging"]) == [] and rows(engine) == {str(blocker): 2}
    # Re-executing the finished steps again changes nothing and fails nothing.
    before = (file_hashes(libs["staging"]), rows(engine))
    options = dg.ReexecutionOptions(parent_run_id=again.run_id, step_selection=["stage_albums", "record_staging_items"])
    rerun = dg.execute_job(dg.reconstructable(staging_scan_job), instance=instance, reexecution_options=options)
    assert rerun.success and (file_hashes(libs["staging"]), rows(engine)) == before
    assert json.loads((blocker / SIDECAR).read_text())["validation"]["errors"] == []


def test_sensor_never_fails_a_reexecuted_run_that_holds_the_lock(libs, engine, db_url):
    from datetime import datetime, timedelta, timezone

    from melodee_pipeline.orchestration.sensor import in_progress

    instance = dg.DagsterInstance.ephemeral()
    parent = instance.add_run(dg.DagsterRun(job_name="staging_scan_job", run_id="parent-run", status=dg.DagsterRunStatus.FAILURE))
    child = instance.add_run(dg.DagsterRun(job_name="staging_scan_job", run_id="child-run", status=dg.DagsterRunStatus.STARTED,
                                           parent_run_id=parent.run_id, root_run_id=parent.run_id))
    later = datetime.now(timezone.utc) + timedelta(minutes=10)  # long past the grace period
    with engine.connect() as conn, staging_lock(engine, child.run_id):
        from melodee_pipeline.lock import holder

        reason = in_progress(instance, holder(conn), later)
    assert reason == "run child-run of staging_scan_job is still STARTED"
    assert instance.get_run_by_id("child-run").status == dg.DagsterRunStatus.STARTED


# --- a staging filesystem that fills up -------------------------------------------------------


def process_scan(inbound: Path, staging: Path, scans: Path, env: dict, pause: str | None = None,
                 on_pause=None) -> subprocess.CompletedProcess:
    base = [sys.executable, "-m", "melodee_pipeline.cli"]
    scan = subprocess.run([*base, "scan-inbound", "--path", str(inbound), "--output", str(scans), "--min-file-age", "0",
                           "--workers", "1"], env=env, capture_output=True, text=True, check=True)
    run_env = dict(env)
    marker = scans / "paused"
    if pause:
        run_env.update(MELODEE_PAUSE_AT=pause, MELODEE_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([*base, "process-scan", "--scan", scan.stdout.strip(), "--staging", str(staging), "--workers", "1"],
                            env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hits = 0
    while pause and proc.poll() is None:
        if marker.exists():
            hits += 1
            on_pause(hits)
            marker.unlink()
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_full_staging_filesystem_fails_the_run_naming_the_space_and_leaves_no_phantom(libs, small_fs, env, engine):
    full_disk_setup(libs, 10)
    before = file_hashes(libs["inbound"])
    staging = small_fs
    run = process_scan(libs["inbound"], staging, libs["scandbs"], dict(os.environ))
    assert run.returncode == 1, run.stderr
    message = run.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: run failed: staging filesystem {staging} is full:") and "MiB" in message and "free" in message
    assert file_hashes(libs["inbound"], staging) == before  # nothing lost, nothing doubled
    assert sidecars_match_disk(staging) == []
    staged = {str(Path(d)) for d, _, names in os.walk(staging) if SIDECAR in names}
    assert 0 < len(staged) < 10 and not (staging / ".melodee-tmp").exists()
    # The failed run wrote no row (the journal keeps its staged albums pending). Once the admin
    # gives staging more room, the next run stages the rest and records every album.
    assert rows(engine) == {}
    subprocess.run(["mount", "-o", "remount,size=8m", str(staging)], check=True)
    again = process_scan(libs["inbound"], staging, libs["scandbs"], dict(os.environ))
    assert again.returncode == 0, again.stderr
    assert file_hashes(staging) == before and sidecars_match_disk(staging) == [] and len(rows(engine)) == 10


def test_disk_filling_mid_album_rolls_that_album_back(libs, small_fs, env, engine):
    full_disk_setup(libs, 3)
    for i in range(3):  # a second track per album, so the disk can fill between two moves of one album
        make_track(str(libs["inbound"] / f"Artist {i} - Album {i}" / "02 Two.wav"),
                   Tags(f"Artist {i}", f"Album {i}", "Two", None, 2, None, 2000 + i), seed=50 + i, seconds=2)
    age(libs["inbound"])
    before = file_hashes(libs["inbound"])
    filler = small_fs / "filler"

    def fill(hit: int) -> None:
        if hit == 1:  # after the first file of the first album landed: someone else fills the disk
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass

    run = process_scan(libs["inbound"], small_fs, libs["scandbs"], dict(os.environ), pause="after_place", on_pause=fill)
    assert run.returncode == 1, run.stderr
    assert "is full while staging" in run.stderr
    filler.unlink()
    assert file_hashes(libs["inbound"], small_fs) == before
    assert sidecars_match_disk(small_fs) == [] and rows(engine) == {}
    assert not [d for d, _, names in os.walk(small_fs) if names and ".melodee-" not in d]  # the album rolled back whole
    # With space again, the next run stages everything.
    again = process_scan(libs["inbound"], small_fs, libs["scandbs"], dict(os.environ))
    assert again.returncode == 0, again.stderr
    assert file_hashes(small_fs) == before and sidecars_match_disk(small_fs) == [] and len(rows(engine)) == 3


# --- symlinks planted at a destination -----------------------------------------------------------


@pytest.mark.parametrize("target", ["inbound file", "outside file", "dangling"])
def test_symlink_at_a_destination_is_never_identical_and_never_unlinks_a_source(target, libs, env, engine, tmp_path):
    (source,) = album(libs["inbound"], "Band", "Record", 2001, ["One"], ".mp3")
    age(libs["inbound"])
    original = source.read_bytes()
    outside = tmp_path / "outside.mp3"
    outside.write_bytes(original)  # same bytes: a symlink to it must still not count as staged
    album_dir = libs["staging"] / "BAN" / "Band" / "2001 - Record"
    album_dir.mkdir(parents=True)
    link = album_dir / "01 - One.mp3"
    os.symlink({"inbound file": source, "outside file": outside, "dangling": tmp_path / "nowhere.mp3"}[target], link)

    run = process_scan(libs["inbound"], libs["staging"], libs["scandbs"], dict(os.environ))
    assert run.returncode == 0, run.stderr
    assert os.path.islink(link)  # untouched
    staged = album_dir / "01 - One (2).mp3"
    assert staged.read_bytes() == original and not os.path.islink(staged)
    assert outside.read_bytes() == original
    doc = json.loads((album_dir / SIDECAR).read_text())
    assert [t["file_path"] for t in doc["tracks"]] == ["BAN/Band/2001 - Record/01 - One (2).mp3"]
    assert any("symlink or other non-regular file already had its name" in w for w in doc["validation"]["warnings"])


def test_a_programming_error_fails_the_step_while_a_filesystem_error_fails_only_its_album(dirs, monkeypatch):
    from melodee_pipeline.grouping import group_albums
    from melodee_pipeline.scan.scanner import scan_inbound
    from melodee_pipeline.staging import protocol
    from melodee_pipeline.staging.stage import stage_albums

    album(dirs["inbound"], "Good", "Fine", 2001, ["A"], ".mp3", seed=1)
    album(dirs["inbound"], "Bad", "Broken", 2002, ["B"], ".mp3", seed=2)
    scan = scan_inbound(str(dirs["inbound"]), str(dirs["scans"]), workers=1, min_file_age_seconds=0)
    group_albums(scan.scan_db)
    real_entry = protocol.track_entry

    def entry(rel_dir, f, name):
        if "Broken" in rel_dir:
            raise PermissionError(13, "Permission denied")  # what the filesystem says: that album's failure
        return real_entry(rel_dir, f, name)

    monkeypatch.setattr(protocol, "track_entry", entry)
    result = stage_albums(scan.scan_db, str(dirs["staging"]))
    assert (result.albums_success, result.albums_failed) == (1, 1)

    def bug(rel_dir, f, name):
        raise KeyError("a bug")  # not an album's problem: the step must fail, loudly

    monkeypatch.setattr(protocol, "track_entry", bug)
    with pytest.raises(KeyError):
        stage_albums(scan.scan_db, str(dirs["staging"]))
    assert len(list(dirs["inbound"].rglob("*.mp3"))) == 1  # the failed album's file is still there
