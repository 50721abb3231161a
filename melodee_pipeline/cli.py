"""`melodee-pipeline`: the command line. Every command calls the same library functions as the
Dagster ops. A user error prints one `error: ...` line on stderr (database URLs masked, no
traceback) and exits 2; a failed run exits 1."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import sys
import textwrap
import unicodedata
from typing import Sequence

from melodee_pipeline.errors import RunFailed, UserError

# The database the current command talks to, so an error message can name it (masked).
_current_engine = None


def _engine():
    global _current_engine
    from melodee_pipeline.db.engine import get_engine

    _current_engine = get_engine()
    return _current_engine


def cmd_db_init(args) -> int:
    from melodee_pipeline.bootstrap import init_db
    from melodee_pipeline.db.engine import mask, reported

    engine = _engine()
    with reported(engine):
        done = init_db(engine)
    print(f"database {mask(engine.url.render_as_string(hide_password=False))} ready")
    print(f"  tables created: {', '.join(done['tables']) or 'none (all present)'}")
    if done["settings"]:
        print(f"  missing staging_scan settings added with their defaults: {', '.join(done['settings'])}")
    else:
        print("  settings written: none (a missing setting means its default; see `settings list`)")
    return 0


def cmd_db_stop(args) -> int:
    from melodee_pipeline.db.engine import melodee_home, stop_embedded

    pgdata = melodee_home() / "pgdata"
    pid = stop_embedded()
    if pid is None:
        print(f"no embedded PostgreSQL is running in {pgdata}")
    else:
        print(f"stopped the embedded PostgreSQL in {pgdata} (pid {pid})")
    return 0


STATUSES = ("pending_review", "approved", "rejected")


def _cell(text: object, width: int) -> str:
    """One terminal cell: control and bidi-override characters made visible, cut to `width`."""
    shown = "".join("?" if unicodedata.category(c) in ("Cc", "Cf") else c for c in str(text))
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def cmd_staging_list(args) -> int:
    import sqlalchemy as sa

    query = ("SELECT artist_name, album_name, track_count, status, staging_path FROM staging_items"
             + (" WHERE status = :status" if args.status else "")
             + " ORDER BY processed_at DESC, id DESC")
    with _engine().connect() as conn:
        rows = conn.execute(sa.text(query), {"status": args.status} if args.status else {}).all()
    if not rows:
        print("no staging items" + (f" with status {args.status}" if args.status else ""))
        return 0
    print(f"{'ARTIST':<24}  {'ALBUM':<32}  {'TRACKS':>6}  {'STATUS':<14}  STAGING PATH")
    for artist, album, tracks, status, path in rows:
        print(f"{_cell(artist, 24):<24}  {_cell(album, 32):<32}  {tracks or 0:>6}  {status:<14}  {_cell(path, 4096)}")
    return 0


def cmd_settings(args) -> int:
    from melodee_pipeline import settings as st
    from melodee_pipeline.db.engine import reported

    engine = _engine()
    with reported(engine), engine.begin() as conn:
        raw = st.read_raw(conn)
        if args.action == "list":
            width = max(map(len, st.SPECS))
            for key, spec in st.SPECS.items():
                value = raw.get(key)
                shown = spec.default + "  (default)" if value is None else value
                print(f"{key:<{width}}  {shown}")
        elif args.action == "get":
            st.parse_value(args.key, None)  # rejects unknown keys
            value = raw.get(args.key)
            print(st.SPECS[args.key].default if value is None else value)
        else:
            st.set_setting(conn, args.key, args.value)
            print(f"{args.key} = {args.value.strip()}")
    return 0


def cmd_libraries(args) -> int:
    from melodee_pipeline import libraries as lb
    from melodee_pipeline.db.engine import reported

    engine = _engine()
    with reported(engine), engine.begin() as conn:
        if args.action == "list":
            libs = lb.list_libraries(conn)
            if not libs:
                print("no libraries configured")
            for lib in libs:
                print(f"{lib.id:>4}  {lib.type:<10}  {lib.name}  {lib.path}{'  (locked)' if lib.is_locked else ''}")
        elif args.action == "add":
            lib = lb.add_library(conn, args.name, args.type, args.path)
            print(f"added {lib.type} library {lib.name!r} (id {lib.id}) at {lib.path}")
        else:
            lb.remove_library(conn, args.id)
            print(f"removed library {args.id}")
    return 0


def _setting_type(key: str):
    def parse(value: str):
        from melodee_pipeline.settings import parse_value

        try:
            return parse_value(key, value)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = key.rsplit(".", 1)[-1]
    return parse


_workers = _setting_type("staging_scan.workers")
_rate = _setting_type("staging_scan.rate_limit")


def _non_negative(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be >= 0")
    return n


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
    from contextlib import closing

    from melodee_pipeline.scan import scandb

    path = args.scan or scandb.newest(args.dir)
    with closing(scandb.open_existing(path)) as conn:
        refused = skipped = 0
        for refused, (file_path, reason, since) in enumerate(scandb.refused(conn), 1):
            print(f"{file_path}\t{reason}\t{since}")
        for skipped, (skip_path, reason, files) in enumerate(scandb.skipped(conn), 1):
            print(f"{skip_path}\tskipped: {reason} ({scandb.counted(files, 'file')})\t")
    print(f"{scandb.counted(refused, 'refused file')}, {scandb.counted(skipped, 'skipped path')} in {path}", file=sys.stderr)
    return 0


def _database_configured() -> bool:
    from melodee_pipeline.db.engine import melodee_home

    return bool(os.environ.get("MELODEE_DATABASE_URL")) or (melodee_home() / "pgdata" / "PG_VERSION").exists()


def cmd_process_scan(args) -> int:
    import logging

    from melodee_pipeline import cycle
    from melodee_pipeline.lock import staging_dir_lock, staging_lock

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    staging = os.path.normpath(os.path.abspath(args.staging))
    engine = _engine() if _database_configured() else None
    run = cycle.run_from_scan_db(args.scan, staging, workers=args.workers, rate_limit=args.rate_limit, dry_run=args.dry_run)
    with staging_lock(engine, f"process-scan (pid {os.getpid()})") if engine else staging_dir_lock(staging):
        g, s, rows = cycle.stage_scan(run, engine, logging.getLogger("melodee_pipeline"))
    from melodee_pipeline.scan import scandb

    conn = scandb.open_existing(args.scan)
    info = {k: scandb.get_info(conn, k) for k in ("files", "valid", "invalid", "skipped")}
    conn.close()
    print(f"files {info['files']}, valid {info['valid']}, invalid {info['invalid']}, skipped {info['skipped']}")
    verb = "would move" if args.dry_run else "moved"
    print(f"albums {g.albums}, staged {s.albums_success}, failed {s.albums_failed}, "
          f"with warnings for the reviewer {s.albums_with_warnings}; files {verb} {s.files_moved}, "
          f"duplicates (already staged) {s.already_staged}, renamed {s.renamed}, failed {s.files_failed}"
          + (f"; {s.recovered} interrupted album file(s) finished first" if s.recovered else "")
          + (" [dry run: nothing moved]" if args.dry_run else ""))
    if rows is None:
        print("no database configured (MELODEE_DATABASE_URL unset, no embedded database): staging_items not recorded; "
              "the next run with a database records them")
    else:
        verb = "would write" if args.dry_run else "wrote"
        print(f"staging_items: {verb} {rows.inserted} new, {rows.updated} updated ({rows.reopened} reopened), "
              f"{rows.unchanged} unchanged, {rows.deleted_kept} deleted by the admin left deleted")
    return 0


def cmd_undo(args) -> int:
    from melodee_pipeline import cycle
    from melodee_pipeline.db.engine import reported
    from melodee_pipeline.lock import staging_lock
    from melodee_pipeline.scan.scandb import find_scan_db
    from melodee_pipeline.undo import plan_lines, undo_scan

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    engine = _engine()
    with reported(engine), engine.connect() as conn:
        setup = cycle.setup_cycle(conn)
    scan_db = find_scan_db(setup.settings.scan_db_data_path, args.scan)
    with staging_lock(engine, f"undo (pid {os.getpid()})"):
        result = undo_scan(engine, scan_db, setup.libraries.staging.path, album=args.album, dry_run=args.dry_run)
    for line in plan_lines(result):
        print(line)
    rows = result.rows
    print(f"scan {result.scan_id}: {len(result.albums)} album(s), {result.returned} file(s) "
          + ("to return to inbound [dry run: nothing moved]" if args.dry_run else
             f"returned to inbound; staging_items: {rows.updated} rewritten, {rows.removed} removed"))
    return 1 if any(a.status == "refused" for a in result.albums) else 0


def cmd_reconcile(args) -> int:
    from melodee_pipeline.db.engine import reported
    from melodee_pipeline.libraries import resolve_libraries
    from melodee_pipeline.lock import staging_lock
    from melodee_pipeline.reconcile import reconcile
    from melodee_pipeline.settings import scan_db_dir

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    engine = _engine()
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


DRIFT_SHOWN = 50  # drifted albums listed by `reconcile`


def run_job(dry_run: bool | None = None, workers: int | None = None, rate_limit: int | None = None,
            scan_db_data_path: str | None = None) -> tuple[bool, dict | None, str | None]:
    """`run_once.run_job`, after checking (with a clear message) that the database is reachable."""
    from melodee_pipeline.orchestration.run_once import run_job as run_once

    _engine()
    return run_once(dry_run=dry_run, workers=workers, rate_limit=rate_limit, scan_db_data_path=scan_db_data_path)


def cmd_run(args) -> int:
    ok, summary, info = run_job(dry_run=True if args.dry_run else None, workers=args.workers, rate_limit=args.rate_limit)
    if not ok:
        print(f"error: run failed: {info}", file=sys.stderr)
        return 1
    if summary is None:
        print(f"run {info} ended without work (a library is locked)")
    else:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_demo(args) -> int:
    from melodee_pipeline.db.engine import DAGSTER_DATABASE, embedded_url, melodee_home
    from melodee_pipeline.demo import DEMO_DATABASE, prepare

    home = melodee_home()
    demo = prepare(home)
    print(f"demo: sample albums in {demo.inbound}; database {DEMO_DATABASE} in the embedded PostgreSQL under {home}")
    # The demo's own database and the embedded Dagster storage, whatever is configured.
    from melodee_pipeline.orchestration.run_once import environ

    with environ(MELODEE_DATABASE_URL=demo.database_url, DAGSTER_PG_URL=embedded_url(DAGSTER_DATABASE),
                  DAGSTER_HOME=str(home / "dagster")):
        ok, summary, info = run_job(scan_db_data_path=demo.scan_db_dir)
    if not ok:
        print(f"error: run failed: {info}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    print(f"\ninbound:  {demo.inbound}\nstaging:  {demo.staging}\nscan DB:  {summary['scan_db'] if summary else '-'}")
    if summary:
        print(f"\n{summary['files_moved']} files moved into {summary['albums_success']} albums in staging; the untagged file "
              f"stayed in inbound (`melodee-pipeline refusals --scan {summary['scan_db']}` says why), and each album's "
              f"album.melodee.json lists what a reviewer should check (validation.warnings).")
    print(f"\nThe demo used only its own directories and database ({DEMO_DATABASE}); your settings and libraries "
          "are untouched, and the next `demo` starts over.\n"
          "next: `melodee-pipeline db init` and `libraries add ...` set up the real thing (README, Everyday use);\n"
          "      `melodee-pipeline dev` opens the Dagster UI on http://127.0.0.1:3000 (on the embedded default, with this run);\n"
          "      `melodee-pipeline db stop` stops the embedded PostgreSQL.")
    return 0


def cmd_dev(args) -> int:
    from melodee_pipeline.bootstrap import init_db
    from melodee_pipeline.instance import prepare_dagster_home, write_workspace

    init_db(_engine())
    home = prepare_dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    workspace = write_workspace(home)
    print(f"DAGSTER_HOME={home}; starting the Dagster UI and daemon on http://{args.host}:{args.port} "
          "(Ctrl-C stops both)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # The Dagster of this interpreter, so an unactivated venv works; the workspace names the
    # code location `melodee_pipeline`. dagster dev runs in DAGSTER_HOME: it would warn about,
    # and not use, a dagster.yaml in another current directory.
    argv = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "--host", args.host, "--port", str(args.port)]
    os.chdir(home)
    # Started in the background, SIGINT may be inherited as ignored; dagster dev maps SIGTERM onto
    # the SIGINT handler, so restore the default or neither would stop it.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(sys.executable, argv)
    return 0  # not reached


class _Parser(argparse.ArgumentParser):
    """Usage errors as one `error:` line (exit 2), pointing at --help."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)  # epilog tables as written
        if kw.get("description"):
            kw["description"] = "\n".join(textwrap.fill(par, 88) for par in kw["description"].split("\n"))
        super().__init__(*a, **kw)

    def error(self, message: str):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _settings_epilog() -> str:
    from melodee_pipeline.settings import SPECS

    width = max(map(len, SPECS))
    lines = ["setting keys, their defaults and rules:"]
    for key, spec in SPECS.items():
        lines.append(f"  {key:<{width}}  {spec.default!r:<22}  {getattr(spec, 'comment', '')}")
    return "\n".join(lines)


