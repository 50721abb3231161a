"""reconcile_staging_job: `melodee_pipeline.reconcile` as a one-op job, launchable from the UI,
and `reconcile_staging_schedule` (weekly, off until the admin turns it on)."""

import dagster as dg
from pydantic import Field

from melodee_pipeline.libraries import resolve_libraries
from melodee_pipeline.orchestration.job import CONCURRENCY_TAG
from melodee_pipeline.orchestration.ops import hard_failure
from melodee_pipeline.orchestration.resources import MelodeeDatabase, StagingRunLock
from melodee_pipeline.reconcile import reconcile
from melodee_pipeline.settings import scan_db_dir

JOB_NAME = "reconcile_staging_job"
DRIFT_TABLE_ROWS = 300


class ReconcileConfig(dg.Config):
    dry_run: bool = Field(False, description="report only: change no file and no row (default: false)")
    restore_deleted: bool = Field(False, description="re-create rows the admin deleted while the album stays in "
                                                     "staging (default: false)")


def _drift_table(drift) -> dg.TableMetadataValue:
    columns = ("staging_path", "kind", "detail")
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"staging_path": d.staging_path, "kind": d.kind, "detail": d.detail})
                 for d in drift[:DRIFT_TABLE_ROWS]],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]),
    )


@dg.op(tags={"kind": "reconcile"})
def reconcile_staging(context: dg.OpExecutionContext, config: ReconcileConfig, database: MelodeeDatabase,
                      staging_lock: StagingRunLock) -> dict:
    with hard_failure():
        engine = database.engine()
        with engine.connect() as conn:
            libs, scans = resolve_libraries(conn), scan_db_dir(conn)
        if libs.locked:
            context.log.warning(f"{libs.locked_reason}; nothing to do")
            return {}
        result = reconcile(engine, libs.staging.path, dry_run=config.dry_run, restore_deleted=config.restore_deleted,
                           logger=context.log, scan_db_dir=scans)
    counts = result.counts()
    rows_written = result.rows_updated + result.rows_restored
    if rows_written and not config.dry_run:
        context.log_event(dg.AssetMaterialization(asset_key="staging_items", metadata={
            "updated": result.rows_updated, "restored": result.rows_restored, "reconcile": True}))
    context.add_output_metadata({**counts, "dry_run": config.dry_run, "staging_path": dg.MetadataValue.path(libs.staging.path),
                                 "drift": _drift_table(result.drift)})
    return {"staging_path": libs.staging.path, "dry_run": config.dry_run, **counts}


@dg.job(
    name=JOB_NAME,
    executor_def=dg.in_process_executor,  # the staging lock resource lives for the whole run
    # The same run-queue tag as staging_scan_job: a reconcile waits in the queue for a staging run
    # (and the other way round) instead of failing on the staging lock.
    tags=CONCURRENCY_TAG,
    description="Walk the staging tree, re-derive staging_items rows from every sidecar and repair drift "
                "(config: dry_run, restore_deleted).",
)
def reconcile_staging_job():
    reconcile_staging()


reconcile_staging_schedule = dg.ScheduleDefinition(
    name="reconcile_staging_schedule",
    job=reconcile_staging_job,
    cron_schedule="0 4 * * 0",  # Sundays 04:00 UTC
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly reconcile of the staging tree; off by default, turn it on in the UI.",
)
