"""The four ops of staging_scan_job: thin calls into the library, plus logs and UI metadata.

Ops hand each other a small dict around the scan DB path (never lists of files), so a run can be
re-executed from a failed op.
"""


import json
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import asdict
from typing import Iterator, Optional

import dagster as dg
import sqlalchemy as sa

from melodee_pipeline.cycle import plan_cycle
from melodee_pipeline.errors import UserError
from melodee_pipeline.grouping import group_albums as group_scan
from melodee_pipeline.orchestration.resources import MelodeeDatabase, StagingRunLock
from melodee_pipeline.records import record_staging_items as record_rows
from melodee_pipeline.scan import scandb
from melodee_pipeline.scan.scanner import scan_inbound as scan_tree
from melodee_pipeline.staging.stage import stage_albums as stage_scan

ALBUM_TABLE_ROWS = 500


class ScanConfig(dg.Config):
    """Every field optional: a missing one means the `staging_scan.*` setting read at run start."""

    dry_run: Optional[bool] = None
    workers: Optional[int] = None
    rate_limit: Optional[int] = None
    scan_db_data_path: Optional[str] = None


@contextmanager
def hard_failure() -> Iterator[None]:
    """User-facing errors fail the run with their own message, not a traceback."""
    try:
        yield
    except (UserError, OSError, sqlite3.Error) as exc:
        raise dg.Failure(description=str(exc)) from exc
    except sa.exc.DBAPIError as exc:  # the database went away mid-op
        raise dg.Failure(description=f"database error: {str(exc.orig or exc).strip().splitlines()[0]}") from exc


@dg.op(out=dg.Out(dict, is_required=False), tags={"kind": "scan"})
def scan_inbound(context: dg.OpExecutionContext, config: ScanConfig, database: MelodeeDatabase, staging_lock: StagingRunLock):
    with hard_failure():
        with database.engine().connect() as conn:
            plan = plan_cycle(conn, config.model_dump())
        s, libs = plan.settings, plan.libraries
        if libs.locked:
            context.log.warning(f"{libs.locked.type} library {libs.locked.name!r} (id {libs.locked.id}) is locked; nothing to do")
            return
        result = scan_tree(
            libs.inbound.path, s.scan_db_data_path, workers=s.workers,
            min_file_age_seconds=s.min_file_age_seconds, keep_scan_dbs=s.keep_scan_dbs, logger=context.log,
        )
    yield dg.Output(
        {
            "scan_id": result.scan_id, "scan_db": result.scan_db, "inbound_path": libs.inbound.path,
            "staging_path": libs.staging.path, "dry_run": s.dry_run, "workers": s.workers,
            "rate_limit": s.rate_limit, "started": time.time() - result.seconds,
            "files": result.files, "files_skipped": result.skipped,
        },
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
def group_albums(context: dg.OpExecutionContext, scan: dict) -> dg.Output[dict]:
    with hard_failure():
        result = group_scan(scan["scan_db"])
    context.log.info(f"grouped {result.files} valid files into {result.albums} albums")
    return dg.Output(scan, metadata={"albums": result.albums, "files": result.files})


ALBUM_COLUMNS = [("artist", "string"), ("album", "string"), ("year", "int"), ("staging_dir", "string"),
                 ("status", "string"), ("tracks", "int"), ("moved", "int"), ("already_staged", "int"),
                 ("failed", "int"), ("error", "string")]


def _albums_table(scan_db: str) -> dg.TableMetadataValue:
    """Failed albums first, then the rest by staging path; at most ALBUM_TABLE_ROWS rows."""
    names = [c for c, _ in ALBUM_COLUMNS]
    with sqlite3.connect(scan_db) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(names)} FROM albums ORDER BY status NOT IN ('failed', 'partial'), staging_dir "
            f"LIMIT {ALBUM_TABLE_ROWS}"
        ).fetchall()
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: (v if v is not None else ("" if t == "string" else 0)) for (c, t), v in zip(ALBUM_COLUMNS, r)})
                 for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, t) for c, t in ALBUM_COLUMNS]),
    )


@dg.op(tags={"kind": "stage"})
def stage_albums(context: dg.OpExecutionContext, scan: dict) -> dg.Output[dict]:
    with hard_failure():
        result = stage_scan(
            scan["scan_db"], scan["staging_path"], workers=scan["workers"], rate_limit=scan["rate_limit"],
            dry_run=scan["dry_run"], logger=context.log,
        )
    counts = asdict(result)
    return dg.Output(
        {**scan, "stage": counts},
        metadata={**{k: v for k, v in counts.items() if k != "seconds"}, "seconds": round(result.seconds, 2),
                  "plan" if result.dry_run else "albums": _albums_table(scan["scan_db"])},
    )


@dg.op(tags={"kind": "record"})
def record_staging_items(context: dg.OpExecutionContext, scan: dict, database: MelodeeDatabase) -> dict:
    with hard_failure():
        result = record_rows(database.engine(), scan["staging_path"], dry_run=scan["dry_run"])
    for problem in result.unreadable:
        context.log.warning(f"sidecar not recorded: {problem}")
    rows = {"inserted": result.inserted, "updated": result.updated, "reopened": result.reopened, "unchanged": result.unchanged}
    verb = "would write" if scan["dry_run"] else "wrote"
    context.log.info(f"staging_items: {verb} {result.inserted} new and {result.updated} updated rows ({result.reopened} reopened for review)")
    if not scan["dry_run"]:
        context.log_event(dg.AssetMaterialization(asset_key="staging_items", metadata={**rows, "scan_id": scan["scan_id"]}))
    stage = scan["stage"]
    summary = {
        "scan_id": scan["scan_id"], "inbound_path": scan["inbound_path"], "staging_path": scan["staging_path"],
        "scan_db": scan["scan_db"], "albums_total": stage["albums_total"], "albums_success": stage["albums_success"],
        "albums_failed": stage["albums_failed"], "files_skipped": scan["files_skipped"],
        "duration": round(time.time() - scan["started"], 3), "dry_run": scan["dry_run"], "rate_limit": scan["rate_limit"],
    }
    context.log.info("staging scan summary " + json.dumps(summary))
    context.add_output_metadata({**rows, "summary": dg.MetadataValue.json(summary)})
    return {**summary, **rows, **{k: stage[k] for k in ("files_moved", "already_staged", "renamed", "files_failed")}}