DB_ENV = ("database: MELODEE_DATABASE_URL (a PostgreSQL URL), else the embedded PostgreSQL under "
          "MELODEE_HOME (default ~/.local/share/melodee-pipeline)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="melodee-pipeline", description="Move new music from Melodee's inbound library into staging.\n" + DB_ENV)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="the application database: init, stop",
                        description="The application database.").add_subparsers(dest="action", required=True, metavar="ACTION")
    db.add_parser("init", help="create missing tables (idempotent)",
                  description="Create the missing settings, libraries and staging_items tables (existing ones are "
                              "never altered); writes no setting into an empty settings table (Melodee seeds it).\n" + DB_ENV).set_defaults(fn=cmd_db_init)
    db.add_parser("stop", help="stop the embedded PostgreSQL under MELODEE_HOME",
                  description="Stop the embedded PostgreSQL under MELODEE_HOME (the next command starts it again); "
                              "says so when none is running. A server in MELODEE_DATABASE_URL is never touched."
                  ).set_defaults(fn=cmd_db_stop)

    epilog = _settings_epilog()
    st = sub.add_parser("settings", help="the staging_scan.* settings: list, get, set", description="The staging_scan.* settings.",
                        epilog=epilog).add_subparsers(dest="action", required=True, metavar="ACTION")
    st.add_parser("list", help="every key with its value, or its default",
                  description="Every staging_scan.* key with its stored value, or its default marked (default).",
                  epilog=epilog).set_defaults(fn=cmd_settings)
    g = st.add_parser("get", help="one value (the default when unset)",
                      description="Print one setting's value (its default when no row holds it).", epilog=epilog)
    g.add_argument("key", metavar="KEY", help="a setting key, listed below")
    g.set_defaults(fn=cmd_settings)
    s = st.add_parser("set", help="store a value after checking it",
                      description="Store one setting; an invalid value is refused, naming key and value.", epilog=epilog)
    s.add_argument("key", metavar="KEY", help="a setting key, listed below")
    s.add_argument("value", metavar="VALUE", help="the new value, checked against the key's rule")
    s.set_defaults(fn=cmd_settings)

    lb = sub.add_parser("libraries", help="inbound/staging/production libraries: list, add, remove",
                        description="Libraries: a run needs exactly one inbound and one staging library."
                        ).add_subparsers(dest="action", required=True, metavar="ACTION")
    lb.add_parser("list", help="every library", description="List every library (id, type, name, path).").set_defaults(fn=cmd_libraries)
    a = lb.add_parser("add", help="add a library", description="Add a library.")
    a.add_argument("--name", required=True, help="display name (required)")
    a.add_argument("--type", required=True, choices=["inbound", "staging", "production"], help="library type (required)")
    a.add_argument("--path", required=True, help="absolute directory path (required)")
    a.set_defaults(fn=cmd_libraries)
    r = lb.add_parser("remove", help="remove a library by id", description="Remove a library by id.")
    r.add_argument("id", type=int, metavar="ID", help="the library id, from `libraries list`")
    r.set_defaults(fn=cmd_libraries)

    sg = sub.add_parser("staging", help="the review queue: list", description="The staging_items review queue."
                        ).add_subparsers(dest="action", required=True, metavar="ACTION")
    sl = sg.add_parser("list", help="review queue rows, newest first",
                       description="Print the staging_items rows (artist, album, tracks, status, staging path), newest first.")
    sl.add_argument("--status", choices=STATUSES, default=None,
                    help="only rows with this status (default: every status)")
    sl.set_defaults(fn=cmd_staging_list)

    si = sub.add_parser("scan-inbound", help="scan a directory into a new scan DB; prints its path",
                        description="Scan a directory into a new SQLite scan DB and print its path. Needs no database.")
    si.add_argument("--path", required=True, help="the inbound directory to scan (required)")
    si.add_argument("--output", required=True, help="directory for the new scan DB (required)")
    si.add_argument("--workers", type=_workers, default=4, help="parallel workers, 1..64 (default: 4)")
    si.add_argument("--min-file-age", type=_non_negative, default=60, metavar="SECONDS",
                    help="skip folders holding a file younger than this, in seconds (default: 60)")
    si.set_defaults(fn=cmd_scan_inbound)

    rf = sub.add_parser("refusals", help="list every refused file and skipped path of a scan DB, with its reason",
                        description="Every file a scan refused and every path it skipped, with the reason.")
    which = rf.add_mutually_exclusive_group(required=True)
    which.add_argument("--scan", help="a scan DB file (required, or --dir)")
    which.add_argument("--dir", help="a scan DB directory: its newest scan DB (required, or --scan)")
    rf.set_defaults(fn=cmd_refusals)

    ps = sub.add_parser("process-scan", help="group and stage the files of a scan DB",
                        description="Group a scan DB's files into albums and move them into staging; records "
                                    "staging_items rows when a database is configured.")
    ps.add_argument("--scan", required=True, help="the scan DB file, from scan-inbound (required)")
    ps.add_argument("--staging", required=True, help="the staging directory (required)")
    ps.add_argument("--workers", type=_workers, default=4, help="parallel workers, 1..64 (default: 4)")
    ps.add_argument("--rate-limit", type=_rate, default=0, metavar="N",
                    help="max file moves per second, 0 = unlimited (default: 0)")
    ps.add_argument("--dry-run", action="store_true", help="plan only: move nothing, write no rows (default: off)")
    ps.set_defaults(fn=cmd_process_scan)

    rc = sub.add_parser("reconcile", help="walk staging: repair sidecars and staging_items rows",
                        description="Walk the whole staging tree (a run never does) and repair drift: a sidecar "
                                    "listing files that are gone is rewritten without them (removed when none is "
                                    "left); a row that differs from its sidecar is updated. A missing row was "
                                    "deleted by the admin and is re-created only with --restore-deleted; rows "
                                    "whose album is gone are reported, never deleted. Takes the staging lock.")
    rc.add_argument("--dry-run", action="store_true", help="report only: change no file and no row (default: off)")
    rc.add_argument("--restore-deleted", action="store_true",
                    help="re-create rows the admin deleted while the album stays in staging (default: off)")
    rc.set_defaults(fn=cmd_reconcile)

    rn = sub.add_parser("run", help="one cycle through staging_scan_job",
                        description="Run staging_scan_job once in this process, recorded on the Dagster instance; "
                                    "prints the summary, exits 1 if the run fails. Options override the stored "
                                    "settings for this run only.")
    rn.add_argument("--dry-run", action="store_true",
                    help="plan only: move nothing, write no rows (default: the staging_scan.dry_run setting)")
    rn.add_argument("--workers", type=_workers, metavar="N",
                    help="parallel workers, 1..64 (default: the staging_scan.workers setting)")
    rn.add_argument("--rate-limit", type=_rate, metavar="N",
                    help="max file moves per second, 0 = unlimited (default: the staging_scan.rate_limit setting)")
    rn.set_defaults(fn=cmd_run)

    ud = sub.add_parser("undo", help="return the files a run staged to inbound",
                        description="Undo a staging run: every file it staged (music, cover art, rip files) goes "
                                    "back to its inbound path, never over a file that is there now; sidecars and "
                                    "staging_items rows follow. An album the admin approved, or that Melodee "
                                    "promoted, is refused with the reason (exit 1). Takes the staging lock; a "
                                    "killed undo is finished by the next undo or run.\n" + DB_ENV)
    ud.add_argument("--scan", required=True, metavar="SCAN_ID",
                    help="the run's scan_id (in the sidecar, the row and the run's summary), with or without the "
                         "scan_ prefix, or a scan DB file (required)")
    ud.add_argument("--album", metavar="DIR", help="only this album: its directory relative to the staging root "
                                                   "(default: every album of the run)")
    ud.add_argument("--dry-run", action="store_true", help="show the plan, move nothing (default: off)")
    ud.set_defaults(fn=cmd_undo)

    sub.add_parser("demo", help="quickstart: sample albums through one run, in a sandbox",
                   description="Write sample albums into $MELODEE_HOME/demo and run staging_scan_job once on them, "
                               "with the demo's own database (melodee_demo in the embedded PostgreSQL). Configured "
                               "libraries, settings and MELODEE_DATABASE_URL are never touched; every demo starts over."
                   ).set_defaults(fn=cmd_demo)
    dv = sub.add_parser("dev", help="Dagster UI + daemon",
                        description="Start `dagster dev` (UI and daemon, so the sensor runs) with DAGSTER_HOME "
                                    "(default $MELODEE_HOME/dagster) and the code location melodee_pipeline.\n" + DB_ENV)
    dv.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default: 127.0.0.1)")
    dv.add_argument("--port", type=int, default=3000, help="port the UI listens on (default: 3000)")
    dv.set_defaults(fn=cmd_dev)
    return p


