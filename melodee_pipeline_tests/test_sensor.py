"""staging_scan_sensor through build_sensor_context, against settings in real Postgres."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_run_id

from melodee_pipeline.lock import staging_lock
from melodee_pipeline.orchestration.resources import MelodeeDatabase
from melodee_pipeline.orchestration.sensor import evaluate, staging_scan_sensor

# Queued runs must say where they come from; this is the code location as workspace.yaml loads it.
ORIGIN = RemoteJobOrigin(
    RemoteRepositoryOrigin(InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="melodee_pipeline.definitions")),
                           "__repository__"),
    "staging_scan_job",
)
NOW = datetime(2026, 11, 28, 12, 0, 30, tzinfo=timezone.utc)


def setting(engine, key: str, value: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE settings SET value = :v WHERE key = :k"), {"k": f"staging_scan.{key}", "v": value})


@pytest.fixture
def sensor_env(libs, engine, db_url):
    setting(engine, "enabled", "true")
    setting(engine, "schedule", "* * * * *")
    instance = dg.DagsterInstance.ephemeral()
    database = MelodeeDatabase(url=db_url)

    def tick(cursor: datetime | None, now: datetime = NOW):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor.isoformat() if cursor else None,
                                      resources={"database": database})
        return evaluate(ctx, database, now)

    return instance, database, tick


def test_due_tick_requests_one_run_with_settings_as_run_config(sensor_env, engine, libs):
    _, _, tick = sensor_env
    setting(engine, "workers", "3")
    setting(engine, "rate_limit", "5")
    request = tick(NOW - timedelta(seconds=31))
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == "2026-11-28T12:00:00+00:00"
    assert request.run_config == {"ops": {"scan_inbound": {"config": {
        "dry_run": False, "workers": 3, "rate_limit": 5, "scan_db_data_path": str(libs["scandbs"])}}}}
    assert request.tags["melodee/job"] == "staging_scan_job"


def test_no_tick_due_skips_and_says_when_next(sensor_env, engine):
    _, _, tick = sensor_env
    setting(engine, "schedule", "0 */1 * * *")
    skip = tick(NOW - timedelta(seconds=20))
    assert isinstance(skip, dg.SkipReason) and "next at 2026-11-28 13:00 UTC" in skip.skip_message


def test_missed_ticks_while_daemon_was_down_give_one_catch_up_run(sensor_env, engine):
    _, _, tick = sensor_env
    setting(engine, "schedule", "0 */1 * * *")
    request = tick(NOW - timedelta(hours=7))  # seven hourly ticks missed
    assert isinstance(request, dg.RunRequest) and request.run_key == "2026-11-28T12:00:00+00:00"


def test_disabled_skips_and_ticks_passed_while_disabled_produce_no_run(sensor_env, engine, db_url):
    instance, database, _ = sensor_env
    setting(engine, "enabled", "false")
    ctx = dg.build_sensor_context(instance=instance, cursor=(datetime.now(timezone.utc) - timedelta(hours=3)).isoformat(),
                                  resources={"database": database})
    skip = staging_scan_sensor(ctx)
    assert isinstance(skip, dg.SkipReason) and skip.skip_message == "staging_scan.enabled is false"
    cursor = datetime.fromisoformat(ctx.cursor)
    assert datetime.now(timezone.utc) - cursor < timedelta(seconds=5)  # advanced while disabled
    # Enabled again (no restart): the three hours passed while disabled are not caught up.
    setting(engine, "enabled", "true")
    setting(engine, "schedule", "0 0 1 1 *")
    ctx2 = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources={"database": database})
    assert isinstance(staging_scan_sensor(ctx2), dg.SkipReason)


@pytest.mark.parametrize("key,value", [("workers", "0"), ("schedule", "every hour"), ("enabled", "perhaps"),
                                       ("scan_db_data_path", "scans"), ("schedule", "0 0 31 2 *")])
def test_invalid_setting_skips_naming_key_and_value(sensor_env, engine, key, value):
    _, _, tick = sensor_env
    setting(engine, key, value)
    skip = tick(NOW - timedelta(minutes=5))
    assert isinstance(skip, dg.SkipReason)
    assert f"staging_scan.{key} = {value!r}" in skip.skip_message


def test_missing_or_locked_library_skips(sensor_env, engine):
    _, _, tick = sensor_env
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE libraries SET is_locked = true WHERE type = 'staging'"))
    skip = tick(NOW - timedelta(minutes=5))
    assert isinstance(skip, dg.SkipReason) and skip.skip_message == "staging library 'Staging' (id 2) is locked"
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM libraries WHERE type = 'inbound'"))
    assert tick(NOW - timedelta(minutes=5)).skip_message == "no inbound library configured"


def test_run_in_progress_skips_the_tick_naming_the_run(sensor_env, engine):
    instance, _, tick = sensor_env
    for status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED):
        run = instance.add_run(dg.DagsterRun(job_name="staging_scan_job", run_id=make_new_run_id(), status=status,
                                             remote_job_origin=ORIGIN))
        with staging_lock(engine, run.run_id):  # a live run holds the lock
            skip = tick(NOW - timedelta(minutes=1), now=datetime.now(timezone.utc) + timedelta(hours=1))
        assert isinstance(skip, dg.SkipReason)
        assert f"run {run.run_id} of staging_scan_job is still {status.value}; no run for tick" in skip.skip_message
        instance.report_run_failed(run)
    assert isinstance(tick(NOW - timedelta(minutes=1)), dg.RunRequest)


def test_lock_held_outside_dagster_skips_naming_the_holder(sensor_env, engine):
    _, _, tick = sensor_env
    with staging_lock(engine, "process-scan (pid 42)"):
        skip = tick(NOW - timedelta(minutes=1))
    assert skip.skip_message.startswith("another staging run is in progress (run process-scan (pid 42))")


def test_started_run_whose_worker_died_is_failed_and_no_longer_blocks(sensor_env):
    instance, _, tick = sensor_env
    run = instance.add_run(dg.DagsterRun(job_name="staging_scan_job", run_id=make_new_run_id(),
                                         status=dg.DagsterRunStatus.STARTED, remote_job_origin=ORIGIN))
    recent = tick(NOW - timedelta(minutes=1), now=datetime.now(timezone.utc))
    assert isinstance(recent, dg.SkipReason)  # just started: may not hold the lock yet
    request = tick(NOW - timedelta(minutes=1), now=datetime.now(timezone.utc) + timedelta(minutes=5))
    assert isinstance(request, dg.RunRequest)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


def test_first_evaluation_starts_counting_and_cursor_survives_a_restart(sensor_env, engine):
    instance, database, _ = sensor_env
    ctx = dg.build_sensor_context(instance=instance, resources={"database": database})
    first = staging_scan_sensor(ctx)
    assert isinstance(first, dg.SkipReason) and first.skip_message.startswith("sensor started")
    saved = ctx.cursor
    # A daemon restart hands the stored cursor to a fresh context: nothing due since it...
    setting(engine, "schedule", "0 0 1 1 *")
    restarted = dg.build_sensor_context(instance=instance, cursor=saved, resources={"database": database})
    assert staging_scan_sensor(restarted).skip_message.startswith("no tick of '0 0 1 1 *' due")
    # ...while an older stored cursor yields the tick that passed meanwhile.
    setting(engine, "schedule", "* * * * *")
    old = (datetime.fromisoformat(saved) - timedelta(minutes=3)).isoformat()
    restarted = dg.build_sensor_context(instance=instance, cursor=old, resources={"database": database})
    assert isinstance(staging_scan_sensor(restarted), dg.RunRequest)


def test_schedule_change_in_database_applies_on_next_tick(sensor_env, engine):
    _, _, tick = sensor_env
    setting(engine, "schedule", "30 * * * *")
    assert isinstance(tick(NOW - timedelta(minutes=5)), dg.SkipReason)
    setting(engine, "schedule", "*/2 * * * *")
    assert tick(NOW - timedelta(minutes=5)).run_key == "2026-11-28T12:00:00+00:00"


def test_unreachable_database_skips_with_masked_url_and_keeps_the_due_tick(sensor_env, db_url):
    instance, _, _ = sensor_env
    before = (datetime.now(timezone.utc) - timedelta(minutes=2)).isoformat()
    down = MelodeeDatabase(url="postgresql://u:secret@127.0.0.1:9/db")
    ctx = dg.build_sensor_context(instance=instance, cursor=before, resources={"database": down})
    skip = staging_scan_sensor(ctx)
    assert "cannot connect to database postgresql+psycopg2://u:***@127.0.0.1:9/db" in skip.skip_message
    assert "secret" not in skip.skip_message and ctx.cursor == before  # the tick due meanwhile is not lost
    ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources={"database": MelodeeDatabase(url=db_url)})
    assert isinstance(staging_scan_sensor(ctx), dg.RunRequest) and ctx.cursor != before
