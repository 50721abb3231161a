"""undo_staging_job: return the files of one staging run to inbound (`melodee_pipeline/undo.py`)."""

from typing import Optional

import dagster as dg

from melodee_pipeline import cycle
from melodee_pipeline.orchestration.ops import hard_failure
from melodee_pipeline.orchestration.resources import MelodeeDatabase, StagingRunLock
from melodee_pipeline.scan.scandb import find_scan_db
from melodee_pipeline.undo import NOT_UNDONE, plan_lines, undo_scan


class UndoConfig(dg.Config):
    scan_id: str  # as in the sidecar, the row or the run summary; the `scan_` prefix is optional
    album: Optional[str] = None  # one album directory, relative to the staging root; default: all of the run
    dry_run: bool = False


@dg.op(tags={"kind": "undo"})
def undo_staging(context: dg.OpExecutionContext, config: UndoConfig, database: MelodeeDatabase,
                 staging_lock: StagingRunLock) -> dict:
    with hard_failure():
        engine = database.engine()
        with engine.connect() as conn:
            setup = cycle.setup_cycle(conn)
        scan_db = find_scan_db(setup.settings.scan_db_data_path, config.scan_id)
        result = undo_scan(engine, scan_db, setup.libraries.staging.path, album=config.album,
                           dry_run=config.dry_run, logger=context.log)
    for line in plan_lines(result):
        context.log.info(line)
    refused = [a for a in result.albums if a.status in NOT_UNDONE]
    summary = {"scan_id": result.scan_id, "dry_run": config.dry_run, "albums": len(result.albums),
               "files_returned": result.returned, "tracks_returned": result.tracks, "rows_rewritten": result.rows.updated, "rows_removed": result.rows.removed,
               "refused": len(refused)}
    metadata = {**summary, "albums_table": dg.MetadataValue.md(
        "\n".join(["| album | status | files | reason / problems |", "|---|---|---|---|"]
                  + [f"| {a.album_dir} | {a.status} | {a.returned} | {a.reason or '; '.join(a.problems)} |" for a in result.albums]))}
    if refused:  # the other albums are undone; the run fails so the refusals are seen
        raise dg.Failure(description="; ".join(f"{a.album_dir}: {a.reason}" for a in refused), metadata=metadata,
                         allow_retries=False)
    context.add_output_metadata(metadata)
    return summary


@dg.job(name="undo_staging_job", executor_def=dg.in_process_executor,
        description="Return the files one staging run moved (music, cover art, rip files) to their inbound paths.")
def undo_staging_job():
    undo_staging()