_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^\s:/@]*:)[^\s@]*@")


def redact(message: str) -> str:
    """Mask database passwords in a message, whatever produced it: the configured URLs (even
    unparseable ones) and anything shaped like scheme://user:password@."""
    from melodee_pipeline.db.engine import mask

    for var in ("MELODEE_DATABASE_URL", "DAGSTER_PG_URL"):
        raw = os.environ.get(var)
        if raw and raw in message:
            message = message.replace(raw, mask(raw))
        password = _password(raw) if raw else None
        if password and len(password) >= 3:
            message = message.replace(password, "***")
    return _CREDENTIALS.sub(lambda m: m.group("head") + "***@", message)


def _password(url: str) -> str | None:
    m = re.search(r"^(?:[^:/]*://)?[^\s:/@]*:([^\s@]*)@", url)
    return m.group(1) if m else None


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Run one command. `own_process`: this process exists for the command (the console script,
    `python -m melodee_pipeline.cli`), so its garbage collector is tuned for it (see `_imports_done`)."""
    if own_process:
        gc.disable()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if own_process:
            _imports_done(args)
        return args.fn(args)
    except RunFailed as exc:
        print(f"error: run failed: {exc}", file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MELODEE_DEBUG"):
            raise
        import sqlalchemy as sa

        if isinstance(exc, sa.exc.DBAPIError):
            from melodee_pipeline.db.engine import database_error

            print(f"error: {redact(str(database_error(_current_engine, exc)))}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):
            print(f"error: {redact(str(exc))}", file=sys.stderr)
            return 2
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: unexpected {type(exc).__name__}: {redact(first)} (MELODEE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


def _imports_done(args) -> None:
    """A command's imports (sqlalchemy; dagster and the job for `run` and `demo`) build a heap of
    a few hundred thousand objects that live until the process ends. The collector walked that
    heap ~45 times while the imports grew it: ~0.45 s of every `melodee-pipeline run`. So `main`
    pauses it through the imports; then the imported heap is frozen out of later collections
    (nor does a forked worker walk it), and collection resumes for the work."""
    if args.fn in (cmd_run, cmd_demo):
        import melodee_pipeline.orchestration.run_once  # noqa: F401
    gc.freeze()
    gc.enable()


def entry() -> int:
    """The console script `melodee-pipeline`."""
    return main(own_process=True)


if __name__ == "__main__":
    sys.exit(entry())
