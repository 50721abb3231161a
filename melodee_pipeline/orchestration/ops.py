"""The four ops of staging_scan_job: thin calls into `cycle.py`, plus logs and UI metadata.

Ops hand each other a `StagingRun` (the scan DB path and the run's settings, never lists of
files), so a run can be re-executed from a failed op. Every op requires the staging lock, so
Dagster takes it for any subset of steps, a re-execution included.
"""


import json
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import asdict, replace
from typing import Iterator, Optional

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from melodee_pipeline import convergence, cycle, faults
from melodee_pipeline.db.engine import database_error
from melodee_pipeline.errors import DatabaseUnavailable, UserError
from melodee_pipeline.grouping import group_albums as group_scan_db
from melodee_pipeline.orchestration import assets
from melodee_pipeline.orchestration.resources import MelodeeDatabase, StagingRunLock
from melodee_pipeline.scan import scandb
from melodee_pipeline.scan.scanner import scan_inbound as scan_tree
from melodee_pipeline.settings import PREFIX, SPECS
from melodee_pipeline.staging.stage import prepare_staging, stage_albums as stage_scan_db

ALBUM_TABLE_ROWS = 500
SENSOR_TICK_TAG = "melodee/tick"


def setting_field(name: str):
    """A run-config field bounded and described by its `staging_scan.*` setting (one source:
    `settings.SPECS`), so the Launchpad documents it and a run checks it before it starts work."""
    spec = SPECS[PREFIX + name]
    return Field(None, ge=spec.low, le=spec.high,
                 description=f"{spec.comment}. Unset: the {spec.key} setting (default {spec.default!r}).")


class ScanConfig(dg.Config):
    """Every field optional: a missing one means the `staging_scan.*` setting read at run start."""

    dry_run: Optional[bool] = setting_field("dry_run")
    workers: Optional[int] = setting_field("workers")
    rate_limit: Optional[int] = setting_field("rate_limit")
    scan_db_data_path: Optional[str] = setting_field("scan_db_data_path")


@contextmanager
def hard_failure(retry: bool = False) -> Iterator[None]:
    """User-facing errors fail the run with their own message, not a traceback. Only an
    unreachable database is worth a retry (`retry`: the op has a RetryPolicy)."""
    try:
        yield
    except DatabaseUnavailable as exc:
        raise dg.Failure(description=str(exc), allow_retries=retry) from exc
    except (UserError, OSError, sqlite3.Error) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    except sa.exc.DBAPIError as exc:  # the database went away mid-op, or a table is missing
        raise dg.Failure(description=str(database_error(None, exc)), allow_retries=retry) from exc


@dg.op(out=dg.Out(cycle.StagingRun, is_required=False), tags={"kind": "scan"})
def scan_inbound(context: dg.OpExecutionContext, config: ScanConfig, database: MelodeeDatabase, staging_lock: StagingRunLock):
    with hard_failure():
        with database.engine().connect() as conn:
            setup = cycle.setup_cycle(conn, config.model_dump())
        s, libs = setup.settings, setup.libraries
        if SENSOR_TICK_TAG in context.run.tags and not s.enabled:
            context.log.warning("staging_scan.enabled was set to false after the sensor queued this run; nothing to do")
            return
        if libs.locked:
            context.log.warning(f"{libs.locked_reason}; nothing to do")
            return
        if not s.dry_run:
            prepare_staging(libs.staging.path, context.log, s.scan_db_data_path)  # finish interrupted albums before inbound is read
        result = scan_tree(
            libs.inbound.path, s.scan_db_data_path, workers=s.workers,
            min_file_age_seconds=s.min_file_age_seconds, keep_scan_dbs=s.keep_scan_dbs, logger=context.log,
        )
    context.log_event(dg.AssetObservation(asset_key=assets.inbound_library.key, metadata={
        "path": dg.MetadataValue.path(libs.inbound.path), "scan_id": result.scan_id, "files": result.files,
        "valid": result.valid, "invalid": result.invalid, "skipped": result.skipped}))
    run = cycle.StagingRun(result.scan_id, result.scan_db, libs.inbound.path, libs.staging.path, s.dry_run, s.workers,
                           s.rate_limit, time.time() - result.seconds, result.files, result.skipped)
    yield dg.Output(
        run,
        metadata={
            "scan_id": result.scan_id, "scan_db": dg.MetadataValue.path(result.scan_db),
            "inbound_path": dg.MetadataValue.path(libs.inbound.path), "files": result.files,
            "valid": result.valid, "invalid": result.invalid, "skipped": result.skipped,
            "seconds": round(result.seconds, 2), "dry_run": s.dry_run, "workers": s.workers,
            "refused_unchanged": result.unchanged, "refused": _refused_table(result.scan_db),
        },
    )


REFUSED_TABLE_ROWS = 300


def _refused_table(scan_db: str) -> dg.TableMetadataValue:
    """The first refused files by path; `melodee-pipeline refusals --scan FILE` lists them all."""
    with closing(sqlite3.connect(scan_db)) as conn:
        rows = list(scandb.refused(conn, REFUSED_TABLE_ROWS))
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"path": p, "reason": r, "since": s}) for p, r, s in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in ("path", "reason", "since")]),
    )


@dg.op(tags={"kind": "group"})
def group_albums(context: dg.OpExecutionContext, run: cycle.StagingRun, staging_lock: StagingRunLock) -> cycle.StagingRun:
    with hard_failure():
        result = group_scan_db(run.scan_db)
    context.log.info(f"grouped {result.files} valid files into {result.albums} albums")
    context.add_output_metadata({"albums": result.albums, "files": result.files})
    return run


