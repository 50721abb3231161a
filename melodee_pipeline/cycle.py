"""One staging cycle: settings + libraries + run overrides, then scan -> group -> stage -> record.

The Dagster ops call these steps one per op; `process-scan` calls `stage_scan` (group, stage,
record over an existing scan DB). Both apply the same checks, the same lock and the same rule
for a failed run, so there is one orchestration with two front ends.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from melodee_pipeline.db.engine import reported
from melodee_pipeline.errors import RunFailed
from melodee_pipeline.grouping import GroupResult, group_albums
from melodee_pipeline.libraries import RunLibraries, resolve_libraries
from melodee_pipeline.records import RecordResult, count_planned_rows, record_staging_items
from melodee_pipeline.scan import scandb
from melodee_pipeline.settings import PREFIX, StagingScanSettings, check_scan_db_path, load_settings, parse_value
from melodee_pipeline.staging.stage import StageResult, stage_albums

OVERRIDABLE = ("dry_run", "workers", "rate_limit", "scan_db_data_path")


@dataclass(frozen=True)
class CycleSetup:
    settings: StagingScanSettings
    libraries: RunLibraries


@dataclass(frozen=True)
class StagingRun:
    """What one op hands the next: the scan DB and the run's settings, never lists of files."""

    scan_id: str
    scan_db: str
    inbound_path: str
    staging_path: str
    dry_run: bool
    workers: int
    rate_limit: int
    started: float  # time.time() when the scan began
    files: int = 0
    files_skipped: int = 0
    stage: StageResult | None = None


def apply_overrides(settings: StagingScanSettings, overrides: dict[str, Any], library_paths: list[str]) -> StagingScanSettings:
    """Run config wins over settings; each value is validated by the same rule as the setting."""
    given = {k: v for k, v in overrides.items() if k in OVERRIDABLE and v is not None}
    parsed = {k: parse_value(PREFIX + k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in given.items()}
    result = replace(settings, **parsed)
    check_scan_db_path(result.scan_db_data_path, library_paths)
    return result


def setup_cycle(conn: sa.Connection, overrides: dict[str, Any] | None = None) -> CycleSetup:
    with reported(conn.engine):  # a database without Melodee's tables: which one, and `db init`
        libs = resolve_libraries(conn)
        settings = load_settings(conn)
    settings = apply_overrides(settings, overrides or {}, [libs.inbound.path, libs.staging.path])
    return CycleSetup(settings, libs)


def check_stage_outcome(result: StageResult) -> None:
    """A run in which every album failed is a failed run."""
    if result.albums_total and result.albums_failed == result.albums_total and not result.files_moved:
        raise RunFailed(f"all {result.albums_total} album(s) failed; details in the scan DB's albums table")


def planned_album_dirs(scan_db: str) -> list[str]:
    """A dry run's albums that would receive files, for the row forecast."""
    conn = scandb.open_existing(scan_db)
    try:
        return [r[0] for r in conn.execute("SELECT staging_dir FROM albums WHERE moved > 0 AND dry_run = 1")]
    finally:
        conn.close()


def record(engine: sa.Engine | None, run: StagingRun) -> RecordResult | None:
    """Real run: write the pending rows. Dry run: count the rows the plan would write."""
    if engine is None:
        return None
    if run.dry_run:
        return count_planned_rows(engine, run.staging_path, planned_album_dirs(run.scan_db))
    return record_staging_items(engine, run.staging_path)


def stage_scan(run: StagingRun, engine: sa.Engine | None, logger: logging.Logger) -> tuple[GroupResult, StageResult, RecordResult | None]:
    """group -> stage -> record over an existing scan DB (the caller holds the staging lock)."""
    grouped = group_albums(run.scan_db)
    staged = stage_albums(run.scan_db, run.staging_path, workers=run.workers, rate_limit=run.rate_limit,
                          dry_run=run.dry_run, logger=logger)
    check_stage_outcome(staged)
    return grouped, staged, record(engine, replace(run, stage=staged))


def run_from_scan_db(scan_db: str, staging_path: str, *, workers: int, rate_limit: int, dry_run: bool) -> StagingRun:
    conn = scandb.open_existing(scan_db)
    try:
        info = {k: scandb.get_info(conn, k) for k in ("scan_id", "inbound_path", "files", "skipped")}
    finally:
        conn.close()
    return StagingRun(info["scan_id"], scan_db, info["inbound_path"] or "", staging_path, dry_run, workers, rate_limit,
                      time.time(), int(info["files"] or 0), int(info["skipped"] or 0))
