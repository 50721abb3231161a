"""Commands on scan DBs, without Dagster: `scan-inbound`, `refusals`, `process-scan`."""

from __future__ import annotations

import os
import sys
from contextlib import closing

from melodee_pipeline.cli import database
from melodee_pipeline.errors import UserError


def cmd_scan_inbound(args) -> int:
    from melodee_pipeline.scan.scanner import scan_inbound

    if not os.path.isdir(args.path):
        raise UserError(f"inbound path {args.path} does not exist or is not a directory")
    r = scan_inbound(os.path.abspath(args.path), os.path.abspath(args.output), workers=args.workers,
                     min_file_age_seconds=args.min_file_age, keep_scan_dbs=None)
    print(f"files {r.files}, valid {r.valid}, invalid {r.invalid}, skipped {r.skipped} ({r.seconds:.1f}s)", file=sys.stderr)
    print(r.scan_db)
    return 0


def cmd_refusals(args) -> int:
    from melodee_pipeline.scan import scandb

    path = args.scan or scandb.newest(args.dir)
    if args.scan and not os.path.isfile(args.scan) and scandb.is_scan_id(args.scan):
        path = scandb.find_scan_db(_configured_scan_dir(), args.scan)  # a run's scan_id, as its summary shows it
    with closing(scandb.open_existing(path)) as conn:
        finished = scandb.completed(conn)
        refused = skipped = 0
        for refused, (file_path, reason, since) in enumerate(scandb.refused(conn), 1):
            print(f"{file_path}\t{reason}\t{since}")
        for skipped, (skip_path, reason, files) in enumerate(scandb.skipped(conn), 1):
            print(f"{skip_path}\tskipped: {reason} ({scandb.counted(files, 'file')})\t")
    print(f"{scandb.counted(refused, 'refused file')}, {scandb.counted(skipped, 'skipped path')} in {path}", file=sys.stderr)
    if not finished:
        print(f"note: the scan of {path} did not finish (killed, or still running): its leftovers may include files "
              "gone since", file=sys.stderr)
    return 0


def _configured_scan_dir() -> str:
    from melodee_pipeline.db.engine import reported
    from melodee_pipeline.settings import load_settings

    engine = database.engine()
    with reported(engine), engine.connect() as conn:
        return load_settings(conn).scan_db_data_path


def _database_configured() -> bool:
    from melodee_pipeline.db.engine import melodee_home

    return bool(os.environ.get("MELODEE_DATABASE_URL")) or (melodee_home() / "pgdata" / "PG_VERSION").exists()


def cmd_process_scan(args) -> int:
    import logging

    from melodee_pipeline import cycle
    from melodee_pipeline.lock import staging_dir_lock, staging_lock

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    staging = os.path.normpath(os.path.abspath(args.staging))
    engine = database.engine() if _database_configured() else None
    run = cycle.run_from_scan_db(args.scan, staging, workers=args.workers, rate_limit=args.rate_limit, dry_run=args.dry_run)
    with staging_lock(engine, f"process-scan (pid {os.getpid()})") if engine else staging_dir_lock(staging):
        g, s, rows = cycle.stage_scan(run, engine, logging.getLogger("melodee_pipeline"))
    from melodee_pipeline.scan import scandb

    with closing(scandb.open_existing(args.scan)) as conn:  # closed on any error too
        info = {k: scandb.get_info(conn, k) for k in ("files", "valid", "invalid", "skipped")}
    print(f"files {info['files']}, valid {info['valid']}, invalid {info['invalid']}, skipped {info['skipped']}")
    verb = "would move" if args.dry_run else "moved"
    warned = "" if args.dry_run else f", with warnings for the reviewer {s.albums_with_warnings}"  # a plan runs no checks
    print(f"albums {g.albums}, {'planned' if args.dry_run else 'staged'} {s.albums_success}, failed {s.albums_failed}{warned}; files {verb} {s.files_moved}, "
          f"duplicates (already staged) {s.already_staged}, renamed {s.renamed}, failed {s.files_failed}"
          + (f"; {s.recovered} interrupted album file(s) finished first" if s.recovered else "")
          + (f"; {s.inbound_kept} staged file(s) still in inbound (could not be deleted)" if s.inbound_kept else "")
          + (" [dry run: nothing moved]" if args.dry_run else ""))
    if rows is None:
        print("no database configured (MELODEE_DATABASE_URL unset, no embedded database): staging_items not recorded; "
              "the next run with a database records them")
    else:
        verb = "would write" if args.dry_run else "wrote"
        print(f"staging_items: {verb} {rows.inserted} new, {rows.updated} updated ({rows.reopened} reopened), "
              f"{rows.unchanged} unchanged, {rows.deleted_kept} deleted by the admin left deleted")
    return 0
