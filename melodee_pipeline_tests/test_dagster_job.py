"""staging_scan_job through Dagster: real runs, dry runs, run config, failures, the lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from melodee_pipeline.definitions import defs
from melodee_pipeline.lock import staging_lock
from melodee_pipeline_tests.conftest import age, album, snapshot, tree

REPO = Path(__file__).resolve().parents[1]


def run(config: dict | None = None, instance=None):
    job = defs.get_job_def("staging_scan_job")
    instance = instance or dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(
        run_config={"ops": {"scan_inbound": {"config": config or {}}}}, instance=instance, raise_on_error=False,
    )
    result.log_messages = [e.user_message for e in instance.all_logs(result.run_id)]
    return result


def metadata(result, step: str) -> dict:
    for e in result.all_events:
        if e.step_key == step and e.is_successful_output:
            return {k: getattr(v, "records", None) or v.value for k, v in e.event_specific_data.metadata.items()}
    raise AssertionError(f"no output from {step}")


@pytest.fixture
def inbound(env, libs):
    album(libs["inbound"], "Led Zeppelin", "IV", 1971, ["Black Dog", "Rock and Roll"], ".flac")
    album(libs["inbound"], "AC/DC", "Back in Black", 1980, ["Hells Bells"], ".ogg", seed=5)
    (libs["inbound"] / "broken.mp3").write_bytes(b"\xff\xfb not really mp3" * 10)
    age(libs["inbound"])
    return libs


def test_definitions_validate_through_the_dagster_cli(env, tmp_path):
    # As CI would: DAGSTER_HOME with the repo's dagster.yaml, storage in Postgres.
    (tmp_path / "dh").mkdir()
    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dh" / "dagster.yaml")
    cli_env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "DAGSTER_PG_URL": env["MELODEE_DATABASE_URL"]}
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
                          cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "staging_scan_job" in [j.name for j in defs.resolve_all_job_defs()]


def test_real_run_stages_records_and_reports(inbound, engine):
    result = run()
    assert result.success
    summary = result.output_for_node("record_staging_items")
    assert (summary["albums_total"], summary["albums_success"], summary["albums_failed"]) == (2, 2, 0)
    assert summary["inserted"] == 2 and summary["dry_run"] is False and summary["files_moved"] == 3
    assert Path(summary["scan_db"]).parent == inbound["scandbs"]
    assert sorted(os.listdir(inbound["inbound"])) == ["broken.mp3"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM staging_items WHERE status = 'pending_review'")).scalar() == 2
    scan_md = metadata(result, "scan_inbound")
    assert (scan_md["files"], scan_md["valid"], scan_md["invalid"]) == (4, 3, 1)
    table = metadata(result, "stage_albums")["albums"]
    assert sorted(r.data["staging_dir"] for r in table) == ["ACD/AC-DC/1980 - Back in Black", "LZ/Led Zeppelin/1971 - IV"]
    assert any(m.startswith("staging scan summary {") and '"albums_total": 2' in m for m in result.log_messages)
    mats = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    assert [m.event_specific_data.materialization.asset_key.path for m in mats] == [["staging_library"], ["staging_items"]]


def test_refused_files_are_one_log_event_and_a_metadata_table(inbound):
    assert run().success
    time.sleep(1.1)  # refusal times are whole seconds: the next scan starts in a later one
    second = run()  # broken.mp3 is left over, unchanged
    scan_md = metadata(second, "scan_inbound")
    assert (scan_md["invalid"], scan_md["refused_unchanged"]) == (1, 1)
    [row] = scan_md["refused"]
    assert row.data["path"] == str(inbound["inbound"] / "broken.mp3")
    assert row.data["reason"].startswith("corrupt or not audio") and row.data["since"].startswith("still refused, unchanged since ")
    [lines] = [m.splitlines() for m in second.log_messages if m.startswith("scan scan_")]
    assert lines[1:] == ["refused 1 file: corrupt or not audio (1); 1 of them unchanged since an earlier scan, not read again"]
    assert not [m for m in second.log_messages if "broken.mp3" in m]


def test_dry_run_from_run_config_changes_no_tree_and_no_table(inbound, engine):
    before = (tree(inbound["inbound"]), tree(inbound["staging"]))
    result = run({"dry_run": True})
    assert result.success
    assert (tree(inbound["inbound"]), tree(inbound["staging"])) == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM staging_items")).scalar() == 0
    plan = metadata(result, "stage_albums")["plan"]
    assert {r.data["status"] for r in plan} == {"planned"}
    assert result.output_for_node("record_staging_items")["dry_run"] is True
    assert not [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]


def test_dry_run_setting_is_used_when_run_config_is_silent(inbound, engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE settings SET value = 'yes' WHERE key = 'staging_scan.dry_run'"))
    before = tree(inbound["inbound"])
    assert run().output_for_node("record_staging_items")["dry_run"] is True
    assert tree(inbound["inbound"]) == before
    assert run({"dry_run": False}).output_for_node("record_staging_items")["files_moved"] == 3


def test_invalid_setting_or_run_config_fails_the_run_with_the_key_and_value(inbound, engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE settings SET value = '100' WHERE key = 'staging_scan.workers'"))
    result = run()
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "invalid setting staging_scan.workers = '100'" in str(failure.event_specific_data.error)
    result = run({"workers": 0, "rate_limit": 1})
    assert not result.success
    assert tree(inbound["inbound"])  # untouched


def test_missing_library_fails_before_touching_files(env, libs, engine):
    album(libs["inbound"], "A", "B", 2000, ["C"])
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM libraries WHERE type = 'staging'"))
    before = snapshot(libs["inbound"])
    result = run()
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no staging library configured" in str(failure.event_specific_data.error)
    assert snapshot(libs["inbound"]) == before and not list(libs["scandbs"].iterdir())


def test_locked_library_ends_the_run_without_work(inbound, engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE libraries SET is_locked = true WHERE type = 'inbound'"))
    before = tree(inbound["inbound"])
    result = run()
    assert result.success
    assert [e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"] == \
        ["group_albums", "stage_albums", "record_staging_items"]
    assert any("is locked; nothing to do" in m for m in result.log_messages)
    assert tree(inbound["inbound"]) == before


def test_second_run_while_one_holds_the_lock_ends_at_once(inbound, engine):
    before = tree(inbound["inbound"])
    with staging_lock(engine, "first-run-id"):
        result = run()
    assert not result.success
    errors = [str(e.event_specific_data.error) for e in result.all_events if e.is_failure and e.event_specific_data]
    assert any("another staging run is in progress (run first-run-id)" in m for m in errors), errors
    assert tree(inbound["inbound"]) == before and not list(inbound["scandbs"].iterdir())
    assert run().success  # released


def test_run_on_postgres_backed_instance_from_dagster_yaml(inbound, pg_server_url, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    dagster_db = sa.engine.make_url(os.environ["MELODEE_DATABASE_URL"])  # the test's own database
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_db.render_as_string(hide_password=False))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = run(instance=instance)
        assert result.success
        stored = instance.get_run_by_id(result.run_id)
        assert stored.status == dg.DagsterRunStatus.SUCCESS and stored.job_name == "staging_scan_job"
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {"key": "melodee/job", "value": "staging_scan_job", "limit": 1} in limits
    with sa.create_engine(dagster_db).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1


def test_cli_run_prints_summary_and_exits_1_on_failure(inbound, engine, capsys):
    from melodee_pipeline.cli import main

    assert main(["run", "--dry-run", "--workers", "2"]) == 0
    assert '"dry_run": true' in capsys.readouterr().out
    assert main(["run"]) == 0
    assert '"albums_success": 2' in capsys.readouterr().out
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM libraries WHERE type = 'inbound'"))
    assert main(["run"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "error: run failed: scan_inbound: no inbound library configured"
