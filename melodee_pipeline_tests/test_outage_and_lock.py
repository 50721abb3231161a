"""A database that goes down mid-run, and one staging run at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import sqlalchemy as sa

from melodee_pipeline_tests.conftest import load_melodee_schema
from melodee_pipeline.cli import main
from melodee_pipeline.db.engine import psycopg2_url, stop_embedded
from melodee_pipeline.libraries import add_library
from melodee_pipeline.lock import staging_lock
from melodee_pipeline.settings import set_setting
from melodee_pipeline_tests.conftest import age, album, tree


def start_server(pgdata):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver.get_server(str(pgdata), cleanup_mode="stop")


def _run_with_outage_at_record(env: dict, marker, server_stop, server_back=None) -> subprocess.CompletedProcess:
    """`melodee-pipeline run`, paused after staging; Postgres goes down, maybe back after 2 s."""
    proc = subprocess.Popen([sys.executable, "-m", "melodee_pipeline.cli", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, hits = time.time() + 180, 0
        while proc.poll() is None:  # the pause point is hit again by each retry of the record step
            assert time.time() < deadline
            if marker.exists():
                hits += 1
                if hits == 1:
                    server_stop()
                marker.unlink()
                if hits == 1 and server_back:
                    time.sleep(2)
                    server_back()
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_database_outage_at_record_retries_then_fails_clearly_and_next_run_heals(tmp_path, db_url):
    home = tmp_path / "melodee-pg"  # the server that goes down, stopped however the test ends
    try:
        _outage_at_record(home, tmp_path, db_url)
    finally:
        stop_embedded(home)


def _melodee_with_libraries(engine: sa.Engine, tmp_path) -> dict:
    """Melodee's own tables and seeds on a server a test will stop, with libraries and settings."""
    dirs = {k: tmp_path / k for k in ("inbound", "staging", "scans")}
    for p in dirs.values():
        p.mkdir()
    load_melodee_schema(engine)
    with engine.begin() as conn:
        add_library(conn, "In", "inbound", str(dirs["inbound"]))
        add_library(conn, "St", "staging", str(dirs["staging"]))
        set_setting(conn, "staging_scan.scan_db_data_path", str(dirs["scans"]))
        set_setting(conn, "staging_scan.min_file_age_seconds", "0")
        set_setting(conn, "staging_scan.dry_run", "false")  # Melodee seeds true
    return dirs


def _outage_at_record(home, tmp_path, db_url):
    home.mkdir()
    pgdata = home / "pgdata"
    server = start_server(pgdata)
    url = psycopg2_url(server.get_uri())
    engine = sa.create_engine(url)
    dirs = _melodee_with_libraries(engine, tmp_path)
    engine.dispose()
    album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")
    marker = tmp_path / "paused"
    env = {**os.environ, "MELODEE_DATABASE_URL": url, "DAGSTER_HOME": str(tmp_path / "dh"), "DAGSTER_PG_URL": db_url,
           "MELODEE_HOME": str(tmp_path / "home"), "MELODEE_PAUSE_AT": "before_record", "MELODEE_PAUSE_FILE": str(marker)}
    servers = [server]

    def stop():
        servers[-1].cleanup()

    def restart():
        servers.append(start_server(pgdata))

    def row_count() -> int:
        eng = sa.create_engine(url)
        try:
            with eng.connect() as conn:
                return conn.execute(sa.text("SELECT count(*) FROM staging_items")).scalar()
        finally:
            eng.dispose()

    try:
        # A blip: Postgres is back within the record step's retry delay, and the run heals itself.
        blip = _run_with_outage_at_record(env, marker, stop, restart)
        assert blip.returncode == 0, blip.stderr[-3000:]
        assert '"inserted": 1' in blip.stdout and row_count() == 1
        # An outage: the retries run out; the run fails naming the database, nothing is lost.
        album(dirs["inbound"], "Other", "Disc", 2002, ["Three"], ".mp3", seed=9)
        down = _run_with_outage_at_record({**env, "MELODEE_RETRY_DELAY": "0.1"}, marker, stop)  # no real waits
        assert down.returncode == 1, down.stdout + down.stderr
        last = down.stderr.strip().splitlines()[-1]
        assert last.startswith("error: run failed: record_staging_items: cannot connect to database postgresql+psycopg2://postgres:***@"), down.stderr[-4000:]
        assert len(list(dirs["staging"].rglob("album.melodee.json"))) == 2  # staged, nothing lost
        # The next run records what the failed one could not (the journal kept it pending).
        restart()
        env.pop("MELODEE_PAUSE_AT")
        again = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "run"], env=env, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert '"inserted": 1' in again.stdout and '"albums_total": 0' in again.stdout and row_count() == 2
    finally:
        servers[-1].cleanup()


