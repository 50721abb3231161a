"""Living beside a real Melodee: its table definitions, its seeded settings, its catalogue, its booleans.

`melodee_schema.sql` holds Melodee's own definitions; `db init` must create exactly those, write no
setting into an empty table, and `libraries remove` must never cascade into Melodee's catalogue.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from melodee_pipeline.bootstrap import init_db
from melodee_pipeline.cli import main
from melodee_pipeline.db.engine import database_error, get_engine
from melodee_pipeline.errors import DatabaseError, DatabaseUnavailable, SettingError, UserError
from melodee_pipeline.libraries import add_library, list_libraries, resolve_libraries
from melodee_pipeline.settings import SPECS, load_settings, parse_value, set_setting
from melodee_pipeline_tests.conftest import load_melodee_schema

OURS = ("settings", "libraries", "staging_items")


@pytest.fixture
def make_engine(pg_server_url):
    """Further empty databases on the test server, for comparing two of them."""
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    made = []

    def make() -> sa.Engine:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        eng = sa.create_engine(sa.engine.make_url(pg_server_url).set(database=name))
        made.append((name, eng))
        return eng

    yield make
    for name, eng in made:
        eng.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def definitions(engine: sa.Engine, tables=OURS) -> dict:
    """What the Postgres catalogue says about each table: columns (type, NOT NULL, default, and the
    type of a serial's sequence), constraints with their definitions, indexes by name."""
    out = {}
    with engine.connect() as conn:
        for table in tables:
            columns = conn.execute(sa.text("""
                SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                       pg_get_expr(d.adbin, d.adrelid),
                       (SELECT format_type(s.seqtypid, NULL) FROM pg_sequence s
                        WHERE s.seqrelid = pg_get_serial_sequence(:t, a.attname)::regclass)
                FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped
                ORDER BY a.attnum"""), {"t": table}).all()
            constraints = conn.execute(sa.text("""
                SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint
                WHERE conrelid = CAST(:t AS regclass) ORDER BY conname"""), {"t": table}).all()
            indexes = conn.execute(sa.text("""
                SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = :t
                ORDER BY indexname"""), {"t": table}).all()
            out[table] = {"columns": [tuple(r) for r in columns], "constraints": [tuple(r) for r in constraints],
                          "indexes": [tuple(r) for r in indexes]}
    return out


def test_db_init_on_an_empty_database_creates_melodees_definitions(melodee_db, make_engine):
    melodee = definitions(melodee_db)
    fresh = make_engine()
    init_db(fresh)
    ours = definitions(fresh)
    # No `users` table: reviewed_by is a plain bigint, without the foreign key.
    fk = [c for c in melodee["staging_items"]["constraints"] if c[1] == "f"]
    assert fk == [("staging_items_reviewed_by_fkey", "f", "FOREIGN KEY (reviewed_by) REFERENCES users(id)")]
    melodee["staging_items"]["constraints"].remove(fk[0])
    assert ours == melodee
    assert [i[0] for i in ours["staging_items"]["indexes"]] == [
        "idx_staging_artist_album", "idx_staging_scan_id", "idx_staging_status",
        "staging_items_pkey", "staging_items_staging_path_key"]
    columns = {c[0]: c for c in ours["staging_items"]["columns"]}
    assert columns["processed_at"][1:3] == ("timestamp without time zone", True)
    assert columns["id"][1] == columns["id"][4] == "bigint"  # bigserial
    with fresh.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) == set(OURS)  # never users, albums, tracks
        assert conn.execute(sa.text("SELECT count(*) FROM settings")).scalar() == 0


def test_db_init_beside_melodees_users_declares_the_reviewed_by_foreign_key(melodee_db, make_engine):
    melodee = definitions(melodee_db)
    other = make_engine()
    load_melodee_schema(other)
    with other.begin() as conn:
        conn.execute(sa.text("DROP TABLE tracks, albums, staging_items, libraries, settings"))
    done = init_db(other)
    assert sorted(done["tables"]) == sorted(OURS)
    assert definitions(other) == melodee  # the foreign key included
    with other.begin() as conn, pytest.raises(sa.exc.IntegrityError, match="staging_items_reviewed_by_fkey"):
        conn.execute(sa.text("INSERT INTO staging_items (scan_id, staging_path, metadata_file, artist_name, album_name,"
                             " processed_at, status, checksum, reviewed_by)"
                             " VALUES ('s', '/p', '/p/m', 'a', 'b', now(), 'approved', 'c', 999)"))


def test_db_init_on_melodees_database_creates_nothing_and_only_adds_missing_keys(melodee_db):
    with melodee_db.connect() as conn:
        before = conn.execute(sa.text("SELECT key, value, created_at, updated_at FROM settings ORDER BY key")).all()
    done = init_db(melodee_db)
    assert done == {"tables": [], "settings": ["staging_scan.min_file_age_seconds", "staging_scan.keep_scan_dbs"]}
    assert init_db(melodee_db) == {"tables": [], "settings": []}
    with melodee_db.connect() as conn:
        after = conn.execute(sa.text("SELECT key, value, created_at, updated_at FROM settings ORDER BY key")).all()
        assert [r for r in after if r.key not in done["settings"]] == before  # Melodee's rows untouched
        s = load_settings(conn)
    assert (s.dry_run, s.scan_db_data_path, s.min_file_age_seconds, s.keep_scan_dbs) == (True, "/tmp/melodee-scans", 60, 20)


