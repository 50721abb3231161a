"""The Dagster code location: `defs` (workspace.yaml loads this module)."""

import dagster as dg

from melodee_pipeline.orchestration.assets import ASSETS, staging_converged
from melodee_pipeline.orchestration.job import staging_scan_job
from melodee_pipeline.orchestration.reconcile import reconcile_staging_job, reconcile_staging_schedule
from melodee_pipeline.orchestration.resources import MelodeeDatabase, StagingRunLock
from melodee_pipeline.orchestration.sensor import staging_scan_sensor
from melodee_pipeline.orchestration.undo_job import undo_staging_job

_database = MelodeeDatabase()

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=[staging_converged],
    jobs=[staging_scan_job, undo_staging_job, reconcile_staging_job],
    sensors=[staging_scan_sensor],
    schedules=[reconcile_staging_schedule],
    resources={
        "database": _database,
        "staging_lock": StagingRunLock(database=_database),
        # Outputs on disk under DAGSTER_HOME (not in memory), so any run, a CLI one included,
        # can be re-executed from a failed op in the UI.
        "io_manager": dg.FilesystemIOManager(),
    },
)
