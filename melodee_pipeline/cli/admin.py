"""Commands on the application database: `db`, `settings`, `libraries`, `staging list`."""

from __future__ import annotations

import os
import unicodedata

from melodee_pipeline.cli import database


def cmd_db_init(args) -> int:
    from melodee_pipeline.bootstrap import init_db
    from melodee_pipeline.db.engine import mask, reported

    engine = database.engine()
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


def _columns(c: str) -> int:
    """Terminal columns of one character: wide East Asian ones take two, combining marks none."""
    if unicodedata.combining(c) or unicodedata.category(c) == "Me":
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(map(_columns, text))


def _cell(text: object, width: int) -> str:
    """One terminal cell `width` columns wide: control and bidi-override characters made visible,
    cut with `…` or padded, by columns on screen (坂本龍一 takes eight), not by characters."""
    shown = "".join("?" if unicodedata.category(c) in ("Cc", "Cf") else c for c in str(text))  # as on disk: pasteable
    used = _width(shown)
    if used > width:
        out, used = [], 0
        for c in shown:
            cols = _columns(c)
            if used + cols > width - 1:
                break
            out.append(c)
            used += cols
        shown, used = "".join(out) + "…", used + 1
    return shown + " " * (width - used)


def cmd_staging_list(args) -> int:
    import sqlalchemy as sa

    query = ("SELECT artist_name, album_name, track_count, status, staging_path FROM staging_items"
             + (" WHERE status = :status" if args.status else "")
             + " ORDER BY processed_at DESC, id DESC")
    with database.engine().connect() as conn:
        rows = conn.execute(sa.text(query), {"status": args.status} if args.status else {}).all()
    if not rows:
        print("no staging items" + (f" with status {args.status}" if args.status else ""))
        return 0
    # Awaiting review with no album behind it (deleted by hand) is not a normal row; approved ones
    # leave staging when Melodee promotes them. None of them there: staging is not mounted, rather.
    pending = [path for _, _, _, status, path in rows if status == "pending_review"]
    gone = {path for path in pending if _missing(path)}
    if len(gone) > 1 and len(gone) == len(pending):
        print(f"note: none of the {len(pending)} albums awaiting review is in staging: is the staging library mounted?")
        gone = set()
    print(f"{'ARTIST':<24}  {'ALBUM':<32}  {'TRACKS':>6}  {'STATUS':<14}  STAGING PATH")
    for artist, album, tracks, status, path in rows:
        mark = "  (gone; see reconcile)" if path in gone and status == "pending_review" else ""
        print(f"{_cell(artist, 24)}  {_cell(album, 32)}  {tracks or 0:>6}  {status:<14}  {_cell(path, 4096).rstrip()}{mark}")
    return 0


def _missing(path: str) -> bool:
    """No such directory (not: one this user cannot see into)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def cmd_settings(args) -> int:
    from melodee_pipeline import settings as st
    from melodee_pipeline.db.engine import reported

    engine = database.engine()
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

    engine = database.engine()
    with reported(engine), engine.begin() as conn:
        if args.action == "list":
            libs = lb.list_libraries(conn)
            if not libs:
                print("no libraries configured")
            else:
                width = min(64, max(4, *(_width(lib.name) for lib in libs)))
                print(f"{'id':>4}  {'type':<10}  {_cell('name', width)}  path")
            for lib in libs:
                print(f"{lib.id:>4}  {lib.type:<10}  {_cell(lib.name, width)}  {lib.path}{'  (locked)' if lib.is_locked else ''}")
        elif args.action == "add":
            lib = lb.add_library(conn, args.name, args.type, args.path)
            print(f"added {lib.type} library {lib.name!r} (id {lib.id}) at {lib.path}")
        else:
            lb.remove_library(conn, args.id)
            print(f"removed library {args.id}")
    return 0