def test_empty_settings_stay_empty_after_db_init_and_list_shows_defaults(env, engine, capsys):
    assert main(["db", "init"]) == 0
    assert main(["db", "init"]) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM settings")).scalar() == 0
    capsys.readouterr()
    assert main(["settings", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == [f"{k:<{max(map(len, SPECS))}}  {s.default}  (default)" for k, s in SPECS.items()]
    assert main(["settings", "get", "staging_scan.workers"]) == 0
    assert capsys.readouterr().out == "4\n"
    assert main(["settings", "set", "staging_scan.workers", "3"]) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT key, value FROM settings")).all() == [("staging_scan.workers", "3")]


GO_TRUE = ["1", "t", "T", "TRUE", "true", "True", "yes", "YES", "Yes", "yEs"]
GO_FALSE = ["0", "f", "F", "FALSE", "false", "False", "no", "NO", "No", "nO"]


@pytest.mark.parametrize("value,expected", [(v, True) for v in GO_TRUE] + [(v, False) for v in GO_FALSE])
def test_booleans_as_go_parses_them(value, expected):
    assert parse_value("staging_scan.enabled", value) is expected
    assert parse_value("staging_scan.dry_run", f" {value} ") is expected


@pytest.mark.parametrize("value", ["tRuE", "fALSE", "TRue", "y", "n", "on", "off", "2", "-1", "", "tt"])
def test_booleans_go_refuses_are_refused(value):
    with pytest.raises(SettingError, match="must be a boolean"):
        parse_value("staging_scan.enabled", value)


def test_melodee_seeded_boolean_spellings_are_read(env, melodee_db, capsys):
    with melodee_db.begin() as conn:
        conn.execute(sa.text("UPDATE settings SET value = 'T' WHERE key = 'staging_scan.enabled'"))
        conn.execute(sa.text("UPDATE settings SET value = 'F' WHERE key = 'staging_scan.dry_run'"))
    with melodee_db.connect() as conn:
        s = load_settings(conn)
    assert (s.enabled, s.dry_run) == (True, False)
    assert main(["settings", "set", "staging_scan.dry_run", "True"]) == 0
    assert main(["settings", "set", "staging_scan.dry_run", "tRuE"]) == 2
    assert "must be a boolean" in capsys.readouterr().err
    with melodee_db.connect() as conn:
        assert load_settings(conn).dry_run is True


def test_one_directory_is_one_library_whatever_its_spelling(env, melodee_db, tmp_path, capsys):
    (tmp_path / "music" / "staging").mkdir(parents=True)
    spelled = f"{tmp_path}//music//staging/"
    assert main(["libraries", "add", "--name", "St", "--type", "staging", "--path", spelled]) == 0
    with melodee_db.connect() as conn:
        assert conn.execute(sa.text("SELECT path FROM libraries")).scalar() == f"{tmp_path}/music/staging"
    capsys.readouterr()
    for again in (f"{tmp_path}/music/staging", f"{tmp_path}/music/./staging", f"/{tmp_path}/music/x/../staging"):
        assert main(["libraries", "add", "--name", "Prod", "--type", "production", "--path", again]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "one directory is one library" in err
    (tmp_path / "link").symlink_to(tmp_path / "music" / "staging")
    assert main(["libraries", "add", "--name", "Prod", "--type", "production", "--path", str(tmp_path / "link")]) == 2
    with melodee_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM libraries")).scalar() == 1


def test_paths_melodee_stored_unnormalised_are_normalised_when_read(melodee_db, tmp_path):
    for kind in ("inbound", "staging"):
        (tmp_path / kind).mkdir()
    with melodee_db.begin() as conn:
        conn.execute(sa.text("INSERT INTO libraries (name, path, type) VALUES ('In', :i, 'inbound'), ('St', :s, 'staging')"),
                     {"i": f"{tmp_path}/inbound/", "s": f"/{tmp_path}//staging/."})
    with melodee_db.connect() as conn:
        libs = resolve_libraries(conn)
        assert (libs.inbound.path, libs.staging.path) == (f"{tmp_path}/inbound", f"{tmp_path}/staging")
        assert [lib.path for lib in list_libraries(conn)] == [f"{tmp_path}/inbound", f"{tmp_path}/staging"]
    with melodee_db.begin() as conn, pytest.raises(UserError, match="one directory is one library"):
        add_library(conn, "Prod", "production", str(tmp_path / "staging"))
    with melodee_db.begin() as conn, pytest.raises(SettingError, match="inside library path"):
        set_setting(conn, "staging_scan.scan_db_data_path", f"{tmp_path}/staging//scans/")


def _catalogue(engine, library_id: int, albums: int, tracks_per_album: int) -> None:
    with engine.begin() as conn:
        for a in range(albums):
            album_id = conn.execute(sa.text("INSERT INTO albums (library_id, name) VALUES (:l, :n) RETURNING id"),
                                    {"l": library_id, "n": f"Album {a}"}).scalar()
            for t in range(tracks_per_album):
                conn.execute(sa.text("INSERT INTO tracks (album_id, library_id, title) VALUES (:a, :l, :t)"),
                             {"a": album_id, "l": library_id, "t": f"Track {t}"})


def _counts(engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in ("libraries", "albums", "tracks"))


def test_libraries_remove_refuses_production_and_referenced_libraries(env, melodee_db, tmp_path, capsys):
    for kind in ("inbound", "staging", "production"):
        (tmp_path / kind).mkdir()
        assert main(["libraries", "add", "--name", kind.title(), "--type", kind, "--path", str(tmp_path / kind)]) == 0
    with melodee_db.connect() as conn:
        ids = {lib.type: lib.id for lib in list_libraries(conn)}
    _catalogue(melodee_db, ids["production"], albums=1, tracks_per_album=1)
    _catalogue(melodee_db, ids["inbound"], albums=2, tracks_per_album=2)
    before = _counts(melodee_db)
    assert before == (3, 3, 5)
    capsys.readouterr()

    assert main(["libraries", "remove", str(ids["production"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "production library" in err

    assert main(["libraries", "remove", str(ids["inbound"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "albums (2 rows)" in err and "tracks (4 rows)" in err and "Traceback" not in err
    assert _counts(melodee_db) == before  # nothing deleted

    assert main(["libraries", "remove", str(ids["staging"])]) == 0  # nothing references it
    assert _counts(melodee_db) == (2, 3, 5)


def test_unreachable_server_is_cannot_connect(monkeypatch):
    monkeypatch.setenv("MELODEE_DATABASE_URL", "postgresql://melodee:hunter2@127.0.0.1:9/melodee")
    with pytest.raises(DatabaseUnavailable) as exc:
        get_engine()
    assert str(exc.value).startswith("cannot connect to database postgresql+psycopg2://melodee:***@127.0.0.1:9/melodee: ")
    assert "hunter2" not in str(exc.value)


def test_server_answering_with_an_error_is_a_database_error(env, engine, db_url, monkeypatch, capsys):
    # No tables yet: the server is up, the statement fails.
    assert main(["settings", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: table settings does not exist in database postgresql+psycopg2://"), err
    assert err.rstrip().endswith("run `melodee-pipeline db init` first")
    assert err.count("\n") == 1 and "cannot connect" not in err
    # The server refuses the database named in the URL: reached, so not "cannot connect".
    missing = sa.engine.make_url(db_url).set(database="no_such_db").render_as_string(hide_password=False)
    monkeypatch.setenv("MELODEE_DATABASE_URL", missing)
    assert main(["settings", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: database error") and 'database "no_such_db" does not exist' in err, err


def test_connection_lost_mid_session_is_cannot_connect(engine):
    with engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError) as lost:
            conn.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))
    assert isinstance(database_error(engine, lost.value), DatabaseUnavailable)
    # Without an engine at hand (an op's catch-all): no URL, and no stray space where it would be.
    assert str(database_error(None, lost.value)).startswith("cannot connect to database: ")
    with engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError) as failed:
            conn.execute(sa.text("SELECT 1/0"))
    error = database_error(engine, failed.value)
    masked = engine.url.render_as_string(hide_password=True)
    assert isinstance(error, DatabaseError) and str(error) == f"database error in database {masked}: division by zero"


def test_rows_we_write_carry_naive_utc_timestamps(env, melodee_db, db_url, tmp_path):
    # A server whose sessions run far from UTC: our timestamps must still be UTC.
    with melodee_db.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{sa.engine.make_url(db_url).database}" SET timezone = \'Pacific/Kiritimati\''))
        conn.commit()
    (tmp_path / "in").mkdir()
    assert main(["libraries", "add", "--name", "In", "--type", "inbound", "--path", str(tmp_path / "in")]) == 0
    assert main(["settings", "set", "staging_scan.workers", "5"]) == 0
    eng = get_engine()
    with eng.begin() as conn:
        conn.execute(sa.text("INSERT INTO settings (key, value) VALUES ('x.y', 'z')"))  # the column default
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with melodee_db.connect() as conn:
        stamps = conn.execute(sa.text(
            "SELECT created_at FROM libraries UNION ALL SELECT updated_at FROM settings WHERE key = 'staging_scan.workers'"
            " UNION ALL SELECT created_at FROM settings WHERE key = 'x.y'")).scalars().all()
    assert len(stamps) == 3
    assert all(abs(s - now) < timedelta(minutes=5) for s in stamps), (stamps, now)