def test_process_scan_refuses_while_another_run_holds_the_lock(env, libs, engine, capsys):
    album(libs["inbound"], "Band", "Record", 2001, ["One"], ".mp3")
    age(libs["inbound"])
    assert main(["scan-inbound", "--path", str(libs["inbound"]), "--output", str(libs["scandbs"])]) == 0
    scan_db = capsys.readouterr().out.strip()
    before = (tree(libs["inbound"]), tree(libs["staging"]))
    with staging_lock(engine, "run-1234"):
        assert main(["process-scan", "--scan", scan_db, "--staging", str(libs["staging"])]) == 2
    assert capsys.readouterr().err == "error: another staging run is in progress (run run-1234)\n"
    assert (tree(libs["inbound"]), tree(libs["staging"])) == before
    assert main(["process-scan", "--scan", scan_db, "--staging", str(libs["staging"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "files 1, valid 1, invalid 0, skipped 0"
    assert out[1].startswith("albums 1, staged 1, failed 0") and "files moved 1, duplicates (already staged) 0" in out[1]
    assert out[2] == "staging_items: wrote 1 new, 0 updated (0 reopened), 0 unchanged, 0 deleted by the admin left deleted"


def test_two_real_runs_at_once_one_refused(env, libs, engine, tmp_path, db_url):
    """Two `melodee-pipeline run`s racing: exactly one stages, the other names the holder."""
    for i in range(4):
        album(libs["inbound"], f"Artist{i}", "Album", 2000, ["A", "B", "C"], ".wav", seed=i * 5)
    age(libs["inbound"])
    marker = tmp_path / "paused"
    run_env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "DAGSTER_PG_URL": db_url}
    first = subprocess.Popen([sys.executable, "-m", "melodee_pipeline.cli", "run"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**run_env, "MELODEE_PAUSE_AT": "after_place:1", "MELODEE_PAUSE_FILE": str(marker)})
    try:
        deadline = time.time() + 120
        while not marker.exists():  # the first run has moved one file and waits
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        assert list(libs["staging"].rglob("*.wav"))
        second = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "run"], env=run_env,
                                capture_output=True, text=True, timeout=300)
        marker.unlink()
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1].startswith("error: run failed: another staging run is in progress (run ")
    assert '"albums_success": 4' in out
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM staging_items")).scalar() == 4


def test_process_scan_without_a_database_is_still_one_at_a_time(dirs, monkeypatch, capsys):
    from melodee_pipeline.lock import staging_dir_lock

    monkeypatch.delenv("MELODEE_DATABASE_URL", raising=False)
    monkeypatch.setenv("MELODEE_HOME", str(dirs["scans"] / "nohome"))  # no database configured
    album(dirs["inbound"], "Band", "Record", 2001, ["One"], ".mp3")
    assert main(["scan-inbound", "--path", str(dirs["inbound"]), "--output", str(dirs["scans"]), "--min-file-age", "0"]) == 0
    scan_db = capsys.readouterr().out.strip()
    before = (tree(dirs["inbound"]), tree(dirs["staging"]))
    with staging_dir_lock(str(dirs["staging"])):  # another process-scan on the same staging tree
        assert main(["process-scan", "--scan", scan_db, "--staging", str(dirs["staging"])]) == 2
    assert capsys.readouterr().err == f"error: another staging run is in progress on {dirs['staging']}\n"
    assert (tree(dirs["inbound"]), tree(dirs["staging"])) == before
    assert main(["process-scan", "--scan", scan_db, "--staging", str(dirs["staging"])]) == 0
    assert len(list(dirs["staging"].rglob("*.mp3"))) == 1


def test_dagster_storage_going_down_mid_run_is_one_clear_line_and_the_next_run_heals(tmp_path):
    """The embedded default: Melodee's tables and Dagster's storage on one server, stopped while a
    run stages (`db stop` in another terminal). Dagster retries each event, then gives up."""
    home = tmp_path / "melodee-pg"
    home.mkdir()
    try:
        server = start_server(home / "pgdata")
        url = psycopg2_url(server.get_uri())
        server.psql('CREATE DATABASE "dagster";')
        dagster_url = psycopg2_url(server.get_uri("dagster"))
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        dirs = _melodee_with_libraries(engine, tmp_path)
        album(dirs["inbound"], "Band", "Record", 2001, ["One", "Two"], ".flac")
        marker = tmp_path / "paused"
        env = {**os.environ, "MELODEE_DATABASE_URL": url, "DAGSTER_HOME": str(tmp_path / "dh"), "DAGSTER_PG_URL": dagster_url,
               "MELODEE_HOME": str(tmp_path / "home"), "MELODEE_PAUSE_AT": "before_record", "MELODEE_PAUSE_FILE": str(marker)}
        down = _run_with_outage_at_record(env, marker, server.cleanup)
        assert down.returncode == 1, down.stderr[-3000:]
        errors = [line for line in down.stderr.splitlines() if line.startswith("error:")]
        assert errors == ["error: run failed: Dagster's storage database cannot be reached (too many retries for DB "
                          "connection), so the run cannot record its steps. What it staged stays staged; the next run "
                          "records the rows it owes."], down.stderr[-3000:]
        assert len(list(dirs["staging"].rglob("album.melodee.json"))) == 1 and not list(dirs["inbound"].rglob("*.flac"))
        start_server(home / "pgdata")
        env.pop("MELODEE_PAUSE_AT")
        again = subprocess.run([sys.executable, "-m", "melodee_pipeline.cli", "run"], env=env, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM staging_items")).scalar() == 1
    finally:
        stop_embedded(home)