ALBUM_COLUMNS = [("artist", "string"), ("album", "string"), ("year", "int"), ("staging_dir", "string"),
                 ("status", "string"), ("tracks", "int"), ("moved", "int"), ("already_staged", "int"),
                 ("failed", "int"), ("error", "string"), ("warnings", "string")]


def _albums_table(scan_db: str, dry_run: bool) -> dg.TableMetadataValue:
    """Failed albums first, then the rest by staging path; at most ALBUM_TABLE_ROWS rows."""
    names = [c for c, _ in ALBUM_COLUMNS]
    with closing(sqlite3.connect(scan_db)) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(names)} FROM albums ORDER BY status NOT IN ('failed', 'partial', 'not_started'), staging_dir "
            f"LIMIT {ALBUM_TABLE_ROWS}"
        ).fetchall()
    columns = [("would_move" if dry_run and c == "moved" else c, t) for c, t in ALBUM_COLUMNS]
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: (v if v is not None else ("" if t == "string" else 0)) for (c, t), v in zip(columns, r)})
                 for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, t) for c, t in columns]),
    )


@dg.op(tags={"kind": "stage"})
def stage_albums(context: dg.OpExecutionContext, run: cycle.StagingRun, staging_lock: StagingRunLock) -> cycle.StagingRun:
    with hard_failure():
        result = stage_scan_db(run.scan_db, run.staging_path, workers=run.workers, rate_limit=run.rate_limit,
                               dry_run=run.dry_run, logger=context.log)
        cycle.check_stage_outcome(result)
    counts = {k: v for k, v in asdict(result).items() if k != "seconds"}
    if run.dry_run:
        counts["files_to_move"] = counts.pop("files_moved")
        del counts["albums_with_warnings"]  # a plan runs no album checks
    else:
        context.log_event(dg.AssetMaterialization(asset_key=assets.staging_library.key, metadata={
            **counts, "scan_id": run.scan_id, "path": dg.MetadataValue.path(run.staging_path)}))
    context.add_output_metadata({**counts, "seconds": round(result.seconds, 2),
                                 "plan" if run.dry_run else "albums": _albums_table(run.scan_db, run.dry_run)})
    return replace(run, stage=result)


PLANNED_ROWS = {"inserted": "would_insert", "updated": "would_update", "reopened": "would_reopen"}


@dg.op(tags={"kind": "record"}, retry_policy=dg.RetryPolicy(max_retries=2, delay=faults.retry_delay(5)))
def record_staging_items(context: dg.OpExecutionContext, run: cycle.StagingRun, database: MelodeeDatabase,
                         staging_lock: StagingRunLock) -> dict:
    with hard_failure(retry=True):
        result = cycle.record(database.engine(), run)
    for reason in result.unreadable[:20]:
        context.log.warning(f"not recorded: {reason}")
    if result.refused:
        context.log.warning(f"{len(result.refused)} row(s) refused by Postgres, each failing only its album: "
                            + "; ".join(result.refused[:20]))
    rows = {"inserted": result.inserted, "updated": result.updated, "reopened": result.reopened,
            "unchanged": result.unchanged, "deleted_kept": result.deleted_kept, "rows_refused": len(result.refused)}
    if run.dry_run:  # counted, not written: named like `files_to_move`
        rows = {PLANNED_ROWS.get(k, k): v for k, v in rows.items()}
        context.log.info(f"staging_items: would write {result.inserted} new and {result.updated} updated rows")
    else:
        context.log.info(f"staging_items: wrote {result.inserted} new and {result.updated} updated rows "
                         f"({result.reopened} reopened for review; {result.deleted_kept} deleted by the admin left deleted)")
        context.log_event(dg.AssetMaterialization(asset_key=assets.staging_items.key, metadata={
            **rows, "scan_id": run.scan_id, "scan_db": dg.MetadataValue.path(run.scan_db),
            "staging_path": dg.MetadataValue.path(run.staging_path)}))
        with hard_failure(retry=True):
            converged = convergence.check_run(database.engine(), run.scan_db, run.staging_path)
        for problem in converged.problems[:20]:
            context.log.error(f"{assets.CONVERGED}: {problem}")
        if converged.problems:
            context.log.error(f"{assets.CONVERGED}: {assets.REPAIR}")
        context.log_event(assets.evaluation(converged, run.scan_id))
    stage = run.stage
    summary = {
        "scan_id": run.scan_id, "inbound_path": run.inbound_path, "staging_path": run.staging_path,
        "scan_db": run.scan_db, "albums_total": stage.albums_total, "albums_success": stage.albums_success,
        "albums_failed": stage.albums_failed,
        **({} if run.dry_run else {"albums_with_warnings": stage.albums_with_warnings}),  # a plan runs no album checks
        "files_skipped": run.files_skipped,
        "duration": round(time.time() - run.started, 3), "dry_run": run.dry_run, "rate_limit": run.rate_limit,
    }
    context.log.info("staging scan summary " + json.dumps(summary))
    context.add_output_metadata({**rows, "summary": dg.MetadataValue.json(summary)})
    moved_key = "files_to_move" if run.dry_run else "files_moved"
    return {**summary, **rows, moved_key: stage.files_moved,
            **{k: getattr(stage, k) for k in ("already_staged", "renamed", "files_failed", "recovered", "inbound_kept")}}
