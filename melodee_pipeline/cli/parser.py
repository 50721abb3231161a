"""The command line's arguments: every command, its options and its help."""

from __future__ import annotations

import argparse
import sys
import textwrap

from melodee_pipeline.cli.admin import STATUSES, cmd_db_init, cmd_db_stop, cmd_libraries, cmd_settings, cmd_staging_list
from melodee_pipeline.cli.repair import cmd_reconcile, cmd_undo
from melodee_pipeline.cli.runs import cmd_demo, cmd_dev, cmd_run
from melodee_pipeline.cli.scans import cmd_process_scan, cmd_refusals, cmd_scan_inbound
from melodee_pipeline.errors import UserError


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
    lines += ["booleans: 1, t, T, TRUE, true, True, yes / 0, f, F, FALSE, false, False, no (yes and no in any case);",
              "scan_db_data_path: an absolute directory, neither inside a library nor containing one;",
              "integers: >= 0 (workers 1..64, keep_scan_dbs >= 1)"]
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
                              "never altered); writes no setting into an empty settings table (Melodee seeds it), "
                              "and adds the missing staging_scan.* keys with their defaults only to a table Melodee "
                              "seeded (one holding a key of Melodee's own).\n" + DB_ENV).set_defaults(fn=cmd_db_init)
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
    which.add_argument("--scan", help="a scan DB file, or a run's scan_id (looked up in staging_scan.scan_db_data_path) "
                                      "(required, or --dir)")
    which.add_argument("--dir", help="a scan DB directory: the newest scan DB of a scan that finished (required, or --scan)")
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
                        description="First records what the journal still owes (albums a killed run left), "
                                    "then walks the whole staging tree (a run never does) and repairs drift: a "
                                    "sidecar listing files that are gone is rewritten without them (removed when "
                                    "none is left); valid audio copied into an album directory by hand is added to "
                                    "its sidecar; a row that differs from its sidecar is updated. A missing row was "
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
