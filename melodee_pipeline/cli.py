"""`melodee-pipeline`: the command line (SPEC §10). Every command calls the same library functions
as the Dagster ops; user errors print one `error: ...` line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from melodee_pipeline.errors import RunFailed, UserError


def _engine():
    from melodee_pipeline.db.engine import get_engine

    return get_engine()


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
            parsed = st.set_setting(conn, args.key, args.value)
            print(f"{args.key} = {parsed}")
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


def _workers(value: str) -> int:
    from melodee_pipeline.settings import parse_value

    return parse_value("staging_scan.workers", value)


def _rate(value: str) -> int:
    from melodee_pipeline.settings import parse_value

    return parse_value("staging_scan.rate_limit", value)


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
            print(f"{skip_path}\tskipped: {reason} ({files} files)\t")
    print(f"{refused} refused files, {skipped} skipped paths in {path}", file=sys.stderr)
    return 0


def _database_configured() -> bool:
    from melodee_pipeline.db.engine import melodee_home

    return bool(os.environ.get("MELODEE_DATABASE_URL")) or (melodee_home() / "pgdata" / "PG_VERSION").exists()


def cmd_process_scan(args) -> int:
    import logging
    from contextlib import nullcontext

    from melodee_pipeline import cycle
    from melodee_pipeline.lock import staging_lock

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    staging = os.path.normpath(os.path.abspath(args.staging))
    engine = _engine() if _database_configured() else None
    run = cycle.run_from_scan_db(args.scan, staging, workers=args.workers, rate_limit=args.rate_limit, dry_run=args.dry_run)
    with staging_lock(engine, f"process-scan (pid {os.getpid()})") if engine else nullcontext():
        g, s, rows = cycle.stage_scan(run, engine, logging.getLogger("melodee_pipeline"))
    from melodee_pipeline.scan import scandb

    conn = scandb.open_existing(args.scan)
    info = {k: scandb.get_info(conn, k) for k in ("files", "valid", "invalid", "skipped")}
    conn.close()
    print(f"files {info['files']}, valid {info['valid']}, invalid {info['invalid']}, skipped {info['skipped']}")
    verb = "would move" if args.dry_run else "moved"
    print(f"albums {g.albums}, staged {s.albums_success}, failed {s.albums_failed}; files {verb} {s.files_moved}, "
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


def run_job(dry_run: bool | None = None, workers: int | None = None, rate_limit: int | None = None,
            scan_db_data_path: str | None = None) -> tuple[bool, dict | None, str | None]:
    """One cycle through staging_scan_job in this process, recorded on the Postgres-backed instance."""
    import dagster as dg

    from melodee_pipeline.instance import prepare_dagster_home
    from melodee_pipeline.orchestration.job import staging_scan_job
    from melodee_pipeline.definitions import defs

    prepare_dagster_home()
    _engine()  # fail fast, with a clear message, if the database is unreachable
    overrides = {k: v for k, v in dict(dry_run=dry_run, workers=workers, rate_limit=rate_limit,
                                        scan_db_data_path=scan_db_data_path).items() if v is not None}
    with dg.DagsterInstance.get() as instance:
        result = defs.get_job_def(staging_scan_job.name).execute_in_process(
            run_config={"ops": {"scan_inbound": {"config": overrides}}, "loggers": {"console": {"config": {"log_level": "INFO"}}}},
            instance=instance, raise_on_error=False,
        )
    summary = result.output_for_node("record_staging_items") if result.success and _produced(result) else None
    return result.success, summary, result.run_id if result.success else failure_message(result)


def _produced(result) -> bool:
    return any(e.is_successful_output and e.node_name == "record_staging_items" for e in result.all_events)


def failure_message(result) -> str:
    """The reason a run failed, as the user should read it: `dg.Failure` descriptions first,
    else the innermost exception's message (resource set-up, e.g. the staging lock, included)."""
    reasons = []
    for event in result.all_events:
        if event.event_type_value not in ("STEP_FAILURE", "RESOURCE_INIT_FAILURE"):
            continue
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        if user is not None and user.description:
            reasons.append(f"{event.step_key}: {user.description}")
        elif getattr(data, "error", None) is not None:
            reasons.append(f"{event.step_key or 'run'}: {_innermost(data.error)}")
    if not reasons:
        reasons = [_innermost(e.event_specific_data.error) for e in result.all_events
                   if e.event_type_value == "PIPELINE_FAILURE" and e.event_specific_data.error][:1]
    return "; ".join(reasons) or "run failed"


