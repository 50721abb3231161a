"""Commands that put staging right: `reconcile`, `undo`."""

from __future__ import annotations

import logging
import os

from melodee_pipeline.cli import database

DRIFT_SHOWN = 50  # drifted albums listed by `reconcile`


def cmd_undo(args) -> int:
    from melodee_pipeline import cycle
    from melodee_pipeline.db.engine import reported
    from melodee_pipeline.lock import staging_lock
    from melodee_pipeline.scan.scandb import find_scan_db
    from melodee_pipeline.undo import NOT_UNDONE, plan_lines, returned_text, undo_scan

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    engine = database.engine()
    with reported(engine), engine.connect() as conn:
        setup = cycle.setup_cycle(conn)
    scan_db = find_scan_db(setup.settings.scan_db_data_path, args.scan)
    with staging_lock(engine, f"undo (pid {os.getpid()})"):
        result = undo_scan(engine, scan_db, setup.libraries.staging.path, album=args.album, dry_run=args.dry_run)
    for line in plan_lines(result):
        print(line)
    rows = result.rows
    print(f"scan {result.scan_id}: {len(result.albums)} album(s), {returned_text(result.returned, result.tracks)} "
          + ("to return to inbound [dry run: nothing moved]" if args.dry_run else
             f"returned to inbound; staging_items: {rows.updated} rewritten, {rows.removed} removed"))
    return 1 if any(a.status in NOT_UNDONE for a in result.albums) else 0


def cmd_reconcile(args) -> int:
    from melodee_pipeline.db.engine import reported
    from melodee_pipeline.libraries import resolve_libraries
    from melodee_pipeline.lock import staging_lock
    from melodee_pipeline.reconcile import reconcile
    from melodee_pipeline.settings import scan_db_dir

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    engine = database.engine()
    with reported(engine):
        with engine.connect() as conn:
            libs, scans = resolve_libraries(conn), scan_db_dir(conn)
        if libs.locked:
            print(f"{libs.locked_reason}; nothing to do")
            return 0
        with staging_lock(engine, f"reconcile (pid {os.getpid()})"):
            r = reconcile(engine, libs.staging.path, dry_run=args.dry_run, restore_deleted=args.restore_deleted,
                          logger=logging.getLogger("melodee_pipeline"), scan_db_dir=scans)
    would = "would be " if r.dry_run else ""
    print(f"reconcile {libs.staging.path}{' [dry run: nothing changed]' if r.dry_run else ''}")
    print(f"  journal: {r.pending} pending album(s) {'to record' if r.dry_run else 'recorded'} first"
          + (f", {r.recovered} file(s) of interrupted albums placed" if r.recovered else ""))
    print(f"  albums: {r.albums} in staging, {r.unchanged} unchanged, {r.unreadable} unreadable")
    print(f"  sidecars: {r.sidecars_rewritten} {would}rewritten without {r.tracks_dropped} missing file(s), "
          f"{r.sidecars_removed} {would}removed (no file left)")
    print(f"  audio the sidecars did not list: {r.tracks_added} {would}added, {r.unlisted_left} left alone "
          "(not valid audio, or still changing)")
    print(f"  rows: {r.rows_updated} {would}updated ({r.rows_reopened} reopened), {r.rows_restored} {would}restored, "
          f"{r.deleted_kept} deleted by the admin kept deleted"
          + ("" if args.restore_deleted or not r.deleted_kept else " (--restore-deleted re-creates them)")
          + f", {r.refused} refused")
    print(f"  rows without an album in staging (kept): {r.orphaned_rows}")
    for d in r.drift[:DRIFT_SHOWN]:
        print(f"  {d.kind:<16} {d.staging_path}" + (f"  ({d.detail})" if d.detail else ""))
    if len(r.drift) > DRIFT_SHOWN:
        print(f"  ... and {len(r.drift) - DRIFT_SHOWN} more")
    return 0
