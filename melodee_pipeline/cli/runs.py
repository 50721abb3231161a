"""Commands that run or show the Dagster job: `run`, `demo`, `dev`."""

from __future__ import annotations

import json
import os
import sys

from melodee_pipeline.cli import database


def run_job(dry_run: bool | None = None, workers: int | None = None, rate_limit: int | None = None,
            scan_db_data_path: str | None = None) -> tuple[bool, dict | None, str | None]:
    """`run_once.run_job`, after checking (with a clear message) that the database is reachable."""
    from melodee_pipeline.orchestration.run_once import run_job as run_once

    database.engine()
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
    from melodee_pipeline.db.engine import embedded_url, melodee_home
    from melodee_pipeline.demo import DEMO_DAGSTER_DATABASE, DEMO_DATABASE, prepare

    home = melodee_home()
    demo = prepare(home)
    print(f"demo: sample albums in {demo.inbound}; database {DEMO_DATABASE} in the embedded PostgreSQL under {home}")
    # The demo's own databases, whatever is configured: its run and its sandbox's asset
    # materialisations stay out of the real run history and asset catalog (and asset checks).
    from melodee_pipeline.orchestration.run_once import environ

    with environ(MELODEE_DATABASE_URL=demo.database_url, DAGSTER_PG_URL=embedded_url(DEMO_DAGSTER_DATABASE),
                  DAGSTER_HOME=demo.dagster_home):
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
    print(f"\nThe demo used only its own directories and databases ({DEMO_DATABASE}, and {DEMO_DAGSTER_DATABASE} for "
          "its Dagster run); your settings, libraries, runs and assets are untouched, and the next `demo` starts over.\n"
          "next: `melodee-pipeline db init` and `libraries add ...` set up the real thing (README, Everyday use);\n"
          "      `melodee-pipeline dev` opens the Dagster UI on http://127.0.0.1:3000 for your runs;\n"
          "      `melodee-pipeline db stop` stops the embedded PostgreSQL.")
    return 0


def cmd_dev(args) -> int:
    from melodee_pipeline.bootstrap import init_db
    from melodee_pipeline.instance import prepare_dagster_home, write_workspace

    init_db(database.engine())
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