def _innermost(error) -> str:
    while error.cause is not None:
        error = error.cause
    first = error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name
    prefix = f"{error.cls_name}: "
    return first.split(prefix, 1)[1] if prefix in first else first


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
    from melodee_pipeline.bootstrap import init_db
    from melodee_pipeline.db.engine import melodee_home
    from melodee_pipeline.demo import prepare

    home = melodee_home()
    engine = _engine()
    init_db(engine)
    inbound, staging = prepare(engine, str(home))
    ok, summary, info = run_job(scan_db_data_path=str(home / "scan-db"))
    if not ok:
        print(f"error: run failed: {info}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    print(f"\ninbound:  {inbound}\nstaging:  {staging}\nscan DB:  {summary['scan_db'] if summary else '-'}")
    print("next: `melodee-pipeline dev` opens the Dagster UI on http://127.0.0.1:3000")
    return 0


def cmd_dev(args) -> int:
    from melodee_pipeline.bootstrap import init_db
    from melodee_pipeline.db.engine import get_engine
    from melodee_pipeline.instance import prepare_dagster_home

    init_db(get_engine())
    home = prepare_dagster_home()
    print(f"DAGSTER_HOME={home}; starting the Dagster UI and daemon (Ctrl-C stops both)", file=sys.stderr)
    argv = ["dagster", "dev", "-m", "melodee_pipeline.definitions", "--host", args.host, "--port", str(args.port)]
    os.execvp(argv[0], argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="melodee-pipeline", description="Move new music from Melodee's inbound library into staging.")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="application database").add_subparsers(dest="action", required=True)
    db.add_parser("init", help="create missing tables (idempotent; writes no setting into an empty settings table)").set_defaults(fn=cmd_db_init)

    st = sub.add_parser("settings", help="staging_scan.* settings").add_subparsers(dest="action", required=True)
    st.add_parser("list").set_defaults(fn=cmd_settings)
    g = st.add_parser("get")
    g.add_argument("key")
    g.set_defaults(fn=cmd_settings)
    s = st.add_parser("set")
    s.add_argument("key")
    s.add_argument("value")
    s.set_defaults(fn=cmd_settings)

    lb = sub.add_parser("libraries", help="inbound/staging/production libraries").add_subparsers(dest="action", required=True)
    lb.add_parser("list").set_defaults(fn=cmd_libraries)
    a = lb.add_parser("add")
    a.add_argument("--name", required=True)
    a.add_argument("--type", required=True, choices=["inbound", "staging", "production"])
    a.add_argument("--path", required=True)
    a.set_defaults(fn=cmd_libraries)
    r = lb.add_parser("remove")
    r.add_argument("id", type=int)
    r.set_defaults(fn=cmd_libraries)

    si = sub.add_parser("scan-inbound", help="scan a directory into a new scan DB; prints its path")
    si.add_argument("--path", required=True)
    si.add_argument("--output", required=True)
    si.add_argument("--workers", type=_workers, default=4)
    si.add_argument("--min-file-age", type=int, default=60, help="skip folders with files younger than this (seconds)")
    si.set_defaults(fn=cmd_scan_inbound)

    rf = sub.add_parser("refusals", help="list every refused file and skipped path of a scan DB, with its reason")
    which = rf.add_mutually_exclusive_group(required=True)
    which.add_argument("--scan", help="a scan DB file")
    which.add_argument("--dir", help="a scan DB directory: its newest scan DB")
    rf.set_defaults(fn=cmd_refusals)

    ps = sub.add_parser("process-scan", help="group and stage the files of a scan DB")
    ps.add_argument("--scan", required=True)
    ps.add_argument("--staging", required=True)
    ps.add_argument("--workers", type=_workers, default=4)
    ps.add_argument("--rate-limit", type=_rate, default=0)
    ps.add_argument("--dry-run", action="store_true")
    ps.set_defaults(fn=cmd_process_scan)

    rn = sub.add_parser("run", help="one cycle through staging_scan_job")
    rn.add_argument("--dry-run", action="store_true")
    rn.add_argument("--workers", type=_workers)
    rn.add_argument("--rate-limit", type=_rate)
    rn.set_defaults(fn=cmd_run)

    sub.add_parser("demo", help="quickstart: sample albums through one run on the embedded default").set_defaults(fn=cmd_demo)
    dv = sub.add_parser("dev", help="Dagster UI + daemon on the embedded default")
    dv.add_argument("--host", default="127.0.0.1")
    dv.add_argument("--port", type=int, default=3000)
    dv.set_defaults(fn=cmd_dev)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except RunFailed as exc:
        print(f"error: run failed: {exc}", file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
