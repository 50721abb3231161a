"""staging_scan_sensor: turns the cron schedule stored in Postgres into runs (docs/design.md, "The sensor").

The cursor is the time of the previous evaluation. A run is requested when a cron tick falls in
(cursor, now]; only the latest such tick counts, so a daemon that was down for hours catches up
with one run, and ticks that pass while the scan is disabled (the cursor still advances) with none.
An evaluation that could not reach the database leaves the cursor where it was, so a short outage
at the top of the hour does not cost that hour's run.
"""


from datetime import datetime, timezone
from typing import Optional

import dagster as dg
from croniter import croniter

from melodee_pipeline.errors import DatabaseUnavailable, UserError
from melodee_pipeline.libraries import resolve_libraries
from melodee_pipeline.lock import holder
from melodee_pipeline.orchestration.job import CONCURRENCY_TAG, JOB_NAME, staging_scan_job
from melodee_pipeline.orchestration.resources import MelodeeDatabase
from melodee_pipeline.settings import StagingScanSettings, load_settings

STALE_AFTER = 120  # seconds a STARTED run may go without holding the staging lock
ACTIVE = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
]


def latest_due_tick(schedule: str, after: datetime, now: datetime) -> Optional[datetime]:
    """The last cron tick in (after, now], in UTC, or None."""
    tick = croniter(schedule, now).get_prev(datetime)
    return tick if tick > after else None


def run_config(settings: StagingScanSettings) -> dict:
    return {"ops": {"scan_inbound": {"config": {
        "dry_run": settings.dry_run, "workers": settings.workers,
        "rate_limit": settings.rate_limit, "scan_db_data_path": settings.scan_db_data_path,
    }}}}


def evaluate(context: dg.SensorEvaluationContext, database: MelodeeDatabase, now: datetime):
    try:
        with database.engine().connect() as conn:
            settings = load_settings(conn)
            if not settings.enabled:
                return dg.SkipReason("staging_scan.enabled is false")
            libs = resolve_libraries(conn)
            lock_holder = holder(conn)
    except DatabaseUnavailable:
        raise
    except UserError as exc:
        return dg.SkipReason(str(exc))
    if libs.locked:
        return dg.SkipReason(libs.locked_reason)
    if context.cursor is None:
        return dg.SkipReason(f"sensor started; ticks of '{settings.schedule}' count from {now:%Y-%m-%d %H:%M:%S} UTC")
    tick = latest_due_tick(settings.schedule, datetime.fromisoformat(context.cursor), now)
    if tick is None:
        upcoming = croniter(settings.schedule, now).get_next(datetime)
        return dg.SkipReason(f"no tick of '{settings.schedule}' due; next at {upcoming:%Y-%m-%d %H:%M} UTC")
    busy = in_progress(context.instance, lock_holder, now)
    if busy:
        return dg.SkipReason(f"{busy}; no run for tick {tick:%Y-%m-%d %H:%M} UTC")
    return dg.RunRequest(
        run_key=tick.isoformat(),
        run_config=run_config(settings),
        tags={**CONCURRENCY_TAG, "melodee/tick": tick.isoformat()},
    )


def in_progress(instance: dg.DagsterInstance, lock_holder: Optional[str], now: datetime) -> Optional[str]:
    """Why a new run must wait, or None.

    A STARTED run holds the staging lock from its first op to its last. One that has not held it
    for STALE_AFTER seconds lost its worker (killed, machine rebooted): the default run launcher
    cannot tell, so without this check the sensor would wait on it forever. It is marked failed.
    """
    for record in instance.get_run_records(dg.RunsFilter(job_name=JOB_NAME, statuses=ACTIVE), limit=10):
        run = record.dagster_run
        started = record.start_time or record.create_timestamp.timestamp()
        if run.status == dg.DagsterRunStatus.STARTED and lock_holder != run.run_id and now.timestamp() - started > STALE_AFTER:
            instance.report_run_failed(run, f"run worker is gone: run {run.run_id} holds no staging lock; marked failed by {staging_scan_sensor.name}")
            continue
        return f"run {run.run_id} of {JOB_NAME} is still {run.status.value}"
    if lock_holder:
        return f"another staging run is in progress (run {lock_holder})"
    return None


@dg.sensor(
    job=staging_scan_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches staging_scan_job on the cron schedule in the staging_scan.* settings.",
)
def staging_scan_sensor(context: dg.SensorEvaluationContext, database: MelodeeDatabase):
    now = datetime.now(timezone.utc)
    try:
        result = evaluate(context, database, now)
    except DatabaseUnavailable as exc:
        return dg.SkipReason(f"{exc}; ticks due meanwhile are kept for the next evaluation")
    context.update_cursor(now.isoformat())
    return result
